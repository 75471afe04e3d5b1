"""Shared primitives: ids, clock, errors. Imports nothing else of carnet."""
