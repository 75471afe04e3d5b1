"""Care teams and referrals: a care relationship OPENS the chart to the practitioner it names
(carnet.phi.care), so making one is guarded like reading the chart and more. Run only by the
gate kernel."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence

from sqlalchemy import Select, func, or_, select

from carnet.access.permissions import Permission
from carnet.access.policy import CARE_TEAM_MAX_DURATION, REFERRAL_MAX_DURATION, Relationship
from carnet.audit.interfaces import AuditKind
from carnet.detection.interfaces import Channel
from carnet.detection.referrals import judge_care_relationship
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import Practitioner
from carnet.patients.models import CareRelationship, Patient, ResourceVersion
from carnet.phi import care
from carnet.phi.kernel import RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import CareRelationshipInput, CareTeamView
from carnet.phi.steps import (
    SECTION_LIMIT,
    expose_worklist,
    own_worklist,
    read_one,
    redact,
    section,
    written,
)
from carnet.records.views import care_team_data


def _care_versions(
    tx: GuardedTx, rows: Sequence[CareRelationship], *, with_reason: bool
) -> dict[uuid.UUID, tuple[int, str | None]]:
    """Each relationship's current version (its latest stored one; a seeded relationship
    has none: version 1) and the reason it was made, from that version's snapshot."""
    if not rows:
        return {}
    latest: dict[uuid.UUID, ResourceVersion] = {}
    for v in tx.session.scalars(
        select(ResourceVersion)
        .where(
            ResourceVersion.resource_type == RT.CARE_TEAM.value,
            ResourceVersion.resource_id.in_([r.id for r in rows]),
        )
        .order_by(ResourceVersion.version_id)
    ):
        latest[v.resource_id] = v
    out: dict[uuid.UUID, tuple[int, str | None]] = {}
    for rid, v in latest.items():
        reason = None
        if with_reason:
            raw = tx.dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}"
            reason = json.loads(raw).get("reason")
        out[rid] = (v.version_id, reason)
    return out


def _make_care(tx: GuardedTx, data: CareRelationshipInput, kind: Relationship) -> CareTeamView:
    what = "a referral" if kind == Relationship.REFERRAL else "a care-team membership"
    # Exclusive: one relationship at a time per patient, the duplicate check below and the
    # insert cannot interleave.
    patient = tx.patient_for_write(data.patient_id, exclusive=True)
    tx.authorize(patient, RT.CARE_TEAM, write=True)
    me = tx.ctx.practitioner_id
    if me is None:
        raise Refused("only a practitioner in the patient's care makes a care relationship", [patient.id])
    if tx.ctx.acting_facility_id != patient.facility_id:
        raise InvalidInput(f"{what} is made by a practitioner of the patient's facility")
    reason = " ".join(data.reason.split())
    if not 3 <= len(reason) <= 500:
        raise InvalidInput(f"{what} needs a reason of 3 to 500 characters")
    target = parse_id(data.practitioner_id)
    practitioner = tx.session.get(Practitioner, target) if target is not None else None
    if practitioner is None or not practitioner.active or practitioner.facility_id != patient.facility_id:
        raise InvalidInput("the practitioner must be an active practitioner of the patient's facility")
    if practitioner.id == me:
        raise InvalidInput(f"{what} names a colleague: a practitioner cannot name themself")
    longest = REFERRAL_MAX_DURATION if kind == Relationship.REFERRAL else CARE_TEAM_MAX_DURATION
    end = data.end_at
    if end is None:
        raise InvalidInput(f"{what} needs an end date (period.end), at most {longest.days} days ahead")
    if end.tzinfo is None:
        raise InvalidInput("the end date needs a time zone")
    if end <= tx.now:
        raise InvalidInput("the end date must be in the future")
    if end > tx.now + longest:
        raise InvalidInput(f"{what} lasts at most {longest.days} days")
    # Not ended is enough, whatever its start: a concurrent maker that held the patient's lock
    # first may have stamped a start a moment after this transaction's clock.
    existing = tx.session.scalar(
        select(CareRelationship.id).where(
            CareRelationship.patient_id == patient.id,
            CareRelationship.practitioner_id == practitioner.id,
            CareRelationship.kind == kind.value,
            or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > tx.now),
        )
    )
    if existing is not None:
        raise Conflict(f"{what} of this patient to this practitioner is active: CareTeam/{existing}")
    row = CareRelationship(
        id=new_id(),
        patient_id=patient.id,
        practitioner_id=practitioner.id,
        facility_id=patient.facility_id,
        kind=kind.value,
        start_at=tx.now,
        end_at=end,
        created_by=tx.ctx.account_id,
    )
    tx.session.add(row)
    tx.session.flush()
    tx.reasons.append(f"{kind.value} to Practitioner/{practitioner.id} until {end.isoformat()}")
    _judge_care(tx, practitioner.id)
    data_out = care_team_data(row, tx.now, 1, reason)
    return written(tx, patient, RT.CARE_TEAM, CareTeamView, data_out, 1, "create")


def _judge_care(tx: GuardedTx, practitioner_id: uuid.UUID) -> None:
    """Detection sees each care relationship made by a colleague: how many this account made,
    and how many name this practitioner, in 24 hours (this one included). An alert it raises
    commits with the relationship, and the audit event names it."""
    since = tx.now - dt.timedelta(hours=24)
    made = select(func.count()).where(
        CareRelationship.created_by.is_not(None), CareRelationship.start_at > since
    )
    by_actor = tx.session.scalar(made.where(CareRelationship.created_by == tx.ctx.account_id))
    named = tx.session.scalar(made.where(CareRelationship.practitioner_id == practitioner_id))
    alert = judge_care_relationship(
        tx.session,
        actor=tx.actor,
        practitioner_id=practitioner_id,
        by_actor_24h=int(by_actor or 0),
        to_practitioner_24h=int(named or 0),
        at=tx.now,
    )
    if alert is not None:
        tx.session.flush()
        tx.resource_ids.append(str(alert.id))


# -- care teams and referrals ---------------------------------------------------------------
# A care relationship OPENS the chart to the practitioner it names (carnet.phi.care), so
# making one is guarded like reading the chart and more: only a physician in the patient's
# care by a lasting clinical relationship (not break-the-glass, not a referral: see
# WRITE_RULES), to an active colleague of the patient's facility, never to themself, with a
# required, bounded end. Ending one is allowed to whoever made it, whoever it names, and any
# physician who could have made it; it is kept (end_at set), and its access stops at once.
def care_team_section(pid: uuid.UUID | None) -> Select[CareRelationship]:
    """The statement of a patient's care relationships, newest first."""
    return (
        select(CareRelationship)
        .where(CareRelationship.patient_id == pid)
        .order_by(CareRelationship.start_at.desc())
    )


@guarded(AuditKind.PHI_READ, RT.CARE_TEAM, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[CareTeamView]:
    """The patient's care relationships, current and ended, newest first."""
    rows, fields = section(tx, patient_id, RT.CARE_TEAM, care_team_section(parse_id(patient_id)))
    versions = _care_versions(tx, rows, with_reason="reason" in fields)
    return [
        redact(CareTeamView, care_team_data(r, tx.now, *versions.get(r.id, (1, None))), fields) for r in rows
    ]


@guarded(AuditKind.PHI_LIST, RT.CARE_TEAM, targeted=False)
def worklist(tx: GuardedTx, /, *, practitioner_id: str) -> list[CareTeamView]:
    """A clinician's patients by care relationship (care team, referral), current ones only:
    their own list, bounded, counted as a list like the day list."""
    tx.require(Permission.DAY_LIST_READ)
    tx.check_scopes(RT.CARE_TEAM)
    me = own_worklist(tx, practitioner_id)
    now = tx.now
    rows = tx.session.execute(
        select(CareRelationship, Patient)
        .join(Patient, Patient.id == CareRelationship.patient_id)
        .where(
            CareRelationship.practitioner_id == me,
            CareRelationship.start_at <= now,
            or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > now),
            care.visible_filter(tx.ctx),
        )
        .order_by(CareRelationship.start_at.desc())
        .limit(SECTION_LIMIT)
    ).all()
    rels = tx.relationships_of([p for _r, p in rows])
    kept: list[tuple[CareRelationship, frozenset[str]]] = []
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    for relationship, patient in rows:
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.CARE_TEAM)
        if not fields:
            continue
        kept.append((relationship, fields))
        shown.append(patient.id)
        fields_shown |= fields
        tx.resource_ids.append(str(relationship.id))
    versions = _care_versions(tx, [r for r, _f in kept], with_reason=False)
    views = [
        redact(CareTeamView, care_team_data(r, now, *versions.get(r.id, (1, None))), fields)
        for r, fields in kept
    ]
    expose_worklist(tx, shown, rels, fields_shown, "care-team-worklist")
    return views


@guarded(AuditKind.PHI_READ, RT.CARE_TEAM, targeted=True)
def read(tx: GuardedTx, /, *, care_team_id: str) -> CareTeamView:
    row, fields = read_one(tx, RT.CARE_TEAM, care_team_id)
    version, reason = _care_versions(tx, [row], with_reason="reason" in fields).get(row.id, (1, None))
    return redact(CareTeamView, care_team_data(row, tx.now, version, reason), fields)


@guarded(AuditKind.PHI_CREATE, RT.CARE_TEAM, targeted=True)
def refer(tx: GuardedTx, /, *, data: CareRelationshipInput) -> CareTeamView:
    """Refer a patient in one's care to a colleague of the same facility: the colleague sees
    the chart from now until `end_at` (required, at most REFERRAL_MAX_DURATION)."""
    return _make_care(tx, data, Relationship.REFERRAL)


@guarded(AuditKind.PHI_CREATE, RT.CARE_TEAM, targeted=True)
def add_member(tx: GuardedTx, /, *, data: CareRelationshipInput) -> CareTeamView:
    """Add a colleague of the same facility (physician or nurse) to a patient's care team,
    until `end_at` (required, at most CARE_TEAM_MAX_DURATION; renewed by adding again)."""
    return _make_care(tx, data, Relationship.CARE_TEAM)


@guarded(AuditKind.PHI_UPDATE, RT.CARE_TEAM, targeted=True)
def end(tx: GuardedTx, /, *, care_team_id: str, expected_version: int | None = None) -> CareTeamView:
    """End a care relationship now (kept, end_at set): the access it gave stops at once.
    Idempotent: ending an ended one changes nothing. `expected_version` (If-Match): 412."""
    row, patient = tx.record_to_change(CareRelationship, care_team_id)
    me, account = tx.ctx.practitioner_id, tx.ctx.account_id
    if (me is not None and row.practitioner_id == me) or (account is not None and row.created_by == account):
        # Whoever it names, or whoever made it, may end it: ending only takes access away.
        tx.check_scopes(RT.CARE_TEAM)
        if not tx.relationships_of([patient]).get(patient.id):
            raise Refused("patient outside the actor's facilities or restricted", [patient.id])
        tx.reasons.append("ends a care relationship it names or made")
    else:
        tx.authorize(patient, RT.CARE_TEAM, write=True)
    version, reason = _care_versions(tx, [row], with_reason=True).get(row.id, (1, None))
    if expected_version is not None and expected_version != version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    tx.resource_ids.append(str(row.id))
    if row.end_at is not None and row.end_at <= tx.now:
        rels = tx.relationships_of([patient])
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.CARE_TEAM)
        tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.CARE_TEAM)
        tx.reasons.append("already ended: nothing changed")
        return redact(CareTeamView, care_team_data(row, tx.now, version, reason), fields)
    if version == 1 and not _care_versions(tx, [row], with_reason=False):
        # Made before relationships were versioned (seeded): keep its state as version 1.
        row_id = new_id()
        before = json.dumps(care_team_data(row, row.start_at, 1, None), default=str, sort_keys=True)
        tx.session.add(
            ResourceVersion(
                id=row_id,
                resource_type=RT.CARE_TEAM.value,
                resource_id=row.id,
                version_id=1,
                patient_id=patient.id,
                facility_id=patient.facility_id,
                recorded_at=row.start_at,
                author_id=row.created_by,
                action="create",
                snapshot_ct=tx.enc(before, patient.facility_id, "resource_versions", "snapshot", row_id),
            )
        )
    # Never after its start: a relationship that had not started yet ends unstarted.
    row.end_at = max(tx.now, row.start_at)
    tx.session.flush()
    tx.reasons.append(f"{row.kind} of Practitioner/{row.practitioner_id} ended")
    data = care_team_data(row, tx.now, version + 1, reason)
    return written(tx, patient, RT.CARE_TEAM, CareTeamView, data, version + 1, "update")
