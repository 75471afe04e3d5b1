"""PostgreSQL server settings carnet relies on without owning them, checked when it starts.

Statistics kept fresh by autovacuum are one: PostgreSQL plans the audit trail's foreign-key
check (`audit_event_patients.seq -> audit_events.seq`) once per connection and keeps the plan
until the table's statistics change. Planned while the trail was small, that check is a
sequential scan; without autovacuum (or with `track_counts` off, which stops it) nothing
re-plans it, and every audited access then reads the whole, growing, trail: measured on the
benchmarks' server, PostgreSQL's CPU per read climbed from 0.7 to over 3 ms within minutes
(docs/BENCHMARKS.md, "s12-lead"). The check does not refuse to start: it says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine, text

_SETTINGS = ("autovacuum", "track_counts")


def server_warnings(engine: Engine) -> list[str]:
    """One sentence per setting of the server that will make carnet slow down as it is used;
    empty when all is well or the database is not PostgreSQL."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"), {"names": list(_SETTINGS)}
        )
        return warnings_for({name: setting for name, setting in rows})


def warnings_for(settings: Mapping[str, str]) -> list[str]:
    """The warnings for these values of pg_settings (name -> setting)."""
    return [
        f"PostgreSQL runs with {name} off: planner statistics go stale and the audit trail's "
        "foreign-key check comes to read the whole trail on every audited access; turn it on "
        "(after a restore or an upgrade, also run `vacuumdb --all --analyze-in-stages`)"
        for name in _SETTINGS
        if settings.get(name) == "off"
    ]
