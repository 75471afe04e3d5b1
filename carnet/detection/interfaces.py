"""The exposure-accounting contract the gate relies on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from sqlalchemy.orm import Session

from carnet.access.actor import Actor


class Channel(StrEnum):
    """How a patient's identifying data left the server."""

    CHART = "chart"
    SEARCH = "search"
    LIST = "list"
    EXPORT = "export"
    REPORT = "report"
    WRITE = "write"


class ExposureLedger(Protocol):
    """Records, in the caller's transaction, every patient whose identifying data leaves.

    `record` may raise carnet.kernel.errors.AccountContained (or StepUpRequired) when the
    exposure crosses a detection threshold; the gate then rolls back and returns nothing.
    """

    def record(
        self,
        session: Session,
        *,
        actor: Actor,
        patient_ids: Sequence[uuid.UUID],
        channel: Channel,
        resource_type: str,
    ) -> None: ...
