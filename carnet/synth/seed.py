"""`carnet seed`: write the synthetic hospital group into a database.

Organisation rows (facilities, locations, practitioners) and accounts are written in one
transaction; patient data goes in batches, each through the audited system door with the reason
"seed", encrypted by carnet.phi.loader. Exercise environments only: seeded accounts have known
passwords.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.access.models import RoleGrant, WardAssignment
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.detection.models import CanaryPatient
from carnet.identity.models import Account
from carnet.identity.service import create_account
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError, InvalidInput
from carnet.org.models import Facility, Location, Practitioner
from carnet.phi.loader import PreparedBatch, prepare_batch, write_batch
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from carnet.synth.generator import HospitalGenerator, Organisation, default_facilities

SEED_REASON = "seed"
MAX_PATIENTS = 2_000_000
MAX_FACILITIES = 50
DEFAULT_BATCH = 2000


class SeedProgress(Protocol):
    """Where seeding reports how far it is (the CLI shows a rich progress bar)."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


class SilentProgress:
    def stage(self, name: str, total: int) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None


@dataclass(frozen=True)
class Credential:
    """One seeded account as written to the credentials file (DESIGN.md interface)."""

    username: str
    password: str
    totp_secret: str
    roles: list[str]
    facility: str

    def as_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "password": self.password,
            "totp_secret": self.totp_secret,
            "roles": self.roles,
            "facility": self.facility,
        }


@dataclass
class SeedReport:
    patients: int
    facilities: int
    staff: int
    portal_accounts: int
    canaries: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    credentials: list[Credential] = field(default_factory=list)


def base_day() -> dt.datetime:
    """Today at 00:00 UTC (from carnet's clock, so a movable clock moves the hospital too)."""
    today = clock.now().astimezone(dt.UTC).date()
    return dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC)


def is_empty(runtime: Runtime) -> bool:
    with runtime.session_factory() as session:
        return not session.scalar(select(func.count()).select_from(Facility))


def seed_hospital(
    runtime: Runtime,
    *,
    patients: int,
    seed: int,
    facilities: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: SeedProgress | None = None,
) -> SeedReport:
    """Generate and write the hospital group; returns counts and the seeded credentials."""
    if not runtime.settings.exercise_mode:
        raise ConfigurationError(
            "seeding writes synthetic patients and accounts with known passwords: "
            "it runs only when CARNET_ENV is demo or test"
        )
    if not 0 <= patients <= MAX_PATIENTS:
        raise InvalidInput(f"--patients must be between 0 and {MAX_PATIENTS}")
    facilities = default_facilities(patients) if facilities is None else facilities
    if not 1 <= facilities <= MAX_FACILITIES:
        raise InvalidInput(f"--facilities must be between 1 and {MAX_FACILITIES}")
    if batch_size < 1:
        raise InvalidInput("the batch size must be at least 1")
    if not is_empty(runtime):
        raise InvalidInput("this database already holds facilities: seed only an empty database")
    progress = progress or SilentProgress()
    started = time.perf_counter()
    generator = HospitalGenerator(seed=seed, patients=patients, facilities=facilities, base_day=base_day())
    org = generator.organisation()
    report = SeedReport(
        patients=patients,
        facilities=facilities,
        staff=len(org.staff),
        portal_accounts=0,
        canaries=len(org.canary_slots),
    )
    report.credentials.extend(_write_organisation(runtime, generator, org, progress))

    progress.stage("patients", patients)
    ordinary: list[tuple[uuid.UUID, uuid.UUID]] = []
    for batch, batch_ordinary in _prepared_batches(runtime, generator, batch_size):
        with system_access(runtime, reason=SEED_REASON) as access:
            if access.session.get_bind().dialect.name == "sqlite":
                # A larger page cache for this connection: random blind-index keys touch many pages.
                access.session.execute(text("PRAGMA cache_size=-131072"))
            for table, count in write_batch(access, batch).items():
                report.rows[table] = report.rows.get(table, 0) + count
        ordinary.extend(batch_ordinary)
        progress.advance(batch.count("patients"))

    portal = generator.portal_accounts(ordinary)
    progress.stage("patient portal accounts", len(portal))
    with _system_session(runtime) as (session, actor):
        for spec in portal:
            account_id = create_account(
                session,
                account_id=_account_id(spec.username),
                username=spec.username,
                display_name="Patient",  # never the patient's name: accounts are not encrypted
                kind="patient",
                password=spec.password,
                patient_id=spec.patient_id,
                facility_id=spec.facility_id,
                totp_secret=spec.totp_secret,
                check_password_policy=False,
                keys=runtime.keys,
                audit=runtime.audit,
                created_by=actor,
            )
            _grant(
                runtime,
                session,
                actor,
                account_id=account_id,
                role=Role.PATIENT,
                facility_id=spec.facility_id,
            )
            report.credentials.append(
                Credential(
                    spec.username,
                    spec.password,
                    spec.totp_secret,
                    [Role.PATIENT.value],
                    org.facility_name(spec.facility_id),
                )
            )
            progress.advance(1)
    report.portal_accounts = len(portal)
    report.seconds = time.perf_counter() - started
    return report


_DONE = object()


def _prepared_batches(
    runtime: Runtime, generator: HospitalGenerator, batch_size: int
) -> Iterator[tuple[PreparedBatch, list[tuple[uuid.UUID, uuid.UUID]]]]:
    """Generate and encrypt the next batches in a thread while the database writes this one.

    One thread generates in order, so the data stays deterministic; the queue is short, so
    memory stays bounded. An error on either side stops both.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch, ordinary in generator.patient_batches(batch_size):
                if not put((prepare_batch(runtime.keyring, batch), ordinary)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    worker = threading.Thread(target=produce, name="carnet-seed-generator", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(tuple[PreparedBatch, list[tuple[uuid.UUID, uuid.UUID]]], item)
    finally:
        stop.set()
        worker.join(timeout=10)


@contextmanager
def _system_session(runtime: Runtime) -> Iterator[tuple[Session, Actor]]:
    actor = Actor(
        kind=ActorKind.SYSTEM,
        username="system:seed",
        roles=frozenset(),
        purpose_of_use=PurposeOfUse.OPERATIONS,
    )
    with runtime.session_factory.begin() as session:
        yield session, actor


def _grant(
    runtime: Runtime,
    session: Session,
    actor: Actor,
    *,
    account_id: uuid.UUID,
    role: Role,
    facility_id: uuid.UUID,
) -> None:
    """An active grant, audited like an approval (the seeding operator is the approver)."""
    now = clock.now()
    grant_id = uuid.uuid4()
    session.add(
        RoleGrant(
            id=grant_id,
            account_id=account_id,
            role=role.value,
            facility_id=facility_id,
            status="active",
            requested_by=None,
            requested_at=now,
            approved_by=None,
            decided_at=now,
            reason=SEED_REASON,
        )
    )
    runtime.audit.append(
        session,
        AuditRecord(
            kind=AuditKind.ROLE_GRANT_APPROVED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="RoleGrant",
            resource_ids=(str(grant_id),),
            detail={"role": role.value, "account": str(account_id), "reason": SEED_REASON},
        ),
    )


def _write_organisation(
    runtime: Runtime, generator: HospitalGenerator, org: Organisation, progress: SeedProgress
) -> list[Credential]:
    credentials: list[Credential] = []
    progress.stage("staff accounts", len(org.staff))
    with _system_session(runtime) as (session, actor):
        session.execute(
            insert(Facility),
            [
                {"id": f.id, "name": f.name, "finess": f.finess, "city": f.city, "active": True}
                for f in org.facilities
            ],
        )
        for facility in org.facilities:
            key_id = runtime.keyring.create_data_key(session, facility.id)
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.DATA_KEY_CREATED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    resource_type="Facility",
                    resource_ids=(str(facility.id),),
                    detail={"data_key": str(key_id), "reason": SEED_REASON},
                ),
            )
        session.execute(
            insert(Location),
            [
                {
                    "id": loc.id,
                    "facility_id": loc.facility_id,
                    "name": loc.name,
                    "kind": loc.kind,
                    "active": True,
                    "part_of_id": loc.part_of,
                }
                for loc in org.locations
            ],
        )
        session.execute(
            insert(Practitioner),
            [
                {
                    "id": p.id,
                    "facility_id": p.facility_id,
                    "rpps": p.rpps,
                    "family": p.family,
                    "given": p.given,
                    "profession": p.profession,
                    "specialty": p.specialty,
                    "active": True,
                }
                for p in org.practitioners
            ],
        )
        if org.ward_assignments:
            session.execute(
                insert(WardAssignment),
                [
                    {
                        "id": w.id,
                        "practitioner_id": w.practitioner_id,
                        "location_id": w.location_id,
                        "facility_id": w.facility_id,
                        "start_at": w.start_at,
                        "end_at": None,
                    }
                    for w in org.ward_assignments
                ],
            )
        by_role: dict[tuple[uuid.UUID, Role], list[uuid.UUID]] = {}
        for spec in org.staff:
            account_id = create_account(
                session,
                account_id=_account_id(spec.username),
                username=spec.username,
                display_name=spec.display_name,
                kind="staff",
                password=spec.password,
                facility_id=spec.facility_id,
                practitioner_id=spec.practitioner_id,
                totp_secret=spec.totp_secret,
                check_password_policy=False,  # 20 random characters from the seeded stream
                keys=runtime.keys,
                audit=runtime.audit,
                created_by=actor,
            )
            _grant(
                runtime, session, actor, account_id=account_id, role=spec.role, facility_id=spec.facility_id
            )
            by_role.setdefault((spec.facility_id, spec.role), []).append(account_id)
            credentials.append(
                Credential(
                    spec.username,
                    spec.password,
                    spec.totp_secret,
                    [spec.role.value],
                    org.facility_name(spec.facility_id),
                )
            )
            progress.advance(1)
        for facility in org.facilities:
            generator.set_accounts(
                facility_id=facility.id,
                front_desk=by_role.get((facility.id, Role.FRONT_DESK), []),
                billing=by_role.get((facility.id, Role.BILLING), []),
            )
    return credentials


def write_credentials(path: Path, credentials: list[Credential]) -> None:
    """Write the credentials JSON readable by its owner only (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump([c.as_json() for c in credentials], fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def count_rows(runtime: Runtime) -> dict[str, int]:
    """Rows per seeded table outside patient data (patient tables are counted by the gate)."""
    with runtime.session_factory() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Facility, Location, Practitioner, Account, RoleGrant, WardAssignment, CanaryPatient)
        }


_ACCOUNTS = uuid.UUID("6f0c5d52-3f55-4d8e-9a51-2b7c1f0e8a10")


def _account_id(username: str) -> uuid.UUID:
    """Seeded usernames come from the seed, so ids derived from them are the same on every run."""
    return uuid.uuid5(_ACCOUNTS, username)
