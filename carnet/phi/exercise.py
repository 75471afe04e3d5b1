"""What a red-team exercise knows of the seeded hospital: patient ids, identifiers, names and
birth dates, canaries and accounts by role — read through the audited system door, and only in
demo and test mode (the attacker of a playbook would have learnt them elsewhere).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from carnet.access.models import RoleGrant
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.detection.models import CanaryPatient
from carnet.identity.models import Account
from carnet.kernel.errors import Forbidden
from carnet.org.models import Practitioner
from carnet.patients.models import Patient
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment


@dataclass(frozen=True)
class Person:
    patient_id: uuid.UUID
    ins: str | None
    family: str
    birth_date: str


@dataclass
class ExerciseTargets:
    people: list[Person] = field(default_factory=list)
    canaries: list[Person] = field(default_factory=list)
    # role -> active staff usernames holding it
    accounts: dict[str, list[str]] = field(default_factory=dict)
    # Practitioner ids (a hospital's directory is no secret to its own staff).
    practitioners: list[uuid.UUID] = field(default_factory=list)


def exercise_targets(runtime: Runtime, *, sample: int = 500, seed: int = 6) -> ExerciseTargets:
    if not runtime.settings.exercise_mode:
        raise Forbidden("red-team exercises run only when CARNET_ENV is demo or test")
    rng = random.Random(seed)  # noqa: S311 (a reproducible sample, not a secret)
    targets = ExerciseTargets()
    with system_access(
        runtime, reason="red-team exercise: attacker's target list", operator="redteam"
    ) as door:
        session, ring = door.session, door.keyring
        canary_ids = set(session.scalars(select(CanaryPatient.patient_id)))
        ids = list(session.scalars(select(Patient.id).where(Patient.active.is_(True)).order_by(Patient.id)))
        chosen = set(rng.sample(ids, min(sample, len(ids)))) | canary_ids
        for patient in session.scalars(select(Patient).where(Patient.id.in_(sorted(chosen)))):

            def dec(blob: bytes | None, column: str, row: uuid.UUID = patient.id) -> str | None:
                return ring.decrypt(blob, table="patients", column=column, row_id=row)

            person = Person(
                patient_id=patient.id,
                ins=dec(patient.ins_ct, "ins"),
                family=dec(patient.family_ct, "family") or "",
                birth_date=dec(patient.birth_date_ct, "birth_date") or "",
            )
            (targets.canaries if patient.id in canary_ids else targets.people).append(person)
        door.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=door.actor,
                resource_type="Patient",
                patient_ids=sorted(chosen),
                detail={"purpose": "red-team exercise targets", "fields": "ins,family,birth_date"},
            ),
        )
        rows = session.execute(
            select(RoleGrant.role, Account.username)
            .join(Account, Account.id == RoleGrant.account_id)
            .where(RoleGrant.status == "active", Account.status == "active", Account.kind == "staff")
            .order_by(Account.username)
        )
        for role, username in rows:
            targets.accounts.setdefault(role, []).append(username)
        targets.practitioners = list(
            session.scalars(
                select(Practitioner.id).where(Practitioner.active.is_(True)).order_by(Practitioner.id)
            )
        )
    rng.shuffle(targets.people)
    return targets


@dataclass(frozen=True)
class Visit:
    """A patient who comes through a facility on a simulated day (what the desk would be told)."""

    patient_id: uuid.UUID
    family: str
    birth_date: str
    ins: str | None
    practitioner_id: uuid.UUID | None = None


@dataclass
class FacilityDay:
    """One facility's day, as the benign workload's front desk and billing see it arrive: who has
    an appointment today (check-in), whose visit of yesterday is to be invoiced, some of the
    facility's patients who call to book, and the practitioners one can book with."""

    facility_id: uuid.UUID
    arrivals: list[Visit] = field(default_factory=list)
    to_invoice: list[Visit] = field(default_factory=list)
    callers: list[Visit] = field(default_factory=list)
    practitioners: list[uuid.UUID] = field(default_factory=list)


def facility_days(
    runtime: Runtime, *, day: dt.date, callers: int = 200, seed: int = 6
) -> dict[uuid.UUID, FacilityDay]:
    """Each facility's day (demo and test mode only; read through the audited system door)."""
    if not runtime.settings.exercise_mode:
        raise Forbidden("the benign workload runs only when CARNET_ENV is demo or test")
    rng = random.Random(f"{seed}-{day.isoformat()}")  # noqa: S311 (a reproducible day, not a secret)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    days: dict[uuid.UUID, FacilityDay] = {}
    with system_access(runtime, reason="benign workload: the facilities' day", operator="redteam") as door:
        session, ring = door.session, door.keyring

        def visit(patient: Patient, practitioner: uuid.UUID | None = None) -> Visit:
            def dec(blob: bytes | None, column: str) -> str | None:
                return ring.decrypt(blob, table="patients", column=column, row_id=patient.id)

            return Visit(
                patient_id=patient.id,
                family=dec(patient.family_ct, "family") or "",
                birth_date=dec(patient.birth_date_ct, "birth_date") or "",
                ins=dec(patient.ins_ct, "ins"),
                practitioner_id=practitioner,
            )

        canaries = set(session.scalars(select(CanaryPatient.patient_id)))
        shown: list[uuid.UUID] = []
        for when, bucket in ((start, "arrivals"), (start - dt.timedelta(days=1), "to_invoice")):
            rows = session.execute(
                select(Appointment.facility_id, Appointment.practitioner_id, Patient)
                .join(Patient, Patient.id == Appointment.patient_id)
                .where(
                    Appointment.start_at >= when,
                    Appointment.start_at < when + dt.timedelta(days=1),
                    Appointment.status.not_in(("cancelled", "entered-in-error")),
                    Patient.active.is_(True),
                )
                .order_by(Appointment.start_at)
            ).all()
            for facility_id, practitioner_id, patient in rows:
                if patient.id in canaries:
                    continue
                fday = days.setdefault(facility_id, FacilityDay(facility_id=facility_id))
                getattr(fday, bucket).append(visit(patient, practitioner_id))
                shown.append(patient.id)
        for facility_id, fday in days.items():
            ids = list(
                session.scalars(
                    select(Patient.id)
                    .where(Patient.facility_id == facility_id, Patient.active.is_(True))
                    .order_by(Patient.id)
                )
            )
            chosen = [p for p in rng.sample(ids, min(callers, len(ids))) if p not in canaries]
            for patient in session.scalars(select(Patient).where(Patient.id.in_(chosen))):
                fday.callers.append(visit(patient))
                shown.append(patient.id)
            rng.shuffle(fday.callers)
            fday.practitioners = list(
                session.scalars(
                    select(Practitioner.id)
                    .where(Practitioner.facility_id == facility_id, Practitioner.active.is_(True))
                    .order_by(Practitioner.id)
                )
            )
        door.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=door.actor,
                resource_type="Patient",
                patient_ids=sorted(set(shown)),
                detail={"purpose": "benign workload: the facilities' day", "fields": "ins,family,birth_date"},
            ),
        )
    return days
