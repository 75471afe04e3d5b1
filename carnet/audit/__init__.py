"""Tamper-evident audit trail: events, hash chain, signed checkpoints, verification."""
