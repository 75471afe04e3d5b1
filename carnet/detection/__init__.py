"""Exposure ledger, detection rules, canaries, containment, alerts."""
