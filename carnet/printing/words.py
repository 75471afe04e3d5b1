"""The words of printed documents, in French (the default) and English."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency

PARIS = zoneinfo.ZoneInfo("Europe/Paris")

_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "printed_by": "Imprimé par {who} le {when} — document {document}",
        "page": "page {number}",
        "prescription": "Ordonnance",
        "invoice": "Facture",
        "receipt": "Reçu",
        "discharge_letter": "Lettre de sortie",
        "patient": "Patient",
        "born": "Né(e) le",
        "gender": "Sexe",
        "medication": "Médicament",
        "dosage": "Posologie",
        "substance": "Substance (ATC)",
        "written": "Prescrit le",
        "valid_until": "Valable jusqu'au",
        "dates": "Dates",
        "prescriber": "Prescripteur",
        "number": "Numéro",
        "issued": "Émise le",
        "status": "Statut",
        "acts": "Actes",
        "code": "Code",
        "act": "Acte",
        "amount": "Montant",
        "total": "Total",
        "paid": "Payé",
        "due": "Reste dû",
        "payment": "Paiement",
        "received": "Reçu le",
        "method": "Mode de paiement",
        "for_invoice": "Facture",
        "stay": "Séjour",
        "admitted": "Entrée le",
        "discharged": "Sortie le",
        "ward": "Unité",
        "attending": "Médecin responsable",
        "problems": "Problèmes actifs",
        "allergies": "Allergies",
        "treatment": "Traitement à la sortie",
        "summary": "Synthèse du séjour",
        "none": "Aucun.",
        "signature": "Signature :",
        "kind": "Type de séjour",
    },
    "en": {
        "printed_by": "Printed by {who} on {when} — document {document}",
        "page": "page {number}",
        "prescription": "Prescription",
        "invoice": "Invoice",
        "receipt": "Receipt",
        "discharge_letter": "Discharge letter",
        "patient": "Patient",
        "born": "Born",
        "gender": "Gender",
        "medication": "Medication",
        "dosage": "Dosage",
        "substance": "Substance (ATC)",
        "written": "Written",
        "valid_until": "Valid until",
        "dates": "Dates",
        "prescriber": "Prescriber",
        "number": "Number",
        "issued": "Issued",
        "status": "Status",
        "acts": "Acts",
        "code": "Code",
        "act": "Act",
        "amount": "Amount",
        "total": "Total",
        "paid": "Paid",
        "due": "Due",
        "payment": "Payment",
        "received": "Received",
        "method": "Method",
        "for_invoice": "Invoice",
        "stay": "Stay",
        "admitted": "Admitted",
        "discharged": "Discharged",
        "ward": "Ward",
        "attending": "Attending physician",
        "problems": "Active problems",
        "allergies": "Allergies",
        "treatment": "Treatment at discharge",
        "summary": "Summary of the stay",
        "none": "None.",
        "signature": "Signature:",
        "kind": "Kind of stay",
    },
}

# Stored codes as words (a printed page shows no code a patient cannot read).
_CODES: dict[str, dict[str, str]] = {
    "fr": {
        "male": "masculin",
        "female": "féminin",
        "other": "autre",
        "unknown": "inconnu",
        "issued": "émise",
        "balanced": "soldée",
        "draft": "brouillon",
        "cancelled": "annulée",
        "card": "carte",
        "cash": "espèces",
        "cheque": "chèque",
        "transfer": "virement",
        "insurer": "assureur",
        "inpatient": "hospitalisation",
        "outpatient": "consultation externe",
        "emergency": "urgences",
        "high": "élevée",
        "low": "faible",
        "unable-to-assess": "non évaluable",
    },
    "en": {
        "inpatient": "inpatient",
        "outpatient": "outpatient",
        "emergency": "emergency",
        "unable-to-assess": "unable to assess",
    },
}

LANGUAGES = frozenset(_WORDS)


def word(language: str, key: str) -> str:
    return _WORDS.get(language, _WORDS["fr"])[key]


def code(language: str, value: str | None) -> str:
    if not value:
        return ""
    return _CODES.get(language, {}).get(value, value)


def day(language: str, value: dt.date | dt.datetime | str | None) -> str:
    """A date as the reader writes it (07/12/2026 in French); a moment in Paris time."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = dt.date.fromisoformat(value[:10])
    if isinstance(value, dt.datetime):
        value = value.astimezone(PARIS).date()
    return format_date(value, "short" if language == "en" else "dd/MM/yyyy", locale=_locale(language))


def moment(language: str, value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return format_datetime(value, "dd/MM/yyyy HH:mm", tzinfo=PARIS, locale=_locale(language))


def money(language: str, cents: int | None, currency: str | None) -> str:
    return format_currency((cents or 0) / 100, currency or "EUR", locale=_locale(language))


def _locale(language: str) -> str:
    return "en_GB" if language == "en" else "fr_FR"


def pair(language: str, key: str, value: str) -> str:
    """'Prescrit le : 07/12/2026' (French puts a space before the colon), 'Written: 07/12/2026'."""
    return f"{word(language, key)}{' :' if language == 'fr' else ':'} {value}"
