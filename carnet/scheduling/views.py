"""An appointment as the gate shows it (its reason decrypted only when opened)."""

from __future__ import annotations

from typing import Any

from carnet.phi.kernel import GuardedTx
from carnet.phi.steps import sid
from carnet.scheduling.models import Appointment


def appointment_data(tx: GuardedTx, a: Appointment, fields: frozenset[str]) -> dict[str, Any]:
    return {
        "id": str(a.id),
        "updated_at": a.updated_at,
        "patient_id": str(a.patient_id),
        "facility_id": str(a.facility_id),
        "practitioner_id": str(a.practitioner_id),
        "location_id": sid(a.location_id),
        "start_at": a.start_at,
        "end_at": a.end_at,
        "status": a.status,
        "cancel_reason": a.cancel_reason,
        "version_id": a.version_id,
        "reason": tx.dec(a.reason_ct, "appointments", "reason", a.id) if "reason" in fields else None,
    }
