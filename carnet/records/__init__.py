"""The clinical record: notes (versioned), allergies, conditions, observations, reports."""
