"""Wires metrics and gate-step spans into the runtime's audit writer and exposure ledger.

Neither the audit context nor detection imports this one: the runtime hands them observers.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from carnet.audit.interfaces import AuditRecord
from carnet.operations import metrics
from carnet.operations.tracing import finished_step, gate_step, recording


def observe_audit(records: Sequence[AuditRecord], seconds: float) -> None:
    metrics.observe_audit(records, seconds)
    finished_step("audit", seconds, events=len(records))


def instrument_ledger(ledger: Any) -> Any:
    """Count exposures per channel and trace the ledger's steps, on the ledger itself (callers
    check its type, so it is not wrapped in a proxy)."""
    record = ledger.record
    record_denial = ledger.record_denial
    exposures: dict[Any, Any] = {}  # the exposures counter's child per channel (a finite set)

    @functools.wraps(record)
    def counted_record(*args: Any, patient_ids: Sequence[uuid.UUID], channel: Any, **kwargs: Any) -> None:
        if recording():
            with gate_step("exposure", channel=str(channel), patients=len(patient_ids)):
                record(*args, patient_ids=patient_ids, channel=channel, **kwargs)
        else:  # gate_step's own no-span branch, without its generator (every read comes here)
            record(*args, patient_ids=patient_ids, channel=channel, **kwargs)
        # Counted once detection let them through (a containment rolls the access back).
        counter = exposures.get(channel)
        if counter is None:
            counter = exposures[channel] = metrics.child(metrics.EXPOSURES, str(channel))
        counter.inc(1 if len(patient_ids) == 1 else len(set(patient_ids)))

    @functools.wraps(record_denial)
    def traced_denial(*args: Any, **kwargs: Any) -> None:
        with gate_step("denial"):
            record_denial(*args, **kwargs)

    ledger.record = counted_record
    ledger.record_denial = traced_denial
    return ledger
