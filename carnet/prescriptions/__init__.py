"""Prescriptions (FHIR MedicationRequest). Behind carnet.phi."""
