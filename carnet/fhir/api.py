"""Kept for carnet.phi.importer only, until it imports from carnet.fhir.core.api.
Nothing in carnet.fhir imports this module (an import-linter contract proves it)."""

from carnet.fhir.core.api import type_name

__all__ = ["type_name"]
