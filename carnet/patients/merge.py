"""Identity vigilance: two records of one person made one (merge), and its reversal (unmerge).
Run only by the gate kernel (carnet.phi.kernel)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select, update

from carnet.access.permissions import Permission
from carnet.access.policy import PATIENT_ALL
from carnet.audit.interfaces import AuditKind
from carnet.billing.models import Invoice
from carnet.coverage.models import CardReading, Coverage
from carnet.detection.interfaces import Channel
from carnet.identity.models import Account
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import parse_id
from carnet.patients.models import CareRelationship, Consent, Patient, ResourceVersion
from carnet.patients.received import follow, kept_state
from carnet.patients.rules import identity_lock
from carnet.patients.views import (
    BI_COLUMNS,
    PATIENT_ENCRYPTED,
    patient_columns,
    patient_data,
    patient_view,
    with_replaces,
)
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import PatientView
from carnet.prescriptions.models import Prescription
from carnet.records.consents import consent_follows_flag
from carnet.records.models import Allergy, ClinicalNote, Condition, DiagnosticReport, Observation
from carnet.scheduling.models import Appointment, Encounter

# What a merge re-files from the duplicate to the record kept: every table with a patient_id
# that holds the patient's care, billing or privacy records. Not moved, on purpose: audit events,
# exposures and break-the-glass accesses (what happened, to whom), a canary's marker, export
# requests (a decision taken on a list), and resource versions (history, under whom it was written).
MERGED_RECORDS: tuple[tuple[str, Any], ...] = (
    (RT.APPOINTMENT.value, Appointment),
    (RT.ENCOUNTER.value, Encounter),
    (RT.NOTE.value, ClinicalNote),
    (RT.PRESCRIPTION.value, Prescription),
    (RT.ALLERGY.value, Allergy),
    (RT.CONDITION.value, Condition),
    (RT.OBSERVATION.value, Observation),
    (RT.DIAGNOSTIC_REPORT.value, DiagnosticReport),
    (RT.COVERAGE.value, Coverage),
    (RT.CARD_READING.value, CardReading),
    (RT.INVOICE.value, Invoice),
    (RT.CARE_TEAM.value, CareRelationship),
    (RT.CONSENT.value, Consent),
)


MERGE_FILLS = frozenset({"ins", "address", "phone", "email"})  # taken from the duplicate if missing
MERGE_REASON_MIN = 5
MERGE_REASON_MAX = 500


# -- identity vigilance: two records of one person made one ---------------------------------
@guarded(AuditKind.PHI_MERGE, RT.PATIENT, targeted=True)
def merge(
    tx: GuardedTx,
    /,
    *,
    source_id: str,
    target_id: str,
    source_version: int,
    target_version: int,
    reason: str,
) -> PatientView:
    """Merge a duplicate (`source`) into the record kept (`target`), all in one transaction.

    Both are active records of one facility, each at the version the clerk read (If-Match).
    The source becomes inactive with `merged_into_id`; every record filed under it (see
    MERGED_RECORDS) is re-filed under the target; the target takes the source's INS and
    contact details where it has none. Each patient gets a new version; the source's, the
    merge record, lists every record moved (so the merge can be reversed exactly), and the
    moved records keep their versions, which still show under whom they were written.
    """
    tx.require(Permission.PATIENT_MERGE)
    tx.check_scopes(RT.PATIENT)
    source = tx.patient(source_id)
    # A merged source is judged below, after its version: a stale merge is 412 like any other.
    tx.authorize(source, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True)
    identity_lock(tx, source.facility_id)
    # Both rows are held before anything moves (issue #9): a write filing a record under
    # either one waits for the merge, then sees it and is refused (`tx.patient_for_write`);
    # one already running makes the merge wait for its commit, and its record moves too.
    # FOR NO KEY UPDATE, not FOR UPDATE: the foreign-key checks (KEY SHARE) of an
    # amendment holding a record row the merge waits for must not wait on the merge.
    # Read as it stands now that no other identity change runs.
    tx.session.refresh(source, with_for_update={"key_share": True})
    target = tx.patient_for_write(target_id, exclusive=True)
    if target.id == source.id:
        raise InvalidInput("a patient cannot be merged into itself: name two different records")
    tx.authorize(target, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True)
    reason = " ".join((reason or "").split())
    if not MERGE_REASON_MIN <= len(reason) <= MERGE_REASON_MAX:
        raise InvalidInput(f"a merge needs a reason ({MERGE_REASON_MIN} to {MERGE_REASON_MAX} characters)")
    for patient, expected in ((source, source_version), (target, target_version)):
        if patient.version_id != expected:
            raise Conflict(f"Patient/{patient.id} was changed by someone else: reload and try again")
    if source.facility_id != target.facility_id:
        raise InvalidInput("the two records belong to different facilities: a merge stays in one facility")
    for patient in (source, target):
        if not patient.active or patient.merged_into_id is not None:
            raise InvalidInput(f"Patient/{patient.id} is inactive (merged or deleted): merge active records")
    in_progress = tx.session.scalar(
        select(func.count())
        .select_from(Encounter)
        .where(Encounter.patient_id.in_([source.id, target.id]), Encounter.status == "in-progress")
    )
    if (in_progress or 0) > 1:
        raise InvalidInput(
            "both records have a stay in progress: discharge one of them (or mark it entered in"
            " error) first, a patient is in one stay at a time"
        )
    accounts = tx.session.scalar(
        select(func.count()).select_from(Account).where(Account.patient_id.in_([source.id, target.id]))
    )
    if (accounts or 0) > 1:
        raise InvalidInput("both records have a patient portal account: close one of them first")
    # Re-file every record of the duplicate under the record kept.
    moved: dict[str, list[str]] = {}
    for name, model in MERGED_RECORDS:
        ids = tx.session.scalars(
            update(model)
            .where(model.patient_id == source.id)
            .values(patient_id=target.id)
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).all()
        if ids:
            moved[name] = sorted(str(i) for i in ids)
    portal = tx.session.scalars(
        update(Account)
        .where(Account.patient_id == source.id)
        .values(patient_id=target.id)
        .returning(Account.id)
        .execution_options(synchronize_session=False)
    ).all()
    # The record kept takes what it lacks: the INS, contact details, a designated physician,
    # and the stricter privacy choice (an opposition of either record holds for the person).
    taken = {
        name: tx.dec(getattr(source, column), "patients", name, source.id)
        for name, (column, _kind) in PATIENT_ENCRYPTED.items()
        if name in MERGE_FILLS and getattr(source, column) is not None and getattr(target, column) is None
    }
    values = patient_columns(tx, target.facility_id, target.id, taken)
    if target.designated_physician_id is None and source.designated_physician_id is not None:
        values["designated_physician_id"] = source.designated_physician_id
    if source.opposes_other_facilities and not target.opposes_other_facilities:
        values["opposes_other_facilities"] = True
    kept = kept_state(tx, source), kept_state(tx, target)
    tx.bump(Patient, source, source_version, active=False, merged_into_id=target.id)
    tx.bump(Patient, target, target_version, **values)
    # Kept as received: the duplicate's links and status as carnet renders them; the record kept
    # its own resource, with what it took from the duplicate.
    follow(tx, source, kept[0])
    follow(tx, target, kept[1])
    everything = PATIENT_ALL
    merge = {
        "at": tx.now.isoformat(),
        "reason": reason,
        "source": str(source.id),
        "target": str(target.id),
    }
    source_data = patient_data(tx, source, everything)
    tx.snapshot(
        RT.PATIENT,
        source.id,
        source.version_id,
        source,
        "update",
        source_data
        | {
            "merge": merge
            | {
                "moved": moved,
                "portal_account": [str(a) for a in portal],
                "took": sorted(taken) + sorted(k for k in values if k == "designated_physician_id"),
            }
        },
    )
    replaces = [
        str(r)
        for r in tx.session.scalars(
            select(Patient.id).where(Patient.merged_into_id == target.id).order_by(Patient.id).limit(100)
        )
    ]
    target_data = patient_data(tx, target, everything) | {"replaces": replaces}
    tx.snapshot(RT.PATIENT, target.id, target.version_id, target, "update", target_data | {"merge": merge})
    if values.get("opposes_other_facilities"):
        consent_follows_flag(tx, target)
    tx.resource_ids.extend(i for ids in moved.values() for i in ids)
    total = sum(len(ids) for ids in moved.values())
    tx.reasons.append(f"merge of a duplicate: {total} records moved")
    return _both_charts(tx, source, target, shown=target)


@guarded(AuditKind.PHI_UNMERGE, RT.PATIENT, targeted=True)
def unmerge(
    tx: GuardedTx,
    /,
    *,
    source_id: str,
    target_id: str,
    source_version: int,
    target_version: int,
    reason: str,
) -> PatientView:
    """Reverse a merge done in error, from its merge record (the source's version written by
    `merge_patients`): the records it moved go back to the source, the source is active
    again, and the target gives back the fields it took (where it still holds the source's
    value). Records written on the target since the merge stay there; an opposition to other
    facilities taken by the target stays (withdrawing it is the patient's decision).
    Both records are stale-checked (If-Match); each gets a new version."""
    tx.require(Permission.PATIENT_MERGE)
    tx.check_scopes(RT.PATIENT)
    source = tx.patient(source_id)
    tx.authorize(source, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True)
    identity_lock(tx, source.facility_id)
    # Locked as a merge locks them (see merge_patients), before anything moves back.
    tx.session.refresh(source, with_for_update={"key_share": True})
    if source.merged_into_id is None:
        raise InvalidInput(f"Patient/{source.id} is not a merged record: there is nothing to reverse")
    target = tx.patient_for_write(source.merged_into_id, exclusive=True)
    tx.authorize(target, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE)
    if parse_id(target_id) != target.id:
        raise InvalidInput("the target is not the record this patient was merged into")
    reason = " ".join((reason or "").split())
    if not MERGE_REASON_MIN <= len(reason) <= MERGE_REASON_MAX:
        raise InvalidInput(
            f"reversing a merge needs a reason ({MERGE_REASON_MIN} to {MERGE_REASON_MAX} characters)"
        )
    for patient, expected in ((source, source_version), (target, target_version)):
        if patient.version_id != expected:
            raise Conflict(f"Patient/{patient.id} was changed by someone else: reload and try again")
    record = tx.session.scalar(
        select(ResourceVersion).where(
            ResourceVersion.resource_type == RT.PATIENT.value,
            ResourceVersion.resource_id == source.id,
            ResourceVersion.version_id == source.version_id,
        )
    )
    raw = tx.dec(record.snapshot_ct, "resource_versions", "snapshot", record.id) if record else None
    merge = json.loads(raw or "{}").get("merge") or {}
    if merge.get("target") != str(target.id) or not isinstance(merge.get("moved"), dict):
        raise InvalidInput("the merge record of this patient is missing: it cannot be reversed here")
    moved_back: dict[str, list[str]] = {}
    for name, model in MERGED_RECORDS:
        ids = [i for i in (parse_id(v) for v in merge["moved"].get(name) or []) if i is not None]
        if not ids:
            continue
        back = tx.session.scalars(
            update(model)
            .where(model.id.in_(ids), model.patient_id == target.id)
            .values(patient_id=source.id)
            .returning(model.id)
            .execution_options(synchronize_session=False)
        ).all()
        if back:
            moved_back[name] = sorted(str(i) for i in back)
    accounts = [i for i in (parse_id(v) for v in merge.get("portal_account") or []) if i is not None]
    if accounts:
        tx.session.execute(
            update(Account)
            .where(Account.id.in_(accounts), Account.patient_id == target.id)
            .values(patient_id=source.id)
            .execution_options(synchronize_session=False)
        )
    # Give back what the target took, where it still holds the source's value.
    values: dict[str, Any] = {}
    for name in merge.get("took") or []:
        if name == "designated_physician_id":
            if target.designated_physician_id == source.designated_physician_id:
                values["designated_physician_id"] = None
            continue
        if name not in MERGE_FILLS:
            continue
        column, kind = PATIENT_ENCRYPTED[name]
        mine = tx.dec(getattr(target, column), "patients", name, target.id)
        theirs = tx.dec(getattr(source, column), "patients", name, source.id)
        if mine is not None and mine == theirs:
            values[column] = None
            if kind is not None:
                values[BI_COLUMNS[kind]] = None
    kept = kept_state(tx, source), kept_state(tx, target)
    tx.bump(Patient, source, source_version, active=True, merged_into_id=None)
    tx.bump(Patient, target, target_version, **values)
    follow(tx, source, kept[0])
    follow(tx, target, kept[1])
    everything = PATIENT_ALL
    unmerge = {
        "at": tx.now.isoformat(),
        "reason": reason,
        "source": str(source.id),
        "target": str(target.id),
    }
    tx.snapshot(
        RT.PATIENT,
        source.id,
        source.version_id,
        source,
        "update",
        patient_data(tx, source, everything) | {"unmerge": unmerge | {"moved_back": moved_back}},
    )
    tx.snapshot(
        RT.PATIENT,
        target.id,
        target.version_id,
        target,
        "update",
        patient_data(tx, target, everything) | {"unmerge": unmerge},
    )
    tx.resource_ids.extend(i for ids in moved_back.values() for i in ids)
    total = sum(len(ids) for ids in moved_back.values())
    tx.reasons.append(f"reversal of a merge: {total} records moved back")
    return _both_charts(tx, source, target, shown=source)


def _both_charts(tx: GuardedTx, source: Patient, target: Patient, *, shown: Patient) -> PatientView:
    """A merge or its reversal: both charts were opened to decide it, one exposure each; the
    answer is the record `shown`, with the duplicates it now replaces."""
    tx.relationships.clear()
    rels = tx.relationships_of([source, target])
    for patient in (source, target):
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
        tx.expose([patient.id], Channel.CHART, rels, fields)
    fields = tx.read_fields(rels.get(shown.id, frozenset()), RT.PATIENT)
    return with_replaces(tx, shown, patient_view(tx, shown, fields))
