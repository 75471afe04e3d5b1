"""The gate's input and view of an intervention (immunization, procedure, medication
administration or statement); the FHIR resource itself travels whole in `received`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from carnet.phi.schemas import Redactable


class InterventionInput(BaseModel):
    """The columns policy and search need, and the resource as received (kept whole)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    code_system: str | None = Field(default=None, max_length=200)
    code: str | None = Field(default=None, max_length=40)
    display: str | None = Field(default=None, max_length=200)
    status: str = Field(min_length=1, max_length=30)
    occurred_at: dt.datetime | None = None
    encounter_id: str | None = None
    received: dict[str, Any]


class InterventionView(Redactable):
    patient_id: str | None = None
    code_system: str | None = None
    code: str | None = None
    display: str | None = None
    status: str | None = None
    occurred_at: dt.datetime | None = None
    encounter_id: str | None = None
    recorded_by: str | None = None
    version_id: int | None = None
    # The FHIR resource as received (None: the reader may not see every field of it).
    received: dict[str, Any] | None = None


# Why a dose of a prescription was not given (the nurse's administration record): a short list,
# coded so that a ward can count them; the chart words each in the reader's language.
NOT_GIVEN_REASONS = ("refused", "asleep", "absent", "vomited", "held-by-physician")
NOT_GIVEN_DISPLAY = {
    "refused": "Refused by the patient",
    "asleep": "Patient asleep",
    "absent": "Patient absent",
    "vomited": "Patient vomited",
    "held-by-physician": "Held by the physician",
}
