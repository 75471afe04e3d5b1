"""THE GATE: the only way to read or write patient data (DESIGN.md invariant 1)."""
