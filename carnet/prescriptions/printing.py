"""A prescription printed for the patient to take to a pharmacy (run only by the gate kernel)."""

from __future__ import annotations

from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, NotFound
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility, Practitioner
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, guarded
from carnet.phi.printed import check_language, identity_lines, printed
from carnet.prescriptions.models import Prescription
from carnet.printing import Document, PrintedDocument, Section
from carnet.printing.words import day, pair, word

PRINTABLE = frozenset({"active", "on-hold"})


@guarded(AuditKind.PHI_PRINT, RT.PRESCRIPTION, targeted=True)
def print_prescription(tx: GuardedTx, /, *, prescription_id: str, language: str = "fr") -> PrintedDocument:
    """The prescription as a signed-off page: only a physician who may prescribe for this
    patient (the prescriber, or a colleague caring for them) prints it, and only while it is
    active or on hold. Watermarked, audited with its document id, counted as an exposure."""
    language = check_language(language)
    rid = parse_id(prescription_id)
    row = tx.session.get(Prescription, rid) if rid else None
    if row is None:
        raise NotFound(NOT_FOUND)
    patient = tx.patient(row.patient_id)
    # Printing a prescription is issuing it: the policy's write rule (physicians in the care).
    decision = tx.authorize(patient, RT.PRESCRIPTION, write=True)
    tx.resource_ids.append(str(row.id))
    if row.status not in PRINTABLE:
        raise Conflict(f"this prescription is {row.status}: only an active prescription is printed")
    if row.valid_until is not None and row.valid_until < tx.now:
        # A pharmacy would refuse it: renewing writes a new one, checked again.
        raise Conflict("this prescription has expired: renew it, then print the renewed one")
    prescriber = tx.session.get(Practitioner, row.prescriber_id)
    facility = tx.session.get(Facility, row.facility_id)
    signed = f"Dr {prescriber.given} {prescriber.family}" if prescriber else ""
    document = Document(
        kind="prescription",
        language=language,
        title=word(language, "prescription"),
        facility=f"{facility.name} — {facility.city}" if facility else "",
        patient=identity_lines(tx, patient, language),
        sections=(
            Section(
                heading=word(language, "medication"),
                header=(word(language, "medication"), word(language, "dosage"), word(language, "substance")),
                rows=((row.medication_display, row.dosage_text, row.substance_code),),
            ),
            Section(
                heading=word(language, "dates"),
                paragraphs=(
                    pair(language, "written", day(language, row.authored_at)),
                    *(
                        [pair(language, "valid_until", day(language, row.valid_until))]
                        if row.valid_until
                        else []
                    ),
                ),
            ),
        ),
        signature=(
            pair(language, "prescriber", signed),
            f"RPPS {prescriber.rpps}" if prescriber else "",
            word(language, "signature"),
        ),
    )
    return printed(tx, patient, document, resource=RT.PRESCRIPTION, fields=decision.fields)
