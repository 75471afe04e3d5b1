"""Running carnet: hardening headers, health and readiness, metrics, logs, traces, backups."""
