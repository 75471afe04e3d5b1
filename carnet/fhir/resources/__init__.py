"""One module per FHIR resource type (or a small family: billing, directory): its mapping both
ways, its search parameters, its routes, and its `MODULE` declaration (what the
CapabilityStatement lists, what a Bundle entry may do with it). A resource module imports the
shared core (carnet.fhir.core), never another resource module."""
