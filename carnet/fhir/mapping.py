"""Kept for carnet.phi.importer only, until it imports from carnet.fhir.resources: the mappings
it reuses. Nothing in carnet.fhir imports this module (an import-linter contract proves it)."""

from carnet.fhir.resources.allergy import allergy_input
from carnet.fhir.resources.billing import INVOICE_ENCOUNTER
from carnet.fhir.resources.patient import INS_SYSTEM, patient_input

__all__ = ["INS_SYSTEM", "INVOICE_ENCOUNTER", "allergy_input", "patient_input"]
