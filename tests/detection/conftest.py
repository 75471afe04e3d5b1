"""Detection tests expose made-up patients: unless a test asks for the real facility work
(`facility_work`), every patient counts as within a front desk's or billing clerk's work, so
the rule under test is the only one that speaks."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy.orm import Session

from carnet.detection import ledger
from carnet.phi.work import SqlFacilityWork


class EveryoneInWork:
    def in_work(
        self, session: Session, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime
    ) -> frozenset[uuid.UUID]:
        return frozenset(patient_ids)


@pytest.fixture(autouse=True)
def _everyone_in_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(ledger, "_provided_work", [EveryoneInWork()])
    yield


@pytest.fixture
def facility_work(monkeypatch: pytest.MonkeyPatch) -> SqlFacilityWork:
    """The gate's own facility-work relations, read from the test database."""
    work = SqlFacilityWork()
    monkeypatch.setattr(ledger, "_provided_work", [work])
    return work
