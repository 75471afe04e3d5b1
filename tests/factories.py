"""Small factories for tests: facilities with data keys, practitioners, accounts with active
role grants (returned as the Actor identity would build), care links, stays, ward assignments.

Rows that belong to the patient tables are written through the audited system door, the way
seeding does; patients themselves are registered through the gate.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterable

from carnet.access.actor import Actor, ActorKind
from carnet.access.models import RoleGrant, WardAssignment
from carnet.access.roles import Role
from carnet.billing.models import Invoice, InvoiceLine
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.org.models import Facility, Location, Practitioner
from carnet.patients.models import CareRelationship
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientInput, PatientView
from carnet.phi.system import system_access
from carnet.records.models import DiagnosticReport, Observation
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter

_seq = itertools.count(1)


def make_facility(runtime: Runtime, name: str = "Hôpital Test") -> uuid.UUID:
    n = next(_seq)
    with runtime.session_factory.begin() as session:
        facility = Facility(name=f"{name} {n}", finess=f"{750000000 + n:09d}", city="Paris")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        return facility.id


def make_location(runtime: Runtime, facility_id: uuid.UUID, kind: str = "ward") -> uuid.UUID:
    with runtime.session_factory.begin() as session:
        location = Location(facility_id=facility_id, name=f"Ward {next(_seq)}", kind=kind)
        session.add(location)
        session.flush()
        return location.id


def make_beds(
    runtime: Runtime, facility_id: uuid.UUID, ward_id: uuid.UUID, rooms: dict[str, list[str]]
) -> dict[str, uuid.UUID]:
    """Rooms of a ward and their beds: {"Room 1": ["A", "B"]} -> {"Room 1": id, "Room 1/A": id, ...}."""
    made: dict[str, uuid.UUID] = {}
    with runtime.session_factory.begin() as session:
        for room_name, bed_names in rooms.items():
            room = Location(facility_id=facility_id, name=room_name, kind="room", part_of_id=ward_id)
            session.add(room)
            session.flush()
            made[room_name] = room.id
            for bed_name in bed_names:
                bed = Location(facility_id=facility_id, name=bed_name, kind="bed", part_of_id=room.id)
                session.add(bed)
                session.flush()
                made[f"{room_name}/{bed_name}"] = bed.id
    return made


def make_practitioner(runtime: Runtime, facility_id: uuid.UUID, profession: str = "physician") -> uuid.UUID:
    n = next(_seq)
    with runtime.session_factory.begin() as session:
        practitioner = Practitioner(
            facility_id=facility_id,
            rpps=f"{10000000000 + n}",
            family=f"Docteur{n}",
            given="Test",
            profession=profession,
        )
        session.add(practitioner)
        session.flush()
        return practitioner.id


def make_account(
    runtime: Runtime,
    *,
    roles: Iterable[Role],
    facility_id: uuid.UUID | None,
    practitioner_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    grant: bool = True,
    status: str = "active",
) -> Actor:
    """An account whose roles are granted (active) unless `grant` is False; returns its Actor
    with a second factor proven just now (a fresh session)."""
    roles = frozenset(roles)
    kind = "patient" if Role.PATIENT in roles else "staff"
    now = clock.now()
    with runtime.session_factory.begin() as session:
        account = Account(
            username=f"user{next(_seq)}-{uuid.uuid4().hex[:6]}",
            display_name="Test User",
            kind=kind,
            facility_id=facility_id,
            practitioner_id=practitioner_id,
            patient_id=patient_id,
            password_hash="not-a-real-hash",
            status=status,
            created_at=now,
            password_changed_at=now,
        )
        session.add(account)
        session.flush()
        if grant and kind == "staff":
            for role in roles:
                session.add(
                    RoleGrant(
                        account_id=account.id,
                        role=role.value,
                        facility_id=facility_id,
                        status="active",
                        requested_at=now,
                        decided_at=now,
                        reason="test fixture",
                    )
                )
        account_id = account.id
    return Actor(
        kind=ActorKind.PATIENT if kind == "patient" else ActorKind.STAFF,
        username=f"account-{account_id}",
        roles=roles,
        account_id=account_id,
        facility_id=facility_id,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        session_id=uuid.uuid4(),
        address="127.0.0.1",
        second_factor_at=now,
    )


def make_physician(runtime: Runtime, facility_id: uuid.UUID) -> Actor:
    return make_account(
        runtime,
        roles=[Role.PHYSICIAN],
        facility_id=facility_id,
        practitioner_id=make_practitioner(runtime, facility_id, "physician"),
    )


def make_nurse(runtime: Runtime, facility_id: uuid.UUID) -> Actor:
    return make_account(
        runtime,
        roles=[Role.NURSE],
        facility_id=facility_id,
        practitioner_id=make_practitioner(runtime, facility_id, "nurse"),
    )


def register_patient(
    runtime: Runtime,
    facility_id: uuid.UUID,
    *,
    family: str = "Martin",
    given: str | None = None,
    birth_date: dt.date = dt.date(1970, 5, 17),
    ins: str | None = None,
    by: Actor | None = None,
    **extra: object,
) -> PatientView:
    """A patient registered through the gate by a front-desk account of the facility."""
    clerk = by or make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility_id)
    data = PatientInput(
        facility_id=str(facility_id),
        family=family,
        given=given or f"Given{next(_seq)}",
        birth_date=birth_date,
        gender="female",
        ins=ins,
        **{  # type: ignore[arg-type]
            "phone": "06 12 34 56 78",
            "email": "patient@example.org",
            "address": {"line": "1 rue de Test", "city": "Paris"},
            **extra,
        },
    )
    return Gate(runtime, clerk).register_patient(data=data)


def link_care(
    runtime: Runtime,
    *,
    patient_id: str | uuid.UUID,
    practitioner_id: uuid.UUID,
    facility_id: uuid.UUID,
    kind: str = "care_team",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> None:
    with system_access(runtime, reason="test fixture: care relationship") as door:
        door.session.add(
            CareRelationship(
                patient_id=uuid.UUID(str(patient_id)),
                practitioner_id=practitioner_id,
                facility_id=facility_id,
                kind=kind,
                start_at=start or clock.now() - dt.timedelta(days=1),
                end_at=end,
            )
        )


def admit(
    runtime: Runtime,
    *,
    patient_id: str | uuid.UUID,
    facility_id: uuid.UUID,
    location_id: uuid.UUID | None,
    attending_id: uuid.UUID | None = None,
    status: str = "in-progress",
) -> uuid.UUID:
    now = clock.now()
    with system_access(runtime, reason="test fixture: admission") as door:
        encounter = Encounter(
            facility_id=facility_id,
            patient_id=uuid.UUID(str(patient_id)),
            kind="inpatient",
            status=status,
            start_at=now - dt.timedelta(hours=5),
            end_at=None,
            location_id=location_id,
            attending_id=attending_id,
            created_at=now,
            updated_at=now,
        )
        door.session.add(encounter)
        door.session.flush()
        return encounter.id


def assign_ward(
    runtime: Runtime, *, practitioner_id: uuid.UUID, location_id: uuid.UUID, facility_id: uuid.UUID
) -> None:
    with runtime.session_factory.begin() as session:
        session.add(
            WardAssignment(
                practitioner_id=practitioner_id,
                location_id=location_id,
                facility_id=facility_id,
                start_at=clock.now() - dt.timedelta(hours=2),
                end_at=None,
            )
        )


def make_invoice(
    runtime: Runtime,
    *,
    patient_id: str | uuid.UUID,
    facility_id: uuid.UUID,
    total_cents: int = 12_000,
    status: str = "issued",
) -> uuid.UUID:
    """An issued invoice with one line (invoices are produced by the billing run, not the gate)."""
    now = clock.now()
    with system_access(runtime, reason="test fixture: invoice") as door:
        invoice = Invoice(
            facility_id=facility_id,
            patient_id=uuid.UUID(str(patient_id)),
            number=f"F-TEST-{next(_seq):06d}",
            status=status,
            issued_at=now,
            total_cents=total_cents,
            currency="EUR",
            version_id=1,
            created_at=now,
            updated_at=now,
        )
        door.session.add(invoice)
        door.session.flush()
        door.session.add(
            InvoiceLine(
                invoice_id=invoice.id, code="CS", description="Consultation", amount_cents=total_cents
            )
        )
        return invoice.id


def make_lab_report(
    runtime: Runtime,
    *,
    patient_id: str | uuid.UUID,
    facility_id: uuid.UUID,
    conclusion: str = "Bilan normal.",
    results: Iterable[tuple[str, str, float, str]] = (
        ("2345-7", "Glucose", 5.2, "mmol/L"),
        ("2160-0", "Créatinine", 80.0, "umol/L"),
    ),
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A final lab report (as a laboratory system delivers it) with its observations."""
    now = clock.now()
    with system_access(runtime, reason="test fixture: lab report") as door:
        report_id = uuid.uuid4()
        door.session.add(
            DiagnosticReport(
                id=report_id,
                facility_id=facility_id,
                patient_id=uuid.UUID(str(patient_id)),
                code="24323-8",
                display="Bilan métabolique",
                status="final",
                issued_at=now,
                conclusion_ct=door.keyring.encrypt(
                    conclusion,
                    facility_id=facility_id,
                    table="diagnostic_reports",
                    column="conclusion",
                    row_id=report_id,
                ),
                version_id=1,
                created_at=now,
                updated_at=now,
            )
        )
        door.session.flush()
        observations = []
        for code, display, value, unit in results:
            observation = Observation(
                facility_id=facility_id,
                patient_id=uuid.UUID(str(patient_id)),
                report_id=report_id,
                category="laboratory",
                code=code,
                display=display,
                value_number=value,
                unit=unit,
                effective_at=now,
                status="final",
                version_id=1,
                created_at=now,
                updated_at=now,
            )
            door.session.add(observation)
            door.session.flush()
            observations.append(observation.id)
        return report_id, observations
