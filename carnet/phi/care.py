"""Care relationships, computed in SQL: why this actor may see which patients right now."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Select,
    Uuid,
    and_,
    any_,
    bindparam,
    literal,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from carnet.access.context import AccessContext
from carnet.access.models import BreakGlassAccess, WardAssignment
from carnet.access.policy import (
    APPOINTMENT_WINDOW_AFTER,
    APPOINTMENT_WINDOW_BEFORE,
    Relationship,
    decided_by_facility_alone,
)
from carnet.db.base import UtcDateTime
from carnet.patients.models import CareRelationship, Patient
from carnet.scheduling.models import Appointment, Encounter

R = Relationship


class InScope(Protocol):
    """What the scope and the relationships need of a patient: a Patient, or a row of just
    these columns (a list of many need not load whole patient rows to learn who they are)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def facility_id(self) -> uuid.UUID: ...

    @property
    def opposes_other_facilities(self) -> bool: ...


INACTIVE_APPOINTMENT = ("cancelled", "entered-in-error", "noshow")
# Relationships that are a reason to see the patient (break-the-glass and facility are not).
CARE = frozenset({R.SELF, R.CARE_TEAM, R.REFERRAL, R.APPOINTMENT, R.ATTENDING, R.WARD, R.DESIGNATED})


def _parts(ctx: AccessContext, rels: Collection[Relationship]) -> list[tuple[Relationship, Select[Any]]]:
    now = ctx.now
    parts: list[tuple[Relationship, Select[Any]]] = []
    me = ctx.practitioner_id
    if me is not None:
        for rel in (R.CARE_TEAM, R.REFERRAL):
            if rel in rels:
                parts.append(
                    (
                        rel,
                        select(CareRelationship.patient_id).where(
                            CareRelationship.practitioner_id == me,
                            CareRelationship.kind == rel.value,
                            CareRelationship.start_at <= now,
                            or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > now),
                        ),
                    )
                )
        if R.APPOINTMENT in rels:
            parts.append(
                (
                    R.APPOINTMENT,
                    select(Appointment.patient_id).where(
                        Appointment.practitioner_id == me,
                        Appointment.start_at >= now - APPOINTMENT_WINDOW_BEFORE,
                        Appointment.start_at <= now + APPOINTMENT_WINDOW_AFTER,
                        Appointment.status.not_in(INACTIVE_APPOINTMENT),
                    ),
                )
            )
        if R.ATTENDING in rels:
            parts.append(
                (
                    R.ATTENDING,
                    select(Encounter.patient_id).where(
                        Encounter.attending_id == me, Encounter.status == "in-progress"
                    ),
                )
            )
        if R.WARD in rels:
            wards = select(WardAssignment.location_id).where(
                WardAssignment.practitioner_id == me,
                WardAssignment.start_at <= now,
                or_(WardAssignment.end_at.is_(None), WardAssignment.end_at > now),
            )
            parts.append(
                (
                    R.WARD,
                    select(Encounter.patient_id).where(
                        Encounter.status == "in-progress", Encounter.location_id.in_(wards)
                    ),
                )
            )
        if R.DESIGNATED in rels:
            parts.append((R.DESIGNATED, select(Patient.id).where(Patient.designated_physician_id == me)))
    if R.BREAK_GLASS in rels and ctx.account_id is not None:
        parts.append(
            (
                R.BREAK_GLASS,
                select(BreakGlassAccess.patient_id).where(
                    BreakGlassAccess.account_id == ctx.account_id,
                    BreakGlassAccess.started_at <= now,
                    BreakGlassAccess.expires_at > now,
                    BreakGlassAccess.ended_at.is_(None),
                ),
            )
        )
    return parts


def visible_filter(ctx: AccessContext) -> ColumnElement[bool]:
    """Facility scope, the patient's restriction and an app token's launch patient, as SQL on
    Patient."""
    visible = and_(
        Patient.facility_id.in_(ctx.facility_ids),
        or_(Patient.opposes_other_facilities.is_(False), Patient.facility_id == ctx.acting_facility_id),
    )
    if ctx.compartment is not None:
        return and_(visible, Patient.id == ctx.compartment)
    return visible


def patient_filter(ctx: AccessContext, rels: Collection[Relationship]) -> ColumnElement[bool] | None:
    """SQL on Patient: the patients opened by any of `rels`; None when none can be."""
    conditions: list[ColumnElement[bool]] = []
    if R.FACILITY in rels or R.LOCATED in rels:
        return visible_filter(ctx)
    if R.SELF in rels and ctx.patient_id is not None:
        conditions.append(Patient.id == ctx.patient_id)
    parts = [q for _rel, q in _parts(ctx, rels)]
    if parts:
        conditions.append(
            Patient.id.in_(union(*parts).scalar_subquery()) if len(parts) > 1 else Patient.id.in_(parts[0])
        )
    if not conditions:
        return None
    return and_(visible_filter(ctx), or_(*conditions))


def tagged_statement(match: Callable[[Any], Any] | None = None, me: Any = None) -> Any:
    """Every relationship kind for a set of patients, as one statement built once: each request
    only binds its values (the compiled form is cached, no query is rebuilt per request).
    `match` says which patients (default: IN the expanding `ids`); `me` is the practitioner
    (default: the `me` value). The gate's fast read builds its own from the same parts."""
    if match is None:
        ids = bindparam("ids", expanding=True, type_=Uuid())

        def match(column: Any) -> Any:
            return column.in_(ids)

    if me is None:
        me = bindparam("me", type_=Uuid())
    now = bindparam("now", type_=UtcDateTime())
    wards = select(WardAssignment.location_id).where(
        WardAssignment.practitioner_id == me,
        WardAssignment.start_at <= now,
        or_(WardAssignment.end_at.is_(None), WardAssignment.end_at > now),
    )
    tagged = [
        select(CareRelationship.kind.label("rel"), CareRelationship.patient_id.label("pid")).where(
            match(CareRelationship.patient_id),
            CareRelationship.practitioner_id == me,
            CareRelationship.kind.in_([R.CARE_TEAM.value, R.REFERRAL.value]),
            CareRelationship.start_at <= now,
            or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > now),
        ),
        select(literal(R.APPOINTMENT.value).label("rel"), Appointment.patient_id.label("pid")).where(
            match(Appointment.patient_id),
            Appointment.practitioner_id == me,
            Appointment.start_at >= bindparam("since", type_=UtcDateTime()),
            Appointment.start_at <= bindparam("until", type_=UtcDateTime()),
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
        ),
        select(literal(R.ATTENDING.value).label("rel"), Encounter.patient_id.label("pid")).where(
            match(Encounter.patient_id), Encounter.attending_id == me, Encounter.status == "in-progress"
        ),
        select(literal(R.WARD.value).label("rel"), Encounter.patient_id.label("pid")).where(
            match(Encounter.patient_id), Encounter.status == "in-progress", Encounter.location_id.in_(wards)
        ),
        select(literal(R.DESIGNATED.value).label("rel"), Patient.id.label("pid")).where(
            match(Patient.id), Patient.designated_physician_id == me
        ),
        select(literal(R.BREAK_GLASS.value).label("rel"), BreakGlassAccess.patient_id.label("pid")).where(
            match(BreakGlassAccess.patient_id),
            BreakGlassAccess.account_id == bindparam("account", type_=Uuid()),
            BreakGlassAccess.started_at <= now,
            BreakGlassAccess.expires_at > now,
            BreakGlassAccess.ended_at.is_(None),
        ),
    ]
    return union_all(*tagged)


_TAGGED = tagged_statement()
# The same on PostgreSQL with the patients as one array parameter (`= ANY`): a list of hundreds
# of patients (a week's calendar, a ward) is one bound value, not six IN lists of hundreds of
# placeholders that the driver parses and the server plans each time.
_IDS_ARRAY = bindparam("ids", type_=ARRAY(Uuid()))
_TAGGED_ANY = tagged_statement(match=lambda column: column == any_(_IDS_ARRAY))


def relationships_of(
    session: Session, ctx: AccessContext, patients: Iterable[InScope]
) -> dict[uuid.UUID, frozenset[Relationship]]:
    """Each patient's relationships to the actor; a patient hidden by scope, restriction or an
    app token's launch patient (`ctx.compartment`) has none."""
    visible = visible_ids(ctx, patients)
    if not visible:
        return {}
    rows: list[Any] = []
    if decided_by_facility_alone(ctx.roles):
        pass  # an HL7 interface: no care relationship changes its decisions; none looked up
    elif ctx.practitioner_id is not None or ctx.account_id is not None:
        # A NULL practitioner or account matches nothing: those parts simply find no row.
        params = {"ids": visible, "me": ctx.practitioner_id, **window_params(ctx)}
        session.flush()  # a Core statement does not autoflush: see this transaction's own writes
        connection = session.connection()
        tagged = _TAGGED_ANY if connection.dialect.name == "postgresql" else _TAGGED
        rows = list(connection.execute(tagged, params))
    return combine(ctx, visible, rows)


def visible_ids(ctx: AccessContext, patients: Iterable[InScope]) -> list[uuid.UUID]:
    """The patients the actor's scope shows (facility, the patient's restriction, and an app
    token's launch patient)."""
    return [
        p.id
        for p in patients
        if p.facility_id in ctx.facility_ids
        and (not p.opposes_other_facilities or p.facility_id == ctx.acting_facility_id)
        and (ctx.compartment is None or p.id == ctx.compartment)
    ]


def window_params(ctx: AccessContext) -> dict[str, Any]:
    """The values the tagged statement binds besides the patients and the practitioner."""
    return window_params_at(ctx.now, ctx.account_id)


def window_params_at(now: dt.datetime, account_id: uuid.UUID | None) -> dict[str, Any]:
    return {
        "account": account_id,
        "now": now,
        "since": now - APPOINTMENT_WINDOW_BEFORE,
        "until": now + APPOINTMENT_WINDOW_AFTER,
    }


def combine(
    ctx: AccessContext, visible: Iterable[uuid.UUID], rows: Iterable[Any]
) -> dict[uuid.UUID, frozenset[Relationship]]:
    """The relationships of the visible patients: the facility, self, and each tagged row."""
    found: dict[uuid.UUID, set[Relationship]] = {pid: {R.FACILITY} for pid in visible}
    if ctx.patient_id is not None and ctx.patient_id in found:
        found[ctx.patient_id].add(R.SELF)
    for rel_value, pid in rows:
        if pid in found:
            found[pid].add(Relationship(rel_value))
    return {pid: frozenset(rels) for pid, rels in found.items()}
