"""The hash chain's canonical encoding, shared by the writer and the verifier."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

GENESIS_HASH = "0" * 64
# The chain is split into lanes, each its own hash chain (audit_chain_head rows 1..LANES): on
# PostgreSQL a transaction appends in the lowest lane no other transaction holds (migration
# 0012_auditlanes, carnet_audit_lane), so up to LANES audited transactions commit at once.
# SQLite, which serialises writers anyway, uses lane 1 only. Changing it needs a migration.
LANES = 8

# The fields covered by the hash, in a fixed order. Adding one is a format change.
CHAINED_FIELDS = (
    "seq",
    "recorded_at",
    "kind",
    "outcome",
    "actor_ref",
    "actor_kind",
    "account_id",
    "username",
    "roles",
    "session_id",
    "client_id",
    "address",
    "user_agent",
    "purpose_of_use",
    "resource_type",
    "resource_ids",
    "patient_ids",
    "query",
    "policy_reason",
    "break_glass_reason",
    "detail",
)


def canonical(fields: dict[str, Any]) -> bytes:
    """Deterministic bytes for an event: same values, same bytes, on any database."""
    return canonical_values([_plain(fields[name]) for name in CHAINED_FIELDS])


# The encoding is PostgreSQL's COPY text format (tab-separated, backslash escapes, \N for NULL):
# unambiguous, and exactly what `COPY ... TO STDOUT` emits, so the verifier can hash the
# database's own output line without parsing it (see carnet.audit.verify).
_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
)


_SPECIAL = re.compile("[\\\\\b\f\n\r\t\v]")


def canonical_values(values: Sequence[str | int | None]) -> bytes:
    """The same bytes from values already in CHAINED_FIELDS order and plain (the verifier's path)."""
    if _SPECIAL.search("".join([v for v in values if isinstance(v, str)])) is None:
        # Nothing to escape (the usual case): one join instead of a translate per field.
        return "\t".join(
            ["\\N" if v is None else v if isinstance(v, str) else str(v) for v in values]
        ).encode()
    return "\t".join([_text(v) for v in values]).encode()


def _text(value: str | int | None) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, int):
        return str(value)
    return value.translate(_ESCAPES)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def link(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(fields)).hexdigest()


def link_values(prev_hash: str, values: Sequence[str | int | None]) -> str:
    """`link` for values already plain and in CHAINED_FIELDS order (the writer's hot path)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_values(values)).hexdigest()
