"""HL7 FHIR R4 REST API at /fhir. Every interaction goes through the gate."""
