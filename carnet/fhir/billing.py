"""Kept for carnet.phi.importer only, until it imports from carnet.fhir.resources.billing.
Nothing in carnet.fhir imports this module (an import-linter contract proves it)."""

from carnet.fhir.resources.billing import invoice_input, payment_parts

__all__ = ["invoice_input", "payment_parts"]
