"""Prescriptions and allergies as the gate shows them (data before redaction)."""

from __future__ import annotations

from typing import Any

from carnet.phi.steps import sid
from carnet.prescriptions.models import Prescription
from carnet.records.models import Allergy


def allergy_data(
    a: Allergy, received: dict[str, Any] | None = None, reaction: str | None = None
) -> dict[str, Any]:
    """`received`: the resource kept as received; `reaction`: the decrypted reaction; each given
    only when the reader may see it (the caller decrypts)."""
    return {
        "id": str(a.id),
        "updated_at": a.updated_at,
        "patient_id": str(a.patient_id),
        "substance_code": a.substance_code,
        "substance_display": a.substance_display,
        "criticality": a.criticality,
        "reaction": reaction,
        "clinical_status": a.clinical_status,
        "recorded_by": sid(a.recorded_by),
        "version_id": a.version_id,
        "received": received,
    }


def prescription_data(p: Prescription, received: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": str(p.id),
        "updated_at": p.updated_at,
        "patient_id": str(p.patient_id),
        "prescriber_id": sid(p.prescriber_id),
        "medication_code": p.medication_code,
        "medication_display": p.medication_display,
        "substance_code": p.substance_code,
        "dosage_text": p.dosage_text,
        "status": p.status,
        "authored_at": p.authored_at,
        "valid_until": p.valid_until,
        "stop_reason": p.stop_reason,
        "allergy_override_reason": p.allergy_override_reason,
        "version_id": p.version_id,
        "warnings": [],
        "received": received,
    }
