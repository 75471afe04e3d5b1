"""What every FHIR module shares: OperationOutcome, the request's gate and versions, Bundles,
shared mapping and search helpers, and the registry of the modules the router assembly serves.
Nothing here imports a resource module (an import-linter contract proves it)."""
