"""History and provenance: every stored version of a record, and who wrote which; run only by
the gate kernel."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence

from sqlalchemy import and_, or_, select

from carnet.access.actor import Actor
from carnet.access.permissions import Permission
from carnet.access.policy import ResourceType
from carnet.audit.interfaces import AuditKind
from carnet.detection.interfaces import Channel
from carnet.identity.models import Account
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import parse_id
from carnet.patients.models import ResourceVersion
from carnet.patients.views import merged_into_this
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import ProvenanceView, VersionView
from carnet.phi.steps import CONDITION_CATEGORY, HISTORY_LIMIT, sid


def _token_reads(actor: Actor, resource_type: str) -> bool:
    try:
        require_scope(actor, resource_type=resource_type, action="read")
    except Forbidden:
        return False
    return True


@guarded(AuditKind.PHI_HISTORY, RT.PATIENT, targeted=True)
def history(tx: GuardedTx, /, *, resource_type: str, resource_id: str) -> list[VersionView]:
    """Every stored version of one resource, each redacted like a read of that resource."""
    tx.require(Permission.HISTORY_READ)
    try:
        kind = ResourceType(resource_type)
    except ValueError:
        raise Refused("unknown resource type") from None
    tx.resource_type = kind.value
    rid = parse_id(resource_id)
    if rid is None:
        raise NotFound(NOT_FOUND)
    versions = list(
        tx.session.scalars(
            select(ResourceVersion)
            .where(ResourceVersion.resource_type == kind.value, ResourceVersion.resource_id == rid)
            .order_by(ResourceVersion.version_id)
            .limit(HISTORY_LIMIT)
        )
    )
    if not versions:
        raise NotFound(NOT_FOUND)
    patient = tx.record_owner(versions[0].patient_id, kind)
    decision = tx.authorize(patient, kind)
    limit = tx.category_limit(kind)
    if limit is not None:
        # A granular token: every version must be of a category it names (or it looks missing).
        for v in versions:
            snapshot = json.loads(tx.dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}")
            tx.check_categories(kind, [str(snapshot.get("category") or CONDITION_CATEGORY)])
    tx.resource_ids.append(str(rid))
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, decision.fields, resource=kind)
    out = []
    for v in versions:
        raw = tx.dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}"
        data = {k: val for k, val in json.loads(raw).items() if k in decision.fields}
        out.append(
            VersionView(
                resource_type=v.resource_type,
                resource_id=str(v.resource_id),
                version_id=v.version_id,
                recorded_at=v.recorded_at,
                author_id=sid(v.author_id),
                action=v.action,
                data=data,
            )
        )
    return out


@guarded(AuditKind.PHI_HISTORY, RT.PATIENT, targeted=True)
def history_of_patient(
    tx: GuardedTx,
    /,
    *,
    patient_id: str,
    resource_types: Sequence[str],
    since: dt.datetime | None = None,
    count: int,
    page: int = 1,
) -> tuple[list[VersionView], bool]:
    """The stored versions of one patient's resources of `resource_types`, newest first, at
    most `count` from page `page` (and whether there are more; HISTORY_LIMIT in all): FHIR
    type-level and system-level `_history`, scoped like a search (one patient, no browsing).
    Each type only if the actor may read it for this patient, each version redacted like a read
    of it; the patient counts as exposed."""
    tx.require(Permission.HISTORY_READ)
    patient = tx.patient(patient_id)
    tx.authorize(patient, RT.PATIENT)
    rels = tx.relationships_of([patient])
    fields: dict[str, frozenset[str]] = {}
    for name in resource_types:
        try:
            kind = ResourceType(name)
        except ValueError:
            continue  # a type carnet keeps no versions of has no history
        opened = tx.read_fields(rels.get(patient.id, frozenset()), kind)
        if opened and (tx.actor.scopes is None or _token_reads(tx.actor, kind.value)):
            fields[kind.value] = opened
    if len(resource_types) == 1:
        tx.resource_type = resource_types[0][:40]
    versions: list[ResourceVersion] = []
    start = (page - 1) * count
    if fields and start < HISTORY_LIMIT:
        query = select(ResourceVersion).where(
            ResourceVersion.patient_id == patient.id, ResourceVersion.resource_type.in_(sorted(fields))
        )
        if since is not None:
            query = query.where(ResourceVersion.recorded_at >= since)
        versions = list(
            tx.session.scalars(
                query.order_by(ResourceVersion.recorded_at.desc(), ResourceVersion.version_id.desc())
                .offset(start)
                .limit(min(count, HISTORY_LIMIT - start) + 1)
            )
        )
    more = len(versions) > count and start + count < HISTORY_LIMIT
    versions = versions[:count]
    tx.resource_ids.extend(str(v.resource_id) for v in versions)
    tx.query = f"history;types={','.join(sorted(fields))[:200]}"
    shown = frozenset().union(*(fields[v.resource_type] for v in versions)) if versions else frozenset()
    tx.expose([patient.id], Channel.CHART, rels, shown or frozenset({"patient_id"}), resource=RT.PATIENT)
    out = []
    for v in versions:
        raw = tx.dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}"
        opened = fields[v.resource_type]
        out.append(
            VersionView(
                resource_type=v.resource_type,
                resource_id=str(v.resource_id),
                version_id=v.version_id,
                recorded_at=v.recorded_at,
                author_id=sid(v.author_id),
                action=v.action,
                data={k: val for k, val in json.loads(raw).items() if k in opened},
            )
        )
    return out, more


# -- provenance: who wrote which version, from the versioned history ------------------------
def _provenance(tx: GuardedTx, versions: Sequence[ResourceVersion]) -> list[ProvenanceView]:
    """Authorized like a read of the target; shows authors and times, never content."""
    tx.require(Permission.HISTORY_READ)
    kind = ResourceType(versions[0].resource_type)
    patient = tx.record_owner(versions[0].patient_id, kind)
    tx.authorize(patient, kind)
    if tx.category_limit(kind) is not None:
        raise Refused("a granular token does not see the provenance of its type")
    tx.resource_ids.extend(str(v.id) for v in versions)
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, {"patient_id"}, resource=kind)
    return _provenance_views(tx, versions)


def _provenance_views(tx: GuardedTx, versions: Sequence[ResourceVersion]) -> list[ProvenanceView]:
    authors = {v.author_id for v in versions if v.author_id is not None}
    practitioners: dict[uuid.UUID, uuid.UUID | None] = {}
    if authors:
        practitioners = {
            account: practitioner
            for account, practitioner in tx.session.execute(
                select(Account.id, Account.practitioner_id).where(Account.id.in_(authors))
            )
        }
    return [
        ProvenanceView(
            id=str(v.id),
            target_type=v.resource_type,
            target_id=str(v.resource_id),
            target_version=v.version_id,
            patient_id=str(v.patient_id),
            recorded_at=v.recorded_at,
            action=v.action,
            author_account_id=sid(v.author_id),
            author_practitioner_id=sid(practitioners.get(v.author_id)) if v.author_id else None,
        )
        for v in versions
    ]


@guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
def list_for_target(tx: GuardedTx, /, *, target_type: str, target_id: str) -> list[ProvenanceView]:
    """The provenance of every stored version of one resource (FHIR Provenance?target=)."""
    tx.resource_type = "Provenance"
    try:
        ResourceType(target_type)
    except ValueError:
        raise InvalidInput("unknown target resource type") from None
    rid = parse_id(target_id)
    if rid is None:
        raise NotFound(NOT_FOUND)
    versions = list(
        tx.session.scalars(
            select(ResourceVersion)
            .where(ResourceVersion.resource_type == target_type, ResourceVersion.resource_id == rid)
            .order_by(ResourceVersion.version_id)
            .limit(HISTORY_LIMIT)
        )
    )
    if not versions:
        raise NotFound(NOT_FOUND)
    return _provenance(tx, versions)


@guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[ProvenanceView]:
    """Who wrote what in one patient's record (FHIR Provenance?patient=), newest first:
    only the versions of the resource types the actor may read for this patient."""
    tx.resource_type = "Provenance"
    tx.require(Permission.HISTORY_READ)
    patient = tx.patient(patient_id)
    tx.authorize(patient, RT.PATIENT)
    rels = tx.relationships_of([patient])
    readable = [t.value for t in ResourceType if tx.read_fields(rels.get(patient.id, frozenset()), t)]
    if tx.actor.scopes is not None:  # a token: only the types its scopes read
        readable = [t for t in readable if _token_reads(tx.actor, t)]
        readable = [t for t in readable if tx.category_limit(ResourceType(t)) is None]
    # The records of duplicates merged into this one moved here; their earlier versions
    # still name the duplicate they were written under.
    replaced = merged_into_this(tx, patient.id)
    whose = ResourceVersion.patient_id == patient.id
    if replaced:
        moved = and_(
            ResourceVersion.patient_id.in_(replaced), ResourceVersion.resource_type != RT.PATIENT.value
        )
        whose = or_(whose, moved)
    versions = list(
        tx.session.scalars(
            select(ResourceVersion)
            .where(whose, ResourceVersion.resource_type.in_(readable))
            .order_by(ResourceVersion.recorded_at.desc(), ResourceVersion.version_id.desc())
            .limit(HISTORY_LIMIT)
        )
    )
    tx.resource_ids.extend(str(v.id) for v in versions)
    tx.expose([patient.id], Channel.CHART, rels, {"patient_id"}, resource=RT.PATIENT)
    return _provenance_views(tx, versions)


@guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
def read(tx: GuardedTx, /, *, provenance_id: str) -> ProvenanceView:
    tx.resource_type = "Provenance"
    vid = parse_id(provenance_id)
    version = tx.session.get(ResourceVersion, vid) if vid else None
    if version is None:
        raise NotFound(NOT_FOUND)
    return _provenance(tx, [version])[0]
