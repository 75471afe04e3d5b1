"""Care relationships, computed in SQL: why this actor may see which patients right now."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    null,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
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


def _parts(
    rels: Collection[Relationship], *, me: Any, account: Any, now: Any, since: Any, until: Any
) -> list[tuple[Relationship, Select[Any]]]:
    """The care relationships' statements; `me` (the practitioner) and `account` are None when
    the actor has none. Each value is a Python value or a bound parameter (`bound_patient_filter`)."""
    parts: list[tuple[Relationship, Select[Any]]] = []
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
                        Appointment.start_at >= since,
                        Appointment.start_at <= until,
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
    if R.BREAK_GLASS in rels and account is not None:
        parts.append(
            (
                R.BREAK_GLASS,
                select(BreakGlassAccess.patient_id).where(
                    BreakGlassAccess.account_id == account,
                    BreakGlassAccess.started_at <= now,
                    BreakGlassAccess.expires_at > now,
                    BreakGlassAccess.ended_at.is_(None),
                ),
            )
        )
    return parts


def _visible(in_facilities: ColumnElement[bool], acting: Any, compartment: Any) -> ColumnElement[bool]:
    """Facility scope (`in_facilities`), the patient's restriction (`acting`: the acting
    facility, None when there is none) and an app token's launch patient (`compartment`)."""
    restriction: ColumnElement[bool] = Patient.opposes_other_facilities.is_(False)
    if acting is not None:
        restriction = or_(restriction, Patient.facility_id == acting)
    visible = and_(in_facilities, restriction)
    if compartment is not None:
        return and_(visible, Patient.id == compartment)
    return visible


def visible_filter(ctx: AccessContext) -> ColumnElement[bool]:
    """Facility scope, the patient's restriction and an app token's launch patient, as SQL on
    Patient."""
    return _visible(Patient.facility_id.in_(ctx.facility_ids), ctx.acting_facility_id, ctx.compartment)


def _scope(
    rels: Collection[Relationship],
    visible: Callable[[], ColumnElement[bool]],
    *,
    self_patient: Any,
    me: Any,
    account: Any,
    now: Any,
    since: Any,
    until: Any,
    correlated: bool = False,
) -> ColumnElement[bool] | None:
    """`correlated`: each relationship asked of each candidate patient (an EXISTS per
    relationship, for a statement whose other criteria leave a handful of candidates) instead
    of the actor's whole care list computed once (an IN of their union): the same patients."""
    conditions: list[ColumnElement[bool]] = []
    if R.FACILITY in rels or R.LOCATED in rels:
        return visible()
    if R.SELF in rels and self_patient is not None:
        conditions.append(Patient.id == self_patient)
    found = _parts(rels, me=me, account=account, now=now, since=since, until=until)
    if correlated:
        for rel, part in found:
            if rel is R.DESIGNATED:  # the candidate's own row says it
                conditions.append(Patient.designated_physician_id == me)
            else:
                conditions.append(part.where(part.selected_columns[0] == Patient.id).exists())
        found = []
    parts = [q for _rel, q in found]
    if parts:
        conditions.append(
            Patient.id.in_(union(*parts).scalar_subquery()) if len(parts) > 1 else Patient.id.in_(parts[0])
        )
    if not conditions:
        return None
    return and_(visible(), or_(*conditions))


def patient_filter(ctx: AccessContext, rels: Collection[Relationship]) -> ColumnElement[bool] | None:
    """SQL on Patient: the patients opened by any of `rels`; None when none can be."""
    window = window_params(ctx)
    return _scope(
        rels,
        lambda: visible_filter(ctx),
        self_patient=ctx.patient_id,
        me=ctx.practitioner_id,
        account=ctx.account_id,
        now=window["now"],
        since=window["since"],
        until=window["until"],
    )


@dataclass(frozen=True)
class FilterShape:
    """What of the actor `patient_filter` depends on besides values: which relationships open,
    which of the actor's ids exist, how the facilities are bound (one array on PostgreSQL, an
    expanding IN elsewhere) and whether the relationships are asked per candidate (`_scope`)."""

    rels: frozenset[Relationship]
    practitioner: bool
    account: bool
    self_patient: bool
    acting: bool
    compartment: bool
    array: bool
    correlated: bool = False


def filter_shape(
    ctx: AccessContext, rels: Collection[Relationship], *, array: bool, correlated: bool = False
) -> FilterShape:
    return FilterShape(
        rels=frozenset(rels),
        practitioner=ctx.practitioner_id is not None,
        account=ctx.account_id is not None,
        self_patient=ctx.patient_id is not None,
        acting=ctx.acting_facility_id is not None,
        compartment=ctx.compartment is not None,
        array=array,
        correlated=correlated,
    )


@functools.lru_cache(maxsize=512)
def bound_patient_filter(shape: FilterShape) -> ColumnElement[bool] | None:
    """`patient_filter` for every actor of this shape, built once: its values are bound
    parameters (`filter_params`), so a request binds them instead of building the expression
    tree again (a fifth of a name search's cost). Same rule, same SQL as `patient_filter`."""
    facilities: ColumnElement[bool]
    if shape.array:
        facilities = Patient.facility_id == any_(bindparam("facilities", type_=ARRAY(Uuid())))
    else:
        facilities = Patient.facility_id.in_(bindparam("facilities", expanding=True, type_=Uuid()))
    acting = bindparam("acting", type_=Uuid()) if shape.acting else None
    compartment = bindparam("compartment", type_=Uuid()) if shape.compartment else None
    return _scope(
        shape.rels,
        lambda: _visible(facilities, acting, compartment),
        self_patient=bindparam("self_patient", type_=Uuid()) if shape.self_patient else None,
        me=bindparam("me", type_=Uuid()) if shape.practitioner else None,
        account=bindparam("account", type_=Uuid()) if shape.account else None,
        now=bindparam("now", type_=UtcDateTime()),
        since=bindparam("since", type_=UtcDateTime()),
        until=bindparam("until", type_=UtcDateTime()),
        correlated=shape.correlated,
    )


def filter_params(ctx: AccessContext) -> dict[str, Any]:
    """The values `bound_patient_filter` binds for this actor, now. The names are those of
    the tagged statement's (`me`, `account`, `now`, `since`, `until`): one set binds both."""
    return {
        "facilities": sorted(ctx.facility_ids),
        "acting": ctx.acting_facility_id,
        "compartment": ctx.compartment,
        "self_patient": ctx.patient_id,
        "me": ctx.practitioner_id,
        **window_params(ctx),
    }


def tagged_statement(match: Callable[[Any], Any] | None = None, me: Any = None) -> Any:
    """Every relationship kind for a set of patients, as one statement built once: each request
    only binds its values (the compiled form is cached, no query is rebuilt per request).
    `match` says which patients (default: IN the expanding `ids`); `me` is the practitioner
    (default: the `me` value). The gate's fast read asks the same of one patient with `kinds_of`."""
    if match is None:
        ids = bindparam("ids", expanding=True, type_=Uuid())

        def match(column: Any) -> Any:
            return column.in_(ids)

    if me is None:
        me = bindparam("me", type_=Uuid())
    return union_all(*(part for _rel, part in _tagged_parts(match, me, bindparam("account", type_=Uuid()))))


def _tagged_parts(
    match: Callable[[Any], Any], me: Any, account: Any
) -> list[tuple[Relationship | None, Any]]:
    """The tagged statement's branches: (the kind each row of it is, or None when the row says
    it in its `rel` column: care team or referral; the branch). One definition of each kind's
    test for `tagged_statement` and `kinds_of`."""
    now = bindparam("now", type_=UtcDateTime())
    # Correlated to whatever `me` is read from in an enclosing statement (`kinds_of`).
    wards = (
        select(WardAssignment.location_id)
        .where(
            WardAssignment.practitioner_id == me,
            WardAssignment.start_at <= now,
            or_(WardAssignment.end_at.is_(None), WardAssignment.end_at > now),
        )
        .correlate_except(WardAssignment)
    )
    return [
        (
            None,
            select(CareRelationship.kind.label("rel"), CareRelationship.patient_id.label("pid")).where(
                match(CareRelationship.patient_id),
                CareRelationship.practitioner_id == me,
                CareRelationship.kind.in_([R.CARE_TEAM.value, R.REFERRAL.value]),
                CareRelationship.start_at <= now,
                or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > now),
            ),
        ),
        (
            R.APPOINTMENT,
            select(literal(R.APPOINTMENT.value).label("rel"), Appointment.patient_id.label("pid")).where(
                match(Appointment.patient_id),
                Appointment.practitioner_id == me,
                Appointment.start_at >= bindparam("since", type_=UtcDateTime()),
                Appointment.start_at <= bindparam("until", type_=UtcDateTime()),
                Appointment.status.not_in(INACTIVE_APPOINTMENT),
            ),
        ),
        (
            R.ATTENDING,
            select(literal(R.ATTENDING.value).label("rel"), Encounter.patient_id.label("pid")).where(
                match(Encounter.patient_id), Encounter.attending_id == me, Encounter.status == "in-progress"
            ),
        ),
        (
            R.WARD,
            select(literal(R.WARD.value).label("rel"), Encounter.patient_id.label("pid")).where(
                match(Encounter.patient_id),
                Encounter.status == "in-progress",
                Encounter.location_id.in_(wards),
            ),
        ),
        (
            R.DESIGNATED,
            select(literal(R.DESIGNATED.value).label("rel"), Patient.id.label("pid")).where(
                match(Patient.id), Patient.designated_physician_id == me
            ),
        ),
        (
            R.BREAK_GLASS,
            select(literal(R.BREAK_GLASS.value).label("rel"), BreakGlassAccess.patient_id.label("pid")).where(
                match(BreakGlassAccess.patient_id),
                BreakGlassAccess.account_id == account,
                BreakGlassAccess.started_at <= now,
                BreakGlassAccess.expires_at > now,
                BreakGlassAccess.ended_at.is_(None),
            ),
        ),
    ]


def kinds_of(pid: Any, me: Any, account: Any) -> Any:
    """The actor's relationship kinds to one patient (`pid`), as one array column (varchar[])
    of a statement that reads that patient's row (`Patient`): the kinds of `tagged_statement`'s
    rows for it, duplicates aside (`combine` makes a set of them). Each kind is found by the
    same branch, with the same tests (`_tagged_parts`), under the same row-level security:
    care team and referral as ARRAY(<their branch's kinds>), every other kind as CASE WHEN
    EXISTS (<its branch>) THEN <kind> END, NULLs removed; the designated physician from the
    patient row itself (`Patient.designated_physician_id = me`, which is that branch's test of
    that very row: the row is the patient's, read under the same policy). So PostgreSQL starts a
    subplan per kind, and no UNION, aggregate or subquery scan, on every read (executor start-up
    was the largest part of this statement's cost)."""
    rels: list[Any] = []
    listed: Any = None
    for rel, part in _tagged_parts(lambda column: column == pid, me, account):
        if rel is None:
            kind = part.with_only_columns(part.selected_columns[0]).scalar_subquery()
            listed = func.ARRAY(kind, type_=ARRAY(String()))
        elif rel is R.DESIGNATED:
            rels.append(case((Patient.designated_physician_id == me, literal(rel.value)), else_=null()))
        else:
            rels.append(case((part.exists(), literal(rel.value)), else_=null()))
    kinds = array(rels, type_=String()) if listed is None else listed.op("||")(array(rels, type_=String()))
    return func.array_remove(kinds, null(), type_=ARRAY(String()))


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
