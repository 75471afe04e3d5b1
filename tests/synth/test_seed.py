"""The synthetic hospital: determinism, counts, canaries, credentials, both databases."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import func, select

from carnet.access.models import RoleGrant, WardAssignment
from carnet.access.roles import STAFF_ROLES, Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.billing.models import Invoice
from carnet.crypto.blind import IndexKind
from carnet.crypto.keys import FileKeyProvider
from carnet.detection.models import CanaryPatient
from carnet.identity import passwords
from carnet.identity.models import Account
from carnet.kernel.errors import ConfigurationError, InvalidInput
from carnet.org.models import Facility, Location, Practitioner
from carnet.patients.models import CareRelationship, Patient
from carnet.phi.loader import TABLES, decrypt_field
from carnet.runtime import Runtime, build_runtime
from carnet.scheduling.models import Appointment, Encounter
from carnet.settings import Environment, Settings
from carnet.synth.generator import HospitalGenerator, staff_count
from carnet.synth.seed import SEED_REASON, SeedReport, base_day, seed_hospital, write_credentials

# Columns whose values are the moment of seeding, not generated data (so two runs differ).
SEEDING_MOMENTS = {"created_at", "password_changed_at", "requested_at", "decided_at"}


def _count(runtime: Runtime, model: Any) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _dump(runtime: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Every seeded row, decrypted; account ids replaced by usernames (identity makes those ids)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with runtime.session_factory() as session:
        usernames = {a.id: a.username for a in session.scalars(select(Account))}

        def plain(value: Any) -> Any:
            return f"account:{usernames[value]}" if value in usernames else value

        for table, spec in TABLES.items():
            if table == "patient_name_keys":
                continue  # keyed with each installation's own blind-index key, as `_bi` columns
            rows = []
            for row in session.execute(select(spec.model.__table__)).mappings():
                values: dict[str, Any] = {}
                for key, value in row.items():
                    if key.endswith("_bi"):
                        continue  # keyed with each installation's own blind-index key
                    if key.endswith("_ct"):
                        column = key[:-3]
                        values[column] = decrypt_field(
                            runtime.keyring, table=table, column=column, row_id=row["id"], blob=value
                        )
                    else:
                        values[key] = plain(value)
                rows.append(values)
            out[table] = sorted(rows, key=lambda r: str(r["id"]))
        for model in (Facility, Location, Practitioner, WardAssignment):
            out[model.__tablename__] = sorted(
                (dict(r) for r in session.execute(select(model.__table__)).mappings()),
                key=lambda r: str(r["id"]),
            )
        out["accounts"] = sorted(
            (
                {
                    "id": a.id,
                    "username": a.username,
                    "display_name": a.display_name,
                    "kind": a.kind,
                    "facility_id": a.facility_id,
                    "patient_id": a.patient_id,
                    "practitioner_id": a.practitioner_id,
                    "status": a.status,
                }
                for a in session.scalars(select(Account))
            ),
            key=lambda r: str(r["username"]),
        )
        out["role_grants"] = sorted(
            (
                {k: plain(v) for k, v in r.items() if k not in SEEDING_MOMENTS and k != "id"}
                for r in session.execute(select(RoleGrant.__table__)).mappings()
            ),
            key=lambda r: (str(r["account_id"]), str(r["role"])),
        )
    return out


@pytest.fixture
def second_runtime(tmp_path: Path, sqlite_template: Path) -> Iterator[Runtime]:
    """Another installation: its own database file and its own key file."""
    var = tmp_path / "other"
    var.mkdir()
    FileKeyProvider.create(var / "keys.json")
    shutil.copy(sqlite_template, var / "carnet.db")
    runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var))
    yield runtime
    runtime.close()


def test_same_seed_gives_the_same_hospital(
    sqlite_runtime: Runtime, second_runtime: Runtime, tmp_path: Path
) -> None:
    first = seed_hospital(sqlite_runtime, patients=500, seed=7, batch_size=200)
    second = seed_hospital(second_runtime, patients=500, seed=7, batch_size=333)
    assert first.rows == second.rows
    dump_a, dump_b = _dump(sqlite_runtime), _dump(second_runtime)
    assert dump_a.keys() == dump_b.keys()
    for table in dump_a:
        assert dump_a[table] == dump_b[table], f"{table} differs between two runs of the same seed"
    files = []
    for name, report in (("a.json", first), ("b.json", second)):
        write_credentials(tmp_path / name, report.credentials)
        files.append((tmp_path / name).read_bytes())
    assert files[0] == files[1]
    # The ciphertexts themselves differ (random nonces, different keys): only content is equal.
    with sqlite_runtime.session_factory() as a, second_runtime.session_factory() as b:
        assert (
            a.scalars(select(Patient.family_ct).order_by(Patient.id)).first()
            != b.scalars(select(Patient.family_ct).order_by(Patient.id)).first()
        )


def test_another_seed_gives_another_hospital() -> None:
    day = base_day()
    one = HospitalGenerator(seed=7, patients=50, facilities=1, base_day=day)
    two = HospitalGenerator(seed=8, patients=50, facilities=1, base_day=day)
    batch_one = next(one.patient_batches(50))[0].rows["patients"]
    batch_two = next(two.patient_batches(50))[0].rows["patients"]
    assert [p["id"] for p in batch_one] != [p["id"] for p in batch_two]
    assert [p["family"] for p in batch_one] != [p["family"] for p in batch_two]


def _seed(runtime: Runtime, patients: int = 300, **kwargs: Any) -> SeedReport:
    return seed_hospital(runtime, patients=patients, seed=11, batch_size=100, **kwargs)


def test_seed_writes_every_kind_of_record_on_both_databases(runtime: Runtime) -> None:
    report = _seed(runtime, facilities=2)
    assert _count(runtime, Patient) == 300
    assert _count(runtime, Facility) == 2
    for model in (
        CareRelationship,
        Appointment,
        Encounter,
        # Another system's directory entries, interventions and lab orders are written by
        # `carnet import` or placed from the chart (the synthetic hospital has none of them).
        *(
            spec.model
            for name, spec in TABLES.items()
            if name not in ("canary_patients", "directory_entries", "interventions", "service_requests")
        ),
    ):
        assert _count(runtime, model) > 0, f"no {model.__tablename__} seeded"
    assert report.rows["patients"] == 300
    with runtime.session_factory() as session:
        # Patient fields are encrypted and open with the facility key.
        patient = session.scalars(select(Patient).limit(1)).one()
        assert patient.family_ct is not None
        family = runtime.keyring.decrypt(
            patient.family_ct, table="patients", column="family", row_id=patient.id
        )
        assert family and patient.family_bi == runtime.keyring.index(IndexKind.FAMILY, family)
        ins = runtime.keyring.decrypt(patient.ins_ct, table="patients", column="ins", row_id=patient.id)
        assert ins is not None and len(ins) == 15 and ins.isdigit()
        assert (97 - int(ins[:13]) % 97) == int(ins[13:])
        address = decrypt_field(
            runtime.keyring, table="patients", column="address", row_id=patient.id, blob=patient.address_ct
        )
        assert set(address) == {"line", "city", "postalCode", "country"}
        # Appointments: a month around the base day, nobody double-booked.
        day = base_day()
        starts = session.execute(select(Appointment.practitioner_id, Appointment.start_at)).all()
        assert all(day - dt.timedelta(days=16) <= s <= day + dt.timedelta(days=16) for _, s in starts)
        assert len(set(starts)) == len(starts)
        assert any(s >= day for _, s in starts) and any(s < day for _, s in starts)
        # Some stays are in progress, on a ward some nurse works.
        current = session.scalars(select(Encounter).where(Encounter.status == "in-progress")).all()
        wards = set(session.scalars(select(WardAssignment.location_id)))
        assert all(e.location_id in wards for e in current)
        # ...in a bed of that ward (one stay a bed), the wards laid out in rooms of 1 or 2 beds.
        places = {loc.id: loc for loc in session.scalars(select(Location))}
        in_beds = [e for e in current if e.bed_id is not None]
        assert in_beds and len({e.bed_id for e in in_beds}) == len(in_beds)
        for e in in_beds:
            bed = places[e.bed_id]  # type: ignore[index]
            room = places[bed.part_of_id]  # type: ignore[index]
            assert (bed.kind, room.kind, room.part_of_id) == ("bed", "room", e.location_id)
            assert e.bed_history is not None and str(bed.id) in e.bed_history
        for ward in (loc for loc in places.values() if loc.kind == "ward"):
            rooms = [r for r in places.values() if r.part_of_id == ward.id]
            counts = Counter(
                b.part_of_id
                for b in places.values()
                if b.kind == "bed" and b.part_of_id in {r.id for r in rooms}
            )
            assert len(rooms) == 10 and set(counts.values()) <= {1, 2} and len(counts) == 10
        # Every staff role at every facility, and every grant is active.
        grants = session.execute(
            select(RoleGrant.facility_id, RoleGrant.role, RoleGrant.status).join(
                Account, Account.id == RoleGrant.account_id
            )
        ).all()
        assert {status for _, _, status in grants} == {"active"}
        for facility_id in session.scalars(select(Facility.id)):
            held = {role for fid, role, _ in grants if fid == facility_id}
            assert {r.value for r in STAFF_ROLES} <= held
        # Seeding went through the audited system door, once per batch.
        events = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.kind == AuditKind.PHI_SYSTEM_ACCESS.value)
        ).all()
        assert sum(json.loads(d).get("reason") == SEED_REASON for d in events) == math.ceil(300 / 100)
        # Every grant and every data key the seed made is in the audit chain too.
        kinds = Counter(session.scalars(select(AuditEvent.kind)))
        assert kinds[AuditKind.ROLE_GRANT_APPROVED.value] == len(grants)
        assert kinds[AuditKind.DATA_KEY_CREATED.value] == 2
        assert kinds[AuditKind.ACCOUNT_CREATED.value] == report.staff + report.portal_accounts


def test_canaries_exist_and_look_like_patients(runtime: Runtime) -> None:
    report = _seed(runtime, patients=400, facilities=2)
    assert report.canaries >= 4
    with runtime.session_factory() as session:
        canaries = session.scalars(select(CanaryPatient)).all()
        assert len(canaries) == report.canaries
        ids = {c.patient_id for c in canaries}
        rows = session.scalars(select(Patient).where(Patient.id.in_(ids))).all()
        assert len(rows) == len(ids)
        for row in rows:
            # The same columns filled as any patient's, opening with the same keys.
            for column in ("ins_ct", "family_ct", "given_ct", "birth_date_ct", "address_ct"):
                assert getattr(row, column) is not None
            assert row.facility_id == next(c.facility_id for c in canaries if c.patient_id == row.id)
        # Real patients without a designated physician exist too: that column does not single them out.
        assert session.scalar(
            select(func.count())
            .select_from(Patient)
            .where(Patient.designated_physician_id.is_(None), Patient.id.not_in(ids))
        )
        # No one has a reason to open a canary: no care relationship, no appointment, no current stay.
        assert not session.scalar(
            select(func.count()).select_from(CareRelationship).where(CareRelationship.patient_id.in_(ids))
        )
        assert not session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.patient_id.in_(ids))
        )
        assert not session.scalar(
            select(func.count())
            .select_from(Encounter)
            .where(Encounter.patient_id.in_(ids), Encounter.status == "in-progress")
        )
        # Nor a bill to settle: an unpaid invoice would put it on billing's worklist.
        assert not session.scalar(
            select(func.count())
            .select_from(Invoice)
            .where(Invoice.patient_id.in_(ids), Invoice.status.in_(("draft", "issued")))
        )
        # ... and no canary has a portal account.
        assert not session.scalar(
            select(func.count()).select_from(Account).where(Account.patient_id.in_(ids))
        )


def test_credentials_file_lists_working_accounts(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    report = _seed(sqlite_runtime, patients=300, facilities=2)
    path = tmp_path / "out" / "credentials.json"
    write_credentials(path, report.credentials)
    assert path.stat().st_mode & 0o777 == 0o600
    entries = json.loads(path.read_text())
    assert isinstance(entries, list) and len(entries) == report.staff + report.portal_accounts
    assert report.portal_accounts >= 1
    for entry in entries:
        assert set(entry) == {"username", "password", "totp_secret", "roles", "facility"}
        assert len(entry["password"]) >= passwords.MIN_LENGTH
        assert len(base64.b32decode(entry["totp_secret"])) == 20
        assert pyotp.TOTP(entry["totp_secret"]).now().isdigit()
        assert entry["roles"] and set(entry["roles"]) <= {r.value for r in Role}
    assert len({e["username"] for e in entries}) == len(entries)
    by_facility = Counter((e["facility"], e["roles"][0]) for e in entries)
    for facility in {e["facility"] for e in entries}:
        for role in STAFF_ROLES:
            assert by_facility[(facility, role.value)] >= 1
    # A listed password opens its account.
    with sqlite_runtime.session_factory() as session:
        for entry in (entries[0], entries[-1]):
            stored = session.scalar(
                select(Account.password_hash).where(Account.username == entry["username"])
            )
            assert passwords.verify_password(stored, entry["password"])
            assert not passwords.verify_password(stored, entry["password"] + "x")


def test_staff_scale_with_patients() -> None:
    assert staff_count(20_000, 3) >= 200
    org = HospitalGenerator(seed=1, patients=20_000, facilities=3, base_day=base_day()).organisation()
    assert len(org.staff) >= 200
    for facility in org.facilities:
        assert {s.role for s in org.staff if s.facility_id == facility.id} >= STAFF_ROLES
    assert len({s.username for s in org.staff}) == len(org.staff)
    physicians = {s.practitioner_id for s in org.staff if s.role is Role.PHYSICIAN}
    assert physicians <= {p.id for p in org.practitioners if p.profession == "physician"}


def test_seeding_is_refused_in_production_and_on_a_seeded_database(sqlite_runtime: Runtime) -> None:
    production = Runtime(**{**sqlite_runtime.__dict__, "settings": Settings(env=Environment.PRODUCTION)})
    with pytest.raises(ConfigurationError, match="CARNET_ENV"):
        seed_hospital(production, patients=10, seed=1)
    assert _count(sqlite_runtime, Facility) == 0
    with pytest.raises(InvalidInput):
        seed_hospital(sqlite_runtime, patients=-1, seed=1)
    _seed(sqlite_runtime, patients=20)
    with pytest.raises(InvalidInput, match="already"):
        _seed(sqlite_runtime, patients=20)
    assert _count(sqlite_runtime, Patient) == 20


def test_ids_are_uuid4_from_the_seeded_stream() -> None:
    generator = HospitalGenerator(seed=5, patients=5, facilities=1, base_day=base_day())
    batch = next(generator.patient_batches(5))[0]
    ids = [row["id"] for rows in batch.rows.values() for row in rows]
    assert all(isinstance(i, uuid.UUID) and i.version == 4 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_generator_error_stops_the_seed_with_that_error(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: HospitalGenerator, batch_size: int) -> Iterator[Any]:
        raise RuntimeError("the generator broke")
        yield  # a generator function

    monkeypatch.setattr(HospitalGenerator, "patient_batches", failing)
    with pytest.raises(RuntimeError, match="the generator broke"):
        seed_hospital(sqlite_runtime, patients=10, seed=1)
    assert _count(sqlite_runtime, Patient) == 0
