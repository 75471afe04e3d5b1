"""The medication checks a prescription passes before it is written (carnet.prescriptions.checks
holds the pure rules; this reads what they need in the guarded transaction).

An active allergy the drug runs into (same substance, its class, a documented cross-reaction)
or a second active prescription of the same drug or class stops the prescription unless the
prescriber states an override reason, which is kept on the prescription with the warnings it
answered (both in the versioned, audited record). An allergy carnet cannot read as a drug (a
SNOMED CT code, free text naming no known drug) is shown, never silently passed, but does not
need an override.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select

from carnet.kernel.errors import Conflict
from carnet.phi.kernel import GuardedTx
from carnet.prescriptions import catalogue
from carnet.prescriptions.checks import (
    ACTIVE_STATUSES,
    Current,
    allergy_conflicts,
    duplicate_therapy,
)
from carnet.prescriptions.checks import (
    Allergy as AllergyFact,
)
from carnet.prescriptions.models import Prescription
from carnet.records.models import Allergy


@dataclass(frozen=True)
class Finding:
    """One warning, in both languages of the interface, with where a clinician reads the rule."""

    kind: str  # "allergy", "duplicate" or "unchecked"
    en: str
    fr: str
    source: str | None = None
    blocking: bool = True


class AllergyWarning(Conflict):
    """The prescription runs into an allergy or repeats an active one; nothing was written.

    `findings` names each allergen (or prescription) and the reason, for the prescriber."""

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.findings = list(findings or [])


def findings_for(
    tx: GuardedTx,
    *,
    patient_id: uuid.UUID,
    substance_code: str,
    medication_display: str | None,
    replacing: uuid.UUID | None = None,
) -> list[Finding]:
    """Every warning a new prescription of `substance_code` raises for this patient."""
    allergies = tx.session.scalars(
        select(Allergy).where(Allergy.patient_id == patient_id, Allergy.clinical_status == "active")
    ).all()
    facts = [
        AllergyFact(
            code=a.substance_code,
            display=a.substance_display,
            # The record keeps ATC codes; anything else it holds was typed or imported as text.
            system=catalogue.ATC_SYSTEM if catalogue.is_atc(a.substance_code.strip().upper()) else "text",
            criticality=a.criticality,
            id=str(a.id),
        )
        for a in allergies
    ]
    found: list[Finding] = []
    for c in allergy_conflicts(drug_code=substance_code, drug_display=medication_display, allergies=facts):
        found.append(
            Finding(
                "allergy" if c.blocking else "unchecked",
                c.sentence("en"),
                c.sentence("fr"),
                c.source,
                c.blocking,
            )
        )
    current = tx.session.scalars(
        select(Prescription).where(
            Prescription.patient_id == patient_id, Prescription.status.in_(sorted(ACTIVE_STATUSES))
        )
    ).all()
    existing = [Current(str(p.id), p.substance_code, p.medication_display, p.status) for p in current]
    ignore = frozenset({str(replacing)}) if replacing is not None else frozenset()
    for d in duplicate_therapy(drug_code=substance_code, current=existing, ignore=ignore):
        found.append(Finding("duplicate", d.sentence("en"), d.sentence("fr")))
    return found


def allergy_warnings(
    tx: GuardedTx,
    *,
    patient_id: uuid.UUID,
    substance_code: str,
    override: str | None,
    medication_display: str | None = None,
    replacing: uuid.UUID | None = None,
) -> list[str]:
    """The warnings a prescription carries (kept in its version); raises AllergyWarning, with
    nothing written, when one needs an override and no override reason was given."""
    found = findings_for(
        tx,
        patient_id=patient_id,
        substance_code=substance_code,
        medication_display=medication_display,
        replacing=replacing,
    )
    if override is None and any(f.blocking for f in found):
        named = "; ".join(f.en for f in found if f.blocking)
        raise AllergyWarning(
            f"nothing was prescribed: {named}; to prescribe it anyway, give an allergy override reason",
            found,
        )
    return [f.en for f in found]
