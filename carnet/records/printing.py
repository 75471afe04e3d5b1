"""A discharge letter printed from a stay (run only by the gate kernel): the stay, the active
problems, allergies and treatment at discharge, and the stay's discharge summary if written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, NotFound
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility, Location, Practitioner
from carnet.patients.models import Patient
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.printed import check_language, identity_lines, printed
from carnet.phi.steps import writing_practitioner
from carnet.prescriptions.models import Prescription
from carnet.printing import Document, PrintedDocument, Section
from carnet.printing.words import code, moment, pair, word
from carnet.records.models import Allergy, ClinicalNote, Condition, NoteVersion
from carnet.scheduling.models import Encounter

DISCHARGE_SUMMARY = "18842-5"  # LOINC: discharge summary
LETTER_STAYS = frozenset({"in-progress", "finished"})


def _section(tx: GuardedTx, patient: Patient, resource: RT, query: Any) -> list[Any] | None:
    """Rows of one part of the letter, if the physician's decision opens it (else left out)."""
    rels = tx.relationships_of([patient]).get(patient.id, frozenset())
    if not tx.read_fields(rels, resource):
        return None
    tx.reasons.append(f"letter includes {resource.value}")
    return list(tx.session.scalars(query.limit(200)))


@guarded(AuditKind.PHI_PRINT, RT.ENCOUNTER, targeted=True)
def print_discharge_letter(tx: GuardedTx, /, *, encounter_id: str, language: str = "fr") -> PrintedDocument:
    """A physician caring for the patient (who may write their stays) prints the letter of a
    stay in progress or finished. Everything in it is read under the same decisions as the
    chart; the print is one audited exposure of the patient."""
    language = check_language(language)
    if Role.PHYSICIAN not in tx.ctx.roles:
        raise Refused("a discharge letter is printed by a physician")
    writing_practitioner(tx)
    eid = parse_id(encounter_id)
    stay = tx.session.get(Encounter, eid) if eid else None
    if stay is None:
        raise NotFound(NOT_FOUND)
    patient = tx.patient(stay.patient_id)
    decision = tx.authorize(patient, RT.ENCOUNTER, write=True)
    tx.resource_ids.append(str(stay.id))
    if stay.status not in LETTER_STAYS:
        raise Conflict(f"this stay is {stay.status}: a letter is printed for a stay in progress or finished")
    ward = tx.session.get(Location, stay.location_id) if stay.location_id else None
    attending = tx.session.get(Practitioner, stay.attending_id) if stay.attending_id else None
    facility = tx.session.get(Facility, stay.facility_id)
    pid = patient.id
    none = word(language, "none")
    stay_lines = [
        pair(language, "kind", code(language, stay.kind)),
        pair(language, "admitted", moment(language, stay.start_at)),
        pair(language, "discharged", moment(language, stay.end_at) if stay.end_at else "—"),
    ]
    if ward is not None:
        stay_lines.append(pair(language, "ward", ward.name))
    if attending is not None:
        stay_lines.append(pair(language, "attending", f"Dr {attending.given} {attending.family}"))
    sections = [Section(heading=word(language, "stay"), paragraphs=tuple(stay_lines))]

    problems = _section(
        tx,
        patient,
        RT.CONDITION,
        select(Condition)
        .where(Condition.patient_id == pid, Condition.clinical_status == "active")
        .order_by(Condition.created_at),
    )
    if problems is not None:
        sections.append(
            Section(
                heading=word(language, "problems"),
                rows=tuple((c.code, c.display) for c in problems),
                empty=none,
            )
        )
    allergies = _section(
        tx,
        patient,
        RT.ALLERGY,
        select(Allergy).where(Allergy.patient_id == pid, Allergy.clinical_status == "active"),
    )
    if allergies is not None:
        sections.append(
            Section(
                heading=word(language, "allergies"),
                rows=tuple((a.substance_display, code(language, a.criticality)) for a in allergies),
                empty=none,
            )
        )
    treatment = _section(
        tx,
        patient,
        RT.PRESCRIPTION,
        select(Prescription)
        .where(Prescription.patient_id == pid, Prescription.status.in_(("active", "on-hold")))
        .order_by(Prescription.authored_at),
    )
    if treatment is not None:
        sections.append(
            Section(
                heading=word(language, "treatment"),
                header=(word(language, "medication"), word(language, "dosage")),
                rows=tuple((p.medication_display, p.dosage_text) for p in treatment),
                empty=none,
            )
        )
    summaries = _section(
        tx,
        patient,
        RT.NOTE,
        select(ClinicalNote)
        .where(
            ClinicalNote.patient_id == pid,
            ClinicalNote.encounter_id == stay.id,
            ClinicalNote.kind == DISCHARGE_SUMMARY,
            ClinicalNote.status == "current",
        )
        .order_by(ClinicalNote.created_at.desc()),
    )
    if summaries:
        latest = tx.session.scalars(
            select(NoteVersion)
            .where(NoteVersion.note_id == summaries[0].id)
            .order_by(NoteVersion.version.desc())
            .limit(1)
        ).first()
        if latest is not None:
            text = tx.dec(latest.text_ct, "note_versions", "text", latest.id) or ""
            sections.append(Section(heading=word(language, "summary"), paragraphs=(text,)))

    document = Document(
        kind="discharge_letter",
        language=language,
        title=word(language, "discharge_letter"),
        facility=f"{facility.name} — {facility.city}" if facility else "",
        patient=identity_lines(tx, patient, language),
        sections=tuple(sections),
        signature=(f"Dr {attending.given} {attending.family}",) if attending else (),
    )
    return printed(tx, patient, document, resource=RT.ENCOUNTER, fields=decision.fields)
