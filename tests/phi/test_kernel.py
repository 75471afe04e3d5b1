"""The gate kernel's registry: every operation a domain declares is bound on the facade (none is
left unreachable, none bypasses the kernel), and only a declared operation can be bound."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

from carnet.access.policy import ResourceType
from carnet.audit.interfaces import AuditKind
from carnet.phi.gate import Gate, public_operations
from carnet.phi.kernel import Guard, GuardedTx, guarded, operation

# Where the domains keep their operations (docs/ARCHITECTURE.md).
OPERATION_MODULES = (
    "carnet.patients.operations",
    "carnet.patients.merge",
    "carnet.scheduling.operations",
    "carnet.records.operations",
    "carnet.records.stays",
    "carnet.records.consents",
    "carnet.records.care_teams",
    "carnet.records.provenance",
    "carnet.records.orders",
    "carnet.interfaces.operation",
    "carnet.prescriptions.operations",
    "carnet.coverage.operations",
    "carnet.billing.operations",
    "carnet.interventions.operations",
    "carnet.interventions.administering",
    "carnet.prescriptions.printing",
    "carnet.billing.printing",
    "carnet.records.printing",
    "carnet.phi.exports",
    "carnet.phi.breakglass",
    "carnet.phi.validation",
)


def _declared() -> dict[Any, str]:
    found: dict[Any, str] = {}
    for name in OPERATION_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            guard = getattr(value, "__gate_guard__", None)
            if inspect.isfunction(value) and isinstance(guard, Guard) and value.__module__ == name:
                found[value] = f"{name}.{attr}"
    return found


def test_every_declared_operation_is_a_method_of_the_gate_and_nothing_else_is() -> None:
    bound = {getattr(Gate, name).__wrapped__: name for name in public_operations()}
    declared = _declared()
    unbound = sorted(where for fn, where in declared.items() if fn not in bound)
    assert not unbound, f"guarded operations no Gate method runs: {unbound}"
    for name in public_operations():
        guard = getattr(getattr(Gate, name).__wrapped__, "__gate_guard__", None)
        assert isinstance(guard, Guard), name
        assert getattr(Gate, name).__gate_audit_kind__ == guard.kind, name
    # + the transaction Bundle and its directory step (both in gate.py), + apply_message bound a
    # second time as a group (Gate.apply_hl7_messages, carnet/phi/grouped.py)
    assert len(declared) + 3 == len(public_operations())


def test_domain_operations_take_the_guarded_transaction_then_keywords_only() -> None:
    for fn, where in _declared().items():
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "tx" and params[0].kind is inspect.Parameter.POSITIONAL_ONLY, where
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), where


def test_only_a_declared_operation_can_be_bound() -> None:
    def undeclared(tx: GuardedTx, /, *, patient_id: str) -> str:
        return patient_id

    with pytest.raises(TypeError, match="not declared @guarded"):
        operation(undeclared)
    declared = guarded(AuditKind.PHI_READ, ResourceType.PATIENT, targeted=True)(undeclared)
    assert operation(declared).__gate_audit_kind__ == AuditKind.PHI_READ  # type: ignore[attr-defined]
