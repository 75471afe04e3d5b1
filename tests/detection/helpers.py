"""Factories for detection tests: accounts, patients, and exposures through the ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.crypto.blind import IndexKind
from carnet.detection.interfaces import Channel, SearchEvent
from carnet.detection.models import CanaryPatient
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import StepUpRequired
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.runtime import Runtime


def make_actor(
    runtime: Runtime,
    username: str,
    *roles: Role,
    address: str | None = "10.0.0.5",
    second_factor_at: dt.datetime | None = None,
) -> Actor:
    """A staff account in the database, and the Actor a session of it would build."""
    account_id = uuid.uuid4()
    with runtime.session_factory.begin() as session:
        now = clock.now()
        session.add(
            Account(
                id=account_id,
                username=username,
                display_name=username,
                kind="staff",
                password_hash="!",
                status="active",
                created_at=now,
                password_changed_at=now,
            )
        )
    return Actor(
        kind=ActorKind.STAFF,
        username=username,
        roles=frozenset(roles),
        account_id=account_id,
        session_id=uuid.uuid4(),
        address=address,
        second_factor_at=second_factor_at,
    )


def client_actor(client_id: str) -> Actor:
    return Actor(
        kind=ActorKind.CLIENT, username=client_id, roles=frozenset({Role.API_CLIENT}), client_id=client_id
    )


def make_facility(runtime: Runtime) -> uuid.UUID:
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Hôpital Test", finess=f"{uuid.uuid4().int % 10**9:09d}", city="Lyon")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        return facility.id


def make_patients(
    runtime: Runtime, facility_id: uuid.UUID, people: Sequence[dict[str, str]], *, canary: bool = False
) -> list[uuid.UUID]:
    """Encrypted patient rows (`family`, `given`, `birth_date`, optional `phone`, `email`, `address`)."""
    ring = runtime.keyring
    ids: list[uuid.UUID] = []
    with runtime.session_factory.begin() as session:
        now = clock.now()
        for person in people:
            pid = uuid.uuid4()

            def enc(column: str, pid: uuid.UUID = pid, person: dict[str, str] = person) -> bytes | None:
                return ring.encrypt(
                    person.get(column), facility_id=facility_id, table="patients", column=column, row_id=pid
                )

            session.add(
                Patient(
                    id=pid,
                    facility_id=facility_id,
                    family_ct=enc("family"),
                    family_bi=ring.index(IndexKind.FAMILY, person["family"]),
                    given_ct=enc("given"),
                    given_bi=ring.index(IndexKind.GIVEN, person["given"]),
                    birth_date_ct=enc("birth_date"),
                    birth_date_bi=ring.index(IndexKind.BIRTH_DATE, person["birth_date"]),
                    gender="unknown",
                    address_ct=enc("address"),
                    phone_ct=enc("phone"),
                    email_ct=enc("email"),
                    created_at=now,
                    updated_at=now,
                )
            )
            if canary:
                session.flush()
                session.add(CanaryPatient(patient_id=pid, facility_id=facility_id, created_at=now))
            ids.append(pid)
    return ids


def expose(
    runtime: Runtime,
    actor: Actor,
    patients: Sequence[uuid.UUID],
    *,
    channel: Channel = Channel.CHART,
    resource_type: str = "Patient",
    outside_care: Sequence[uuid.UUID] = (),
    query_shape: SearchEvent | None = None,
    fields: Sequence[str] = (),
) -> None:
    """One gate-like request: record the exposure in a transaction that rolls back on refusal."""
    with runtime.session_factory.begin() as session:
        runtime.ledger.record(
            session,
            actor=actor,
            patient_ids=patients,
            channel=channel,
            resource_type=resource_type,
            outside_care=outside_care,
            query_shape=query_shape,
            fields=fields,
        )


def deny(
    runtime: Runtime, actor: Actor, *, resource_type: str = "Patient", channel: Channel | None = None
) -> None:
    with runtime.session_factory.begin() as session:
        runtime.ledger.record_denial(session, actor=actor, resource_type=resource_type, channel=channel)


def new_patients(n: int) -> list[uuid.UUID]:
    """Patient ids for exposure counting (the ledger does not need the rows themselves)."""
    return [uuid.uuid4() for _ in range(n)]


def step_up(actor: Actor) -> Actor:
    """The same session after its owner proved their second factor again, just now."""
    return dataclasses.replace(actor, second_factor_at=clock.now())


def expose_as_owner(runtime: Runtime, actor: Actor, patients: Sequence[uuid.UUID], **kwargs: object) -> Actor:
    """Like `expose`, but the session's owner answers a step-up and retries, as a clinician
    would. Returns the (possibly stepped-up) actor for the next requests."""
    try:
        expose(runtime, actor, patients, **kwargs)  # type: ignore[arg-type]
        return actor
    except StepUpRequired:
        actor = step_up(actor)
        expose(runtime, actor, patients, **kwargs)  # type: ignore[arg-type]
        return actor
