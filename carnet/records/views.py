"""Clinical records as the gate shows them: the data of each record, before redaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from carnet.patients.models import CareRelationship, Consent
from carnet.phi.kernel import GuardedTx
from carnet.phi.schemas import DiagnosticReportView, NoteVersionView
from carnet.phi.steps import SECTION_LIMIT, received_shown, redact, sid
from carnet.records import beds
from carnet.records.models import ClinicalNote, Condition, DiagnosticReport, NoteVersion, Observation
from carnet.scheduling.models import Encounter


def encounter_data(e: Encounter, received: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "updated_at": e.updated_at,
        "patient_id": str(e.patient_id),
        "facility_id": str(e.facility_id),
        "kind": e.kind,
        "status": e.status,
        "start_at": e.start_at,
        "end_at": e.end_at,
        "location_id": sid(e.location_id),
        "attending_id": sid(e.attending_id),
        "version_id": e.version_id,
        "received": received,
        "bed_id": sid(e.bed_id),
        "beds": [
            {"bed_id": p.bed_id, "ward_id": p.ward_id, "start": p.start, "end": p.end}
            for p in beds.history_of(e.bed_history)
        ]
        or None,
    }


def observation_data(o: Observation, received: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(o.id),
        "updated_at": o.updated_at,
        "patient_id": str(o.patient_id),
        "category": o.category,
        "code": o.code,
        "display": o.display,
        "value_number": o.value_number,
        "unit": o.unit,
        "value_text": o.value_text,
        "effective_at": o.effective_at,
        "status": o.status,
        "version_id": o.version_id,
        "received": received,
        "order_id": sid(o.order_id),
        "reference_range": o.reference_range,
        "interpretation": o.interpretation,
    }


def condition_data(c: Condition, received: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "updated_at": c.updated_at,
        "patient_id": str(c.patient_id),
        "code": c.code,
        "display": c.display,
        "clinical_status": c.clinical_status,
        "verification_status": c.verification_status,
        "onset_at": c.onset_at,
        "recorded_by": sid(c.recorded_by),
        "version_id": c.version_id,
        "received": received,
    }


def care_team_data(
    r: CareRelationship, now: dt.datetime, version: int = 1, reason: str | None = None
) -> dict[str, Any]:
    ended = r.end_at is not None and r.end_at <= now
    return {
        "id": str(r.id),
        # No update time is stored: the relationship last changed when it started or ended.
        "updated_at": r.end_at if ended else r.start_at,
        "patient_id": str(r.patient_id),
        "facility_id": str(r.facility_id),
        "practitioner_id": str(r.practitioner_id),
        "kind": r.kind,
        "status": "active" if r.start_at <= now and not ended else "inactive",
        "start_at": r.start_at,
        "end_at": r.end_at,
        "version_id": version,
        "reason": reason,
    }


def consent_data(c: Consent) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "updated_at": c.updated_at,
        "patient_id": str(c.patient_id),
        "facility_id": str(c.facility_id),
        "kind": c.kind,
        "status": c.status,
        "recorded_by": sid(c.recorded_by),
        "recorded_at": c.recorded_at,
        "withdrawn_by": sid(c.withdrawn_by),
        "withdrawn_at": c.withdrawn_at,
        "version_id": c.version_id,
    }


# -- notes ----------------------------------------------------------------------------------
def note_data(tx: GuardedTx, note: ClinicalNote, *, with_text: bool) -> dict[str, Any]:
    versions = None
    if with_text:
        versions = [
            NoteVersionView(
                version=v.version,
                text=tx.dec(v.text_ct, "note_versions", "text", v.id) or "",
                author_id=str(v.author_id),
                recorded_at=v.recorded_at,
                amendment_reason=v.amendment_reason,
            )
            for v in tx.session.scalars(
                select(NoteVersion).where(NoteVersion.note_id == note.id).order_by(NoteVersion.version)
            )
        ]
    return {
        "id": str(note.id),
        "updated_at": note.updated_at,
        "patient_id": str(note.patient_id),
        "encounter_id": sid(note.encounter_id),
        "author_id": str(note.author_id),
        "kind": note.kind,
        "title": note.title,
        "status": note.status,
        "version_id": note.version_id,
        "versions": versions,
    }


# -- lab reports ----------------------------------------------------------------------------
def report_views(
    tx: GuardedTx, rows: Sequence[DiagnosticReport], fields: frozenset[str]
) -> list[DiagnosticReportView]:
    results: dict[uuid.UUID, list[str]] = {}
    if "result_ids" in fields and rows:
        for report_id, observation_id in tx.session.execute(
            select(Observation.report_id, Observation.id)
            .where(Observation.report_id.in_([r.id for r in rows]))
            .order_by(Observation.effective_at, Observation.id)
            .limit(SECTION_LIMIT * 10)
        ):
            if report_id is not None:
                results.setdefault(report_id, []).append(str(observation_id))
    views = []
    for r in rows:
        conclusion = (
            tx.dec(r.conclusion_ct, "diagnostic_reports", "conclusion", r.id)
            if "conclusion" in fields
            else None
        )
        data = {
            "id": str(r.id),
            "updated_at": r.updated_at,
            "patient_id": str(r.patient_id),
            "facility_id": str(r.facility_id),
            "code": r.code,
            "display": r.display,
            "status": r.status,
            "issued_at": r.issued_at,
            "conclusion": conclusion,
            "performer_id": sid(r.performer_id),
            "result_ids": results.get(r.id, []),
            "version_id": r.version_id,
            "order_id": sid(r.order_id),
            "received": received_shown(tx, r, fields),
        }
        views.append(redact(DiagnosticReportView, data, fields))
    return views
