"""The medication checks: an active allergy to the prescribed substance stops a prescription,
unless the prescriber confirms with an override reason (kept on the prescription)."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from carnet.kernel.errors import Conflict
from carnet.phi.kernel import GuardedTx
from carnet.records.models import Allergy


class AllergyWarning(Conflict):
    """The patient has an active allergy to the prescribed substance; nothing was written."""


def allergy_warnings(
    tx: GuardedTx, *, patient_id: uuid.UUID, substance_code: str, override: str | None
) -> list[str]:
    """The warnings a prescription carries; raises AllergyWarning (nothing is written) when the
    patient has an active allergy to the substance and no override reason was given."""
    allergic = tx.session.scalar(
        select(Allergy.id).where(
            Allergy.patient_id == patient_id,
            Allergy.substance_code == substance_code,
            Allergy.clinical_status == "active",
        )
    )
    if allergic is None:
        return []
    if override is None:
        raise AllergyWarning(
            "the patient has an active allergy to this substance: nothing was prescribed;"
            " confirm with an allergy override reason"
        )
    return ["active allergy to this substance: prescribed with an override"]
