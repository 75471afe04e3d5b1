"""What was done or given to a patient: immunizations, procedures, medication administrations
and medication statements, each kept whole as received (FHIR), behind the gate."""
