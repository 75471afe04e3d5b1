"""Kept for carnet.phi.importer only, until it imports from carnet.fhir.core.outcome.
Nothing in carnet.fhir imports this module (an import-linter contract proves it)."""

from carnet.fhir.core.outcome import operation_outcome, status_for

__all__ = ["operation_outcome", "status_for"]
