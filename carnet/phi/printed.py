"""The step every print shares (run inside a guarded print operation, never alone): the
patient's identity lines as the actor's decision opens them, the document id, the watermark,
the trace in the audit event and the exposure.

A printed page is data that left the server: it is counted as a REPORT exposure of its patient
(invariant 2), so printing many patients' documents trips the same volume rules as opening
many charts. The document id is written in the audit event's query (`print:<kind>;document=<id>`)
and on every page, so a sheet found on a photocopier leads back to who printed it, when.
"""

from __future__ import annotations

from carnet.detection.interfaces import Channel
from carnet.kernel.ids import new_id
from carnet.patients.models import Patient
from carnet.patients.views import patient_data
from carnet.phi.kernel import RT, GuardedTx, Refused
from carnet.printing import Document, PrintedDocument, Watermark, render_pdf
from carnet.printing.words import LANGUAGES, code, day, word

# What a printed page shows of who the patient is (never the address, phone or INS).
PRINTED_IDENTITY = frozenset({"family", "given", "birth_date"})


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise Refused(f"no printed documents in {language[:8]!r}")
    return language


def identity_lines(tx: GuardedTx, patient: Patient, language: str) -> tuple[tuple[str, str], ...]:
    """The patient's name and birth date, as far as the actor may read them (a refused
    identity read refuses the print: a document nobody can attribute is not printed)."""
    decision = tx.authorize(patient, RT.PATIENT)
    fields = decision.fields & PRINTED_IDENTITY
    if not {"family", "given"} <= fields:
        raise Refused("this account may not see who the patient is", [patient.id])
    data = patient_data(tx, patient, fields)
    lines = [(word(language, "patient"), f"{data.get('family', '')} {data.get('given', '')}".strip())]
    if data.get("birth_date"):
        lines.append((word(language, "born"), day(language, str(data["birth_date"]))))
    lines.append((word(language, "gender"), code(language, patient.gender)))
    return tuple(lines)


def printed(
    tx: GuardedTx,
    patient: Patient,
    document: Document,
    *,
    resource: RT,
    fields: frozenset[str],
) -> PrintedDocument:
    """Watermark and render the document, trace it in the audit event, count its exposure."""
    document_id = str(new_id())
    tx.query = f"print:{document.kind};document={document_id}"
    watermark = Watermark(
        printed_by=tx.actor.username,
        printed_at=tx.now,
        document_id=document_id,
        language=document.language,
    )
    pdf = render_pdf(document, watermark)
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.REPORT, rels, fields | PRINTED_IDENTITY, resource=resource)
    return PrintedDocument(
        document_id=document_id,
        kind=document.kind,
        filename=f"{document.kind}-{document_id[:8]}.pdf",
        pdf=pdf,
    )
