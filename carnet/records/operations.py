"""Clinical record operations (run only by the gate kernel, carnet.phi.kernel): notes,
observations, lab reports, conditions. Every write is versioned; nothing is overwritten."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, cast

from sqlalchemy import Select, Table, select

from carnet.audit.interfaces import AuditKind
from carnet.db.prepared import PreparedInsert
from carnet.detection.interfaces import Channel
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Patient
from carnet.phi.kernel import RT, VERSION_ROWS, GuardedTx, guarded
from carnet.phi.schemas import (
    CONDITION_CLINICAL_STATUSES,
    CONDITION_VERIFICATION_STATUSES,
    ConditionInput,
    ConditionView,
    DiagnosticReportInput,
    DiagnosticReportView,
    LabResultsView,
    NoteView,
    ObservationInput,
    ObservationView,
)
from carnet.phi.steps import (
    first_version,
    patient_stay,
    read_one,
    received_json,
    received_of,
    received_shown,
    redact,
    result_author,
    section,
    sid,
    writing_practitioner,
    written,
)
from carnet.records import orders, rules
from carnet.records.models import (
    ClinicalNote,
    Condition,
    DiagnosticReport,
    NoteVersion,
    Observation,
    ServiceRequest,
)
from carnet.records.views import condition_data, note_data, observation_data, report_views


def notes_section(pid: uuid.UUID | None) -> Select[ClinicalNote]:
    """The statement of a patient's notes section (the gate's fast read sends it ahead)."""
    return select(ClinicalNote).where(ClinicalNote.patient_id == pid).order_by(ClinicalNote.created_at)


@guarded(AuditKind.PHI_READ, RT.NOTE, targeted=True)
def list_notes(tx: GuardedTx, /, *, patient_id: str) -> list[NoteView]:
    """Clinical notes with every version of their text (amendments never overwrite)."""
    rows, fields = section(tx, patient_id, RT.NOTE, notes_section(parse_id(patient_id)))
    return [redact(NoteView, note_data(tx, r, with_text="versions" in fields), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.NOTE, targeted=True)
def read_note(tx: GuardedTx, /, *, note_id: str) -> NoteView:
    row, fields = read_one(tx, RT.NOTE, note_id)
    return redact(NoteView, note_data(tx, row, with_text="versions" in fields), fields)


def _written_note(tx: GuardedTx, patient: Patient, note: ClinicalNote, action: str) -> NoteView:
    tx.relationships.clear()  # the write may have made (or ended) a relationship
    data = note_data(tx, note, with_text=True)
    snapshot = dict(data, versions=[v.model_dump() for v in data["versions"][-1:]])
    tx.snapshot(RT.NOTE, note.id, note.version_id, patient, action, snapshot)
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.NOTE)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.NOTE)
    return redact(NoteView, data, fields)


def _add_note_version(
    tx: GuardedTx, note: ClinicalNote, version: int, text: str, author: uuid.UUID, reason: str | None
) -> None:
    text = text.strip()
    if not text or len(text) > 100_000:
        raise InvalidInput("a note needs a text (at most 100,000 characters)")
    version_id = new_id()
    tx.session.add(
        NoteVersion(
            id=version_id,
            note_id=note.id,
            version=version,
            text_ct=tx.enc(text, note.facility_id, "note_versions", "text", version_id),
            author_id=author,
            recorded_at=tx.now,
            amendment_reason=reason,
        )
    )


@guarded(AuditKind.PHI_CREATE, RT.NOTE, targeted=True)
def write_note(
    tx: GuardedTx,
    /,
    *,
    patient_id: str,
    kind: str,
    title: str,
    text: str,
    encounter_id: str | None = None,
) -> NoteView:
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(patient_id)
    tx.authorize(patient, RT.NOTE, write=True)
    if not kind.strip() or len(kind) > 40 or not title.strip() or len(title) > 200:
        raise InvalidInput("a note needs a kind (LOINC code) and a title (at most 200 characters)")
    encounter = patient_stay(tx, encounter_id, patient)
    note = ClinicalNote(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        encounter_id=encounter,
        author_id=author,
        kind=kind.strip(),
        title=title.strip(),
        status="current",
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(note)
    tx.session.flush()
    _add_note_version(tx, note, 1, text, author, None)
    tx.session.flush()
    return _written_note(tx, patient, note, "create")


AMEND_REFUSED = "only the note's author or a physician of the care team amends it: add an addendum"


@guarded(AuditKind.PHI_UPDATE, RT.NOTE, targeted=True)
def amend_note(tx: GuardedTx, /, *, note_id: str, expected_version: int, text: str, reason: str) -> NoteView:
    """Amend a note: a new version of its text; earlier versions stay readable."""
    author = writing_practitioner(tx)
    note, patient = tx.record_to_change(ClinicalNote, note_id)
    tx.authorize(patient, RT.NOTE, write=True)
    if not rules.may_amend_note(
        author_id=note.author_id,
        practitioner_id=author,
        roles=tx.ctx.roles,
        relationships=tx.relationships_of([patient]).get(patient.id, frozenset()),
    ):
        raise Forbidden(AMEND_REFUSED)
    if not reason.strip() or len(reason) > 500:
        raise InvalidInput("an amendment needs a reason (at most 500 characters)")
    tx.bump(ClinicalNote, note, expected_version)
    _add_note_version(tx, note, note.version_id, text, author, reason.strip())
    tx.session.flush()
    return _written_note(tx, patient, note, "update")


def observations_section(pid: uuid.UUID | None) -> Select[Observation]:
    """The statement of a patient's Observations section, newest first."""
    return select(Observation).where(Observation.patient_id == pid).order_by(Observation.effective_at.desc())


@guarded(AuditKind.PHI_READ, RT.OBSERVATION, targeted=True)
def list_observations(tx: GuardedTx, /, *, patient_id: str) -> list[ObservationView]:
    rows, fields = section(tx, patient_id, RT.OBSERVATION, observations_section(parse_id(patient_id)))
    return [
        redact(
            ObservationView,
            {
                "id": str(r.id),
                "updated_at": r.updated_at,
                "patient_id": str(r.patient_id),
                "category": r.category,
                "code": r.code,
                "display": r.display,
                "value_number": r.value_number,
                "unit": r.unit,
                "value_text": r.value_text,
                "effective_at": r.effective_at,
                "status": r.status,
                "received": received_shown(tx, r, fields),
                "order_id": sid(r.order_id),
                "reference_range": r.reference_range,
                "interpretation": r.interpretation,
            },
            fields,
        )
        for r in rows
    ]


@guarded(AuditKind.PHI_READ, RT.OBSERVATION, targeted=True)
def read_observation(tx: GuardedTx, /, *, observation_id: str) -> ObservationView:
    row, fields = read_one(tx, RT.OBSERVATION, observation_id)
    received = received_shown(tx, row, fields)
    return redact(ObservationView, observation_data(row, received), fields)


# -- observations and lab reports -----------------------------------------------------------
@guarded(AuditKind.PHI_CREATE, RT.OBSERVATION, targeted=True)
def record_observation(tx: GuardedTx, /, *, data: ObservationInput) -> ObservationView:
    """A vital sign or a lab result, by a practitioner in the patient's care."""
    author = result_author(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.OBSERVATION, write=True)
    # A received resource may carry its value in a form the columns do not hold (kept whole).
    if (data.value_number is not None and data.value_text is not None) or (
        data.received is None and data.value_number is None and data.value_text is None
    ):
        raise InvalidInput("an Observation has one value: a number (with its unit) or a text")
    if data.effective_at.tzinfo is None or data.effective_at > tx.now + dt.timedelta(minutes=5):
        raise InvalidInput("an Observation's time has a time zone and is not in the future")
    observation_id = new_id()
    encounter_id = patient_stay(tx, data.encounter_id, patient)
    order = orders.patient_order(tx, data.order_id, patient)
    received = None
    if data.received is not None:
        rewritten = {"subject": f"Patient/{patient.id}"}
        if encounter_id is not None:
            rewritten["encounter"] = f"Encounter/{encounter_id}"
        received = received_json(tx, data.received, patient, rewritten)
    observation = Observation(
        id=observation_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        encounter_id=encounter_id,
        report_id=None,
        category=data.category,
        code=data.code,
        display=data.display,
        value_number=data.value_number,
        unit=data.unit,
        value_text=data.value_text,
        effective_at=data.effective_at,
        status=data.status,
        performer_id=author,
        received_ct=tx.enc(received, patient.facility_id, "observations", "received", observation_id),
        order_id=order.id if order is not None else None,
        reference_range=data.reference_range,
        interpretation=data.interpretation,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(observation)
    tx.session.flush()
    kept = None if received is None else dict(json.loads(received))
    data_out = observation_data(observation, kept)
    return written(tx, patient, RT.OBSERVATION, ObservationView, data_out, 1, "create")


@guarded(AuditKind.PHI_UPDATE, RT.OBSERVATION, targeted=True)
def amend_observation(
    tx: GuardedTx,
    /,
    *,
    observation_id: str,
    expected_version: int,
    status: str,
    value_number: float | None = None,
    unit: str | None = None,
    value_text: str | None = None,
    reference_range: str | None = None,
    interpretation: str | None = None,
) -> ObservationView:
    """Correct a vital sign or a lab result (status amended or corrected, a new value) or mark
    it entered-in-error (kept, value unchanged). If-Match on the version; every earlier
    version stays in the history, with its author and time."""
    writing_practitioner(tx)
    row, patient = tx.record_to_change(Observation, observation_id)
    tx.authorize(patient, RT.OBSERVATION, write=True)
    if row.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if row.status == "entered-in-error":
        raise Conflict("this Observation was entered in error: record a new one")
    values: dict[str, Any]
    if status == "entered-in-error":
        values = {"status": status}
    elif status in ("amended", "corrected"):
        if (value_number is None) == (value_text is None):
            raise InvalidInput("an Observation has one value: a number (with its unit) or a text")
        new_unit = unit if value_number is not None else None
        if (value_number, new_unit, value_text) == (row.value_number, row.unit, row.value_text):
            raise InvalidInput("a correction changes the value")
        values = {
            "status": status,
            "value_number": value_number,
            "unit": new_unit,
            "value_text": value_text,
        }
        # The laboratory's range and flag follow its corrected value (kept when not re-sent).
        if reference_range is not None:
            values["reference_range"] = reference_range[:60]
        if interpretation is not None:
            values["interpretation"] = interpretation[:10]
    else:
        raise InvalidInput(
            "an Observation is corrected (status amended or corrected) or marked entered-in-error"
        )
    stored = received_of(tx, row)
    first_version(tx, RT.OBSERVATION, row, patient, observation_data(row, stored))
    if stored is not None:
        # The resource as received follows the correction: its status, and its value replaced.
        stored["status"] = status
        if status != "entered-in-error":
            for key in [k for k in stored if k.startswith("value")]:
                del stored[key]
            if value_number is not None:
                stored["valueQuantity"] = {
                    k: v for k, v in {"value": value_number, "unit": values["unit"]}.items() if v is not None
                }
            else:
                stored["valueString"] = value_text
        text = json.dumps(stored, ensure_ascii=False, sort_keys=True)
        values["received_ct"] = tx.enc(text, patient.facility_id, "observations", "received", row.id)
    tx.bump(Observation, row, expected_version, **values)
    data = observation_data(row, stored)
    return written(tx, patient, RT.OBSERVATION, ObservationView, data, row.version_id, "update")


def conditions_section(pid: uuid.UUID | None) -> Select[Condition]:
    """The statement of a patient's Conditions section, oldest first."""
    return select(Condition).where(Condition.patient_id == pid).order_by(Condition.created_at)


@guarded(AuditKind.PHI_READ, RT.CONDITION, targeted=True)
def list_conditions(tx: GuardedTx, /, *, patient_id: str) -> list[ConditionView]:
    rows, fields = section(tx, patient_id, RT.CONDITION, conditions_section(parse_id(patient_id)))
    return [redact(ConditionView, condition_data(r, received_shown(tx, r, fields)), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.CONDITION, targeted=True)
def read_condition(tx: GuardedTx, /, *, condition_id: str) -> ConditionView:
    row, fields = read_one(tx, RT.CONDITION, condition_id)
    received = received_shown(tx, row, fields)
    return redact(ConditionView, condition_data(row, received), fields)


# -- problems and diagnoses (ICD-10), every version kept ------------------------------------
@guarded(AuditKind.PHI_CREATE, RT.CONDITION, targeted=True)
def record_condition(tx: GuardedTx, /, *, data: ConditionInput) -> ConditionView:
    """A problem or diagnosis (ICD-10), by a physician in the patient's care (or under
    break-the-glass: a diagnosis opens no access). Version 1, kept."""
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.CONDITION, write=True)
    if not patient.active or patient.merged_into_id is not None:
        raise Conflict("this patient record is inactive: record the problem on the active record")
    _check_onset(tx, data.onset_at)
    condition_id = new_id()
    received = None
    if data.received is not None:
        # Kept as sent: who recorded it in carnet is the version's author (Provenance), not an
        # element added to another system's resource.
        received = received_json(tx, data.received, patient, {"subject": f"Patient/{patient.id}"})
    condition = Condition(
        id=condition_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        code=data.code,
        display=data.display.strip(),
        clinical_status=data.clinical_status,
        verification_status=data.verification_status,
        onset_at=data.onset_at,
        recorded_by=author,
        received_ct=tx.enc(received, patient.facility_id, "conditions", "received", condition_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(condition)
    tx.session.flush()
    data_out = condition_data(condition, None if received is None else dict(json.loads(received)))
    return written(tx, patient, RT.CONDITION, ConditionView, data_out, 1, "create")


CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def _status_concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _check_onset(tx: GuardedTx, onset: dt.datetime | None) -> None:
    if onset is not None and (onset.tzinfo is None or onset > tx.now + dt.timedelta(minutes=5)):
        raise InvalidInput("a problem's onset has a time zone and is not in the future")


@guarded(AuditKind.PHI_UPDATE, RT.CONDITION, targeted=True)
def amend_condition(
    tx: GuardedTx,
    /,
    *,
    condition_id: str,
    expected_version: int,
    clinical_status: str | None = None,
    verification_status: str | None = None,
    onset_at: dt.datetime | None = None,
    code: str | None = None,
) -> ConditionView:
    """Change a problem's clinical status (e.g. resolved), its verification status
    (confirmed, refuted...) or its onset; or mark it entered-in-error (kept, still read
    with that status, nothing else changed). Its code is not changed: a wrong diagnosis
    is marked entered-in-error and the right one recorded. If-Match; every version kept."""
    writing_practitioner(tx)
    row, patient = tx.record_to_change(Condition, condition_id)
    tx.authorize(patient, RT.CONDITION, write=True)
    if row.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if row.verification_status == "entered-in-error":
        raise Conflict("this problem was entered in error: record a new one")
    if code is not None and code != row.code:
        raise InvalidInput(
            "a problem's code is not changed: mark it entered-in-error and record the right one"
        )
    values: dict[str, Any]
    if verification_status == "entered-in-error":
        values = {"verification_status": verification_status}
    else:
        if clinical_status is not None and clinical_status not in CONDITION_CLINICAL_STATUSES:
            raise InvalidInput("clinical status must be one of " + ", ".join(CONDITION_CLINICAL_STATUSES))
        if verification_status is not None and verification_status not in CONDITION_VERIFICATION_STATUSES:
            raise InvalidInput(
                "verification status must be one of " + ", ".join(CONDITION_VERIFICATION_STATUSES)
            )
        _check_onset(tx, onset_at)
        values = {
            "clinical_status": clinical_status or row.clinical_status,
            "verification_status": verification_status or row.verification_status,
            "onset_at": onset_at if onset_at is not None else row.onset_at,
        }
        current = {k: getattr(row, k) for k in values}
        if values == current:
            raise InvalidInput(
                "an amendment changes the clinical status, the verification status or the onset"
            )
    stored = received_of(tx, row)
    first_version(tx, RT.CONDITION, row, patient, condition_data(row, stored))
    if stored is not None:
        # The resource as received follows the amendment (statuses, onset); R4 con-5: no
        # clinicalStatus once entered in error.
        stored["verificationStatus"] = _status_concept(VERIFICATION_SYSTEM, values["verification_status"])
        if values["verification_status"] == "entered-in-error":
            stored.pop("clinicalStatus", None)
        else:
            stored["clinicalStatus"] = _status_concept(CLINICAL_SYSTEM, values["clinical_status"])
            if onset_at is not None:
                for key in [k for k in stored if k.startswith("onset")]:
                    del stored[key]
                stored["onsetDateTime"] = onset_at.isoformat()
        text = json.dumps(stored, ensure_ascii=False, sort_keys=True)
        values["received_ct"] = tx.enc(text, patient.facility_id, "conditions", "received", row.id)
    tx.bump(Condition, row, expected_version, **values)
    data = condition_data(row, stored)
    return written(tx, patient, RT.CONDITION, ConditionView, data, row.version_id, "update")


def reports_section(pid: uuid.UUID | None) -> Select[DiagnosticReport]:
    """The statement of a patient's lab reports section, newest first."""
    return (
        select(DiagnosticReport)
        .where(DiagnosticReport.patient_id == pid)
        .order_by(DiagnosticReport.issued_at.desc())
    )


@guarded(AuditKind.PHI_READ, RT.DIAGNOSTIC_REPORT, targeted=True)
def list_diagnostic_reports(tx: GuardedTx, /, *, patient_id: str) -> list[DiagnosticReportView]:
    rows, fields = section(tx, patient_id, RT.DIAGNOSTIC_REPORT, reports_section(parse_id(patient_id)))
    return report_views(tx, rows, fields)


@guarded(AuditKind.PHI_READ, RT.DIAGNOSTIC_REPORT, targeted=True)
def read_diagnostic_report(tx: GuardedTx, /, *, report_id: str) -> DiagnosticReportView:
    row, fields = read_one(tx, RT.DIAGNOSTIC_REPORT, report_id)
    return report_views(tx, [row], fields)[0]


@guarded(AuditKind.PHI_CREATE, RT.DIAGNOSTIC_REPORT, targeted=True)
def record_diagnostic_report(tx: GuardedTx, /, *, data: DiagnosticReportInput) -> DiagnosticReportView:
    """A lab report grouping Observations of the same patient, none reported already. An
    Observation of anyone else is refused in the same words as a missing one."""
    author = result_author(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.DIAGNOSTIC_REPORT, write=True)
    if data.issued_at.tzinfo is None or data.issued_at > tx.now + dt.timedelta(minutes=5):
        raise InvalidInput("a report's issued time has a time zone and is not in the future")
    if not data.result_ids:
        raise InvalidInput("a lab report groups its results: result needs an Observation reference")
    observations: list[Observation] = []
    for number, raw in enumerate(data.result_ids, start=1):
        oid = parse_id(raw)
        row = tx.session.get(Observation, oid, with_for_update=True) if oid else None
        if row is None or row.patient_id != patient.id:
            raise InvalidInput(f"result {number} is not an Observation of this report's patient")
        if row.report_id is not None:
            raise Conflict(f"result {number} already belongs to another report")
        if row in observations:
            raise InvalidInput(f"result {number} is listed twice")
        observations.append(row)
    order = orders.patient_order(tx, data.order_id, patient)
    report_id = new_id()
    conclusion = (data.conclusion or "").strip() or None
    received = None
    if data.received is not None:
        received = received_json(tx, data.received, patient, {"subject": f"Patient/{patient.id}"})
    report = DiagnosticReport(
        id=report_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        code=data.code,
        display=data.display,
        status=data.status,
        issued_at=data.issued_at,
        conclusion_ct=tx.enc(conclusion, patient.facility_id, "diagnostic_reports", "conclusion", report_id),
        performer_id=author,
        order_id=order.id if order is not None else None,
        received_ct=tx.enc(received, patient.facility_id, "diagnostic_reports", "received", report_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(report)
    tx.session.flush()
    for row in observations:
        row.report_id = report.id
    tx.session.flush()
    orders.advance_and_keep(tx, order, patient, report.status)
    snapshot = {
        "id": str(report.id),
        "updated_at": report.updated_at,
        "patient_id": str(patient.id),
        "facility_id": str(patient.facility_id),
        "code": report.code,
        "display": report.display,
        "status": report.status,
        "issued_at": report.issued_at,
        "conclusion": conclusion,
        "performer_id": sid(author),
        "result_ids": [str(o.id) for o in observations],
        "version_id": 1,
        "order_id": sid(report.order_id),
        "received": None if received is None else dict(json.loads(received)),
    }
    return written(tx, patient, RT.DIAGNOSTIC_REPORT, DiagnosticReportView, snapshot, 1, "create")


PENDING_REPORT = frozenset({"registered", "partial", "preliminary"})


@guarded(AuditKind.PHI_UPDATE, RT.DIAGNOSTIC_REPORT, targeted=True)
def amend_diagnostic_report(
    tx: GuardedTx,
    /,
    *,
    report_id: str,
    expected_version: int,
    status: str,
    conclusion: str | None = None,
    result_ids: list[str] | None = None,
) -> DiagnosticReportView:
    """Amend a lab report (status amended or corrected: its conclusion and results, the
    results Observations of the same patient in no other report, as on creation), make a
    preliminary one final, or mark it entered-in-error (kept, content unchanged). If-Match;
    every version stays. Final results complete the order the report answers."""
    writing_practitioner(tx)
    report, patient = tx.record_to_change(DiagnosticReport, report_id)
    tx.authorize(patient, RT.DIAGNOSTIC_REPORT, write=True)
    if report.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if report.status == "entered-in-error":
        raise Conflict("this report was entered in error: record a new one")
    current = list(
        tx.session.scalars(
            select(Observation)
            .where(Observation.report_id == report.id)
            .order_by(Observation.effective_at, Observation.id)
        )
    )
    old = tx.dec(report.conclusion_ct, "diagnostic_reports", "conclusion", report.id)
    kept = received_of(tx, report)

    def data(
        conclusion_now: str | None, results: list[Observation], received: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": str(report.id),
            "updated_at": report.updated_at,
            "patient_id": str(patient.id),
            "facility_id": str(patient.facility_id),
            "code": report.code,
            "display": report.display,
            "status": report.status,
            "issued_at": report.issued_at,
            "conclusion": conclusion_now,
            "performer_id": sid(report.performer_id),
            "result_ids": [str(o.id) for o in results],
            "version_id": report.version_id,
            "order_id": sid(report.order_id),
            "received": received,
        }

    def follow(conclusion_now: str | None, results: list[Observation]) -> dict[str, Any] | None:
        """A report kept as received follows the change made in carnet: its status, conclusion
        and results; the version before keeps it as it was."""
        if kept is None:
            return None
        now = {**kept, "status": report.status}
        if conclusion_now is None:
            now.pop("conclusion", None)
        else:
            now["conclusion"] = conclusion_now
        now["result"] = [{"reference": f"Observation/{o.id}"} for o in results]
        text = json.dumps(now, ensure_ascii=False, sort_keys=True)
        report.received_ct = tx.enc(text, patient.facility_id, "diagnostic_reports", "received", report.id)
        tx.session.flush()
        return now

    first_version(tx, RT.DIAGNOSTIC_REPORT, report, patient, data(old, current, kept))
    if status == "entered-in-error":
        tx.bump(DiagnosticReport, report, expected_version, status=status)
        return written(
            tx,
            patient,
            RT.DIAGNOSTIC_REPORT,
            DiagnosticReportView,
            data(old, current, follow(old, current)),
            report.version_id,
            "update",
        )
    if status not in ("amended", "corrected", "final"):
        raise InvalidInput("a report is amended (status amended or corrected) or marked entered-in-error")
    # A report whose results were not all final yet becomes final once (FHIR's workflow).
    becomes_final = status == "final"
    if becomes_final and report.status not in PENDING_REPORT:
        raise InvalidInput("only a registered, partial or preliminary report becomes final")
    observations: list[Observation] = []
    for number, raw in enumerate(result_ids or [], start=1):
        oid = parse_id(raw)
        row = tx.session.get(Observation, oid, with_for_update=True) if oid else None
        if row is None or row.patient_id != patient.id:
            raise InvalidInput(f"result {number} is not an Observation of this report's patient")
        if row.report_id is not None and row.report_id != report.id:
            raise Conflict(f"result {number} already belongs to another report")
        if row in observations:
            raise InvalidInput(f"result {number} is listed twice")
        observations.append(row)
    if not observations:
        raise InvalidInput("a lab report groups its results: result needs an Observation reference")
    text_now = (conclusion or "").strip() or None
    if not becomes_final and text_now == old and {o.id for o in observations} == {o.id for o in current}:
        raise InvalidInput("an amendment changes the conclusion or the results")
    tx.bump(
        DiagnosticReport,
        report,
        expected_version,
        status=status,
        conclusion_ct=tx.enc(text_now, patient.facility_id, "diagnostic_reports", "conclusion", report.id),
    )
    for row in current:
        if row not in observations:
            row.report_id = None
    for row in observations:
        row.report_id = report.id
    tx.session.flush()
    if report.order_id is not None:
        orders.advance_and_keep(tx, tx.session.get(ServiceRequest, report.order_id), patient, status)
    observations.sort(key=lambda o: (o.effective_at, o.id))
    return written(
        tx,
        patient,
        RT.DIAGNOSTIC_REPORT,
        DiagnosticReportView,
        data(text_now, observations, follow(text_now, observations)),
        report.version_id,
        "update",
    )


# -- a lab order's results in one pass (an interface's ORU^R01, a lab system) ------------------
RESULTS_LIMIT = 200


def _check_result(tx: GuardedTx, number: int, data: ObservationInput) -> None:
    if data.received is not None:
        raise InvalidInput(f"result {number}: a resource as received is recorded on its own")
    if (data.value_number is None) == (data.value_text is None):
        raise InvalidInput(f"result {number}: an Observation has one value: a number (and unit) or a text")
    if data.effective_at.tzinfo is None or data.effective_at > tx.now + dt.timedelta(minutes=5):
        raise InvalidInput(f"result {number}: its time has a time zone and is not in the future")


_REPORT_ROWS = PreparedInsert(cast(Table, DiagnosticReport.__table__))
_OBSERVATION_ROWS = PreparedInsert(cast(Table, Observation.__table__))


def _observation_data(row: dict[str, Any]) -> dict[str, Any]:
    """`observation_data` of a result inserted as plain values (no ORM instance)."""
    return {
        "id": str(row["id"]),
        "updated_at": row["updated_at"],
        "patient_id": str(row["patient_id"]),
        "category": row["category"],
        "code": row["code"],
        "display": row["display"],
        "value_number": row["value_number"],
        "unit": row["unit"],
        "value_text": row["value_text"],
        "effective_at": row["effective_at"],
        "status": row["status"],
        "version_id": row["version_id"],
        "received": None,
        "order_id": sid(row["order_id"]),
        "reference_range": row["reference_range"],
        "interpretation": row["interpretation"],
    }


@guarded(AuditKind.PHI_CREATE, RT.OBSERVATION, targeted=True)
def record_observations(
    tx: GuardedTx, /, *, results: list[ObservationInput], report: DiagnosticReportInput | None = None
) -> LabResultsView:
    """Several results of one patient and, when given, the report grouping them (its
    `result_ids` are ignored: it groups these results), as `record_observation` and
    `record_diagnostic_report` would record them one by one, in one pass: the patient locked
    once, one policy decision per type, the rows and their first versions inserted together.
    Final results answering an active order complete it."""
    if not 1 <= len(results) <= RESULTS_LIMIT:
        raise InvalidInput(f"1 to {RESULTS_LIMIT} results at once")
    wanted = {r.patient_id for r in results} | ({report.patient_id} if report is not None else set())
    if len(wanted) != 1:
        raise InvalidInput("results recorded together are one patient's")
    author = result_author(tx)
    patient = tx.patient_to_file_under(results[0].patient_id)
    tx.authorize(patient, RT.OBSERVATION, write=True)
    if report is not None:
        tx.authorize(patient, RT.DIAGNOSTIC_REPORT, write=True)
        if report.issued_at.tzinfo is None or report.issued_at > tx.now + dt.timedelta(minutes=5):
            raise InvalidInput("a report's issued time has a time zone and is not in the future")
    stays: dict[str | None, uuid.UUID | None] = {None: None}
    answered: dict[str | None, ServiceRequest | None] = {None: None}
    for number, data in enumerate(results, start=1):
        _check_result(tx, number, data)
        if data.encounter_id not in stays:
            stays[data.encounter_id] = patient_stay(tx, data.encounter_id, patient)
        if data.order_id not in answered:
            answered[data.order_id] = orders.patient_order(tx, data.order_id, patient)
    report_order = None
    report_row: dict[str, Any] | None = None
    conclusion = None
    now = tx.now
    # Rows as plain values, inserted together at the end (not ORM instances through the unit of
    # work): a laboratory feed's hot path.
    if report is not None:
        report_order = orders.patient_order(tx, report.order_id, patient)
        report_id = new_id()
        conclusion = (report.conclusion or "").strip() or None
        report_row = {
            "id": report_id,
            "facility_id": patient.facility_id,
            "patient_id": patient.id,
            "code": report.code,
            "display": report.display,
            "status": report.status,
            "issued_at": report.issued_at,
            "conclusion_ct": tx.enc(
                conclusion, patient.facility_id, "diagnostic_reports", "conclusion", report_id
            ),
            "performer_id": author,
            "received_ct": None,
            "order_id": report_order.id if report_order is not None else None,
            "version_id": 1,
            "created_at": now,
            "updated_at": now,
        }
    rows: list[dict[str, Any]] = []
    for data in results:
        order = answered[data.order_id]
        rows.append(
            {
                "id": new_id(),
                "facility_id": patient.facility_id,
                "patient_id": patient.id,
                "encounter_id": stays[data.encounter_id],
                "report_id": report_row["id"] if report_row is not None else None,
                "category": data.category,
                "code": data.code,
                "display": data.display,
                "value_number": data.value_number,
                "unit": data.unit,
                "value_text": data.value_text,
                "effective_at": data.effective_at,
                "status": data.status,
                "performer_id": author,
                "received_ct": None,
                "order_id": order.id if order is not None else None,
                "reference_range": data.reference_range,
                "interpretation": data.interpretation,
                "version_id": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
    observed = [_observation_data(row) for row in rows]
    versions: list[tuple[RT, uuid.UUID, dict[str, Any], str]] = [
        (RT.OBSERVATION, row["id"], data, "create") for row, data in zip(rows, observed, strict=True)
    ]
    report_data: dict[str, Any] | None = None
    if report_row is not None:
        report_data = {
            "id": str(report_row["id"]),
            "updated_at": now,
            "patient_id": str(patient.id),
            "facility_id": str(patient.facility_id),
            "code": report_row["code"],
            "display": report_row["display"],
            "status": report_row["status"],
            "issued_at": report_row["issued_at"],
            "conclusion": conclusion,
            "performer_id": sid(author),
            "result_ids": [str(row["id"]) for row in rows],
            "version_id": 1,
            "order_id": sid(report_row["order_id"]),
        }
        versions.append((RT.DIAGNOSTIC_REPORT, report_row["id"], report_data, "create"))
    # Orders answered by final results are complete (each a new version, kept with the results').
    for order in dict.fromkeys([*answered.values(), report_order]):
        done = orders.advance(tx, order, patient, report_row["status"] if report_row is not None else "final")
        if done is not None and order is not None:
            versions.append((RT.SERVICE_REQUEST, order.id, done, "update"))
    # The report (before the results naming it), the results and every version: one pipeline.
    tx.insert_rows(
        [
            (_REPORT_ROWS, [report_row] if report_row is not None else []),
            (_OBSERVATION_ROWS, rows),
            (VERSION_ROWS, tx.version_rows(patient, versions)),
        ]
    )
    rels = tx.relationships_of([patient])
    mine = rels.get(patient.id, frozenset())
    fields = tx.read_fields(mine, RT.OBSERVATION)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.OBSERVATION)
    shown = [redact(ObservationView, data, fields) for data in observed]
    if report_data is None:
        return LabResultsView(observations=shown)
    report_fields = tx.read_fields(mine, RT.DIAGNOSTIC_REPORT)
    tx.expose([patient.id], Channel.WRITE, rels, report_fields, resource=RT.DIAGNOSTIC_REPORT)
    return LabResultsView(observations=shown, report=redact(DiagnosticReportView, report_data, report_fields))
