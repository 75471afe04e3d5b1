"""A database dump is not a breach (DESIGN.md invariant 9): 1,000 patients, none readable.

The hospital is written by `carnet seed` (carnet.synth), which is deterministic: the test runs the
same generator again to learn the plaintexts it must not find.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.identity.models import Account, WebAuthnChallenge
from carnet.org.models import Facility, Location, Practitioner
from carnet.patients.models import Patient
from carnet.runtime import Runtime
from carnet.synth.generator import HospitalGenerator, default_facilities
from carnet.synth.seed import DEFAULT_BATCH, base_day, seed_hospital

PATIENTS = 1000
SEED = 2024
# Stored as raw bytes in a binary column that is not encrypted: proves the search looks inside them.
BYTEA_CONTROL = b"Controle-positif-binaire"
GRAM = 6


def _pg_dump() -> str:
    found = shutil.which("pg_dump") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None
    )
    if found is None:
        pytest.fail("pg_dump is not installed")
    return found


def _dump_postgres(url: str) -> bytes:
    parsed = sa.engine.make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    result = subprocess.run(
        [
            _pg_dump(),
            "--no-owner",
            "--format=plain",
            "-h",
            parsed.host or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.database or "",
        ],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    # bytea values appear as \\x<hex> in COPY text: decode them so plaintext kept in a binary
    # column would be found too.
    return re.sub(rb"\\\\x([0-9a-fA-F]*)", lambda m: bytes.fromhex(m.group(1).decode()), result.stdout)


def _dump_sqlite(url: str) -> bytes:
    path = Path(sa.engine.make_url(url).database or "")
    parts = [path, path.with_name(path.name + "-wal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def _seeded_patients() -> list[dict[str, object]]:
    """The patients `seed_hospital` writes for SEED, regenerated (plaintext, test memory only)."""
    generator = HospitalGenerator(
        seed=SEED, patients=PATIENTS, facilities=default_facilities(PATIENTS), base_day=base_day()
    )
    org = generator.organisation()
    # The seed hands the generator the staff account ids it created; only how many matters here.
    for facility in org.facilities:
        staff = [s for s in org.staff if s.facility_id == facility.id]
        generator.set_accounts(
            facility_id=facility.id,
            front_desk=[uuid.uuid4() for s in staff if s.role == Role.FRONT_DESK],
            billing=[uuid.uuid4() for s in staff if s.role == Role.BILLING],
        )
    return [row for batch, _ in generator.patient_batches(DEFAULT_BATCH) for row in batch.rows["patients"]]


def _staff_plaintext(runtime: Runtime) -> str:
    """Names that are plaintext by design (staff, facilities, wards): a patient may share one."""
    with runtime.session_factory() as session:
        texts = [
            *session.scalars(sa.select(Practitioner.family)),
            *session.scalars(sa.select(Practitioner.given)),
            *session.scalars(sa.select(Account.display_name)),
            *session.scalars(sa.select(Account.username)),
            *session.scalars(sa.select(Facility.name)),
            *session.scalars(sa.select(Facility.city)),
            *session.scalars(sa.select(Location.name)),
        ]
    return "\n".join(texts).casefold()


def _needles(patients: Iterable[dict[str, object]], staff: str) -> dict[bytes, str]:
    """Every identifying value to look for, and what it is (never the value itself).

    Names shorter than six letters could appear by chance in random ciphertext bytes, and a
    name some staff member or ward also bears is in the dump legitimately: both are skipped.
    Phones, emails and identifiers are all searched.
    """
    out: dict[bytes, str] = {}
    for p in patients:
        for kind, value in (("family name", p["family"]), ("given name", p["given"])):
            name = str(value)
            if len(name) >= GRAM and name.casefold() not in staff:
                out[name.encode()] = kind
                out[name.lower().encode()] = f"normalised {kind}"
        if p["phone"] is not None:
            out[str(p["phone"]).encode()] = "phone"
            out[str(p["phone"]).replace(" ", "").encode()] = "phone digits"
        if p["email"] is not None:
            out[str(p["email"]).encode()] = "email"
        out[str(p["ins"]).encode()] = "identifier"
    return out


def _found(dump: bytes, needles: dict[bytes, str]) -> list[str]:
    """Which needles occur in the dump: a set of 6-byte windows filters, `in` confirms."""
    grams = {dump[i : i + GRAM] for i in range(len(dump) - GRAM + 1)}
    hits = [kind for needle, kind in needles.items() if needle[:GRAM] in grams and needle in dump]
    return sorted(hits)


def test_a_database_dump_reveals_none_of_the_patients(runtime: Runtime) -> None:
    seed_hospital(runtime, patients=PATIENTS, seed=SEED)
    patients = _seeded_patients()
    with runtime.session_factory() as session:
        stored = set(session.scalars(sa.select(Patient.id)))
        facility_name = session.scalars(sa.select(Facility.name)).first()
    assert stored == {p["id"] for p in patients}, "the regenerated plaintexts are those seeded"
    assert facility_name is not None
    staff = _staff_plaintext(runtime)
    with runtime.session_factory.begin() as session:
        session.add(
            WebAuthnChallenge(
                purpose="register",
                challenge=BYTEA_CONTROL,
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            )
        )
    url = runtime.settings.resolved_database_url
    if url.startswith("postgresql"):
        dump = _dump_postgres(url)
    else:
        runtime.engine.dispose()  # checkpoint and close, as a copied file would be
        dump = _dump_sqlite(url)

    # Positive controls: the search does find plaintext, in text and in binary columns.
    assert _found(dump, {facility_name.encode(): "facility", BYTEA_CONTROL: "bytea"}) == ["bytea", "facility"]
    assert len(dump) > PATIENTS * 500, "the dump should hold the encrypted patients"

    needles = _needles(patients, staff)
    kinds = set(needles.values())
    assert {"family name", "given name", "phone", "email", "identifier"} <= kinds
    assert sum(1 for k in needles.values() if k == "identifier") == PATIENTS
    # About 240 distinct family names of six letters or more are searched for this seed.
    assert sum(1 for k in needles.values() if k == "family name") >= 150
    assert _found(dump, needles) == []
