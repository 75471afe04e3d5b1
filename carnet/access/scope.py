"""The facility scope of a transaction: the second wall (PostgreSQL row-level security).

Migration 0002 gives the patient tables a policy that shows only the facilities listed in the
transaction setting `carnet.facility_ids`. The gate (and the system door, with `*`) declares the
scope at the start of each transaction and drops to the non-superuser role `carnet_app`, so a
query that escapes the gate's own filters still cannot see another facility's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

APP_ROLE = "carnet_app"
ALL_FACILITIES: Literal["*"] = "*"


def enter_scope(session: Session, facilities: Iterable[uuid.UUID] | Literal["*"]) -> None:
    """Declare this transaction's facilities (SQLite has no RLS: the gate's own filters apply)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    value: str
    if facilities == ALL_FACILITIES:
        value = ALL_FACILITIES
    else:
        # An empty scope is the empty string: the policy then shows no row at all.
        value = ",".join(sorted(str(uuid.UUID(str(f))) for f in facilities))
    # One round trip for both: the value is '*' or canonical UUIDs joined by commas, safe to inline.
    session.connection().execute(
        text(f"SET LOCAL ROLE {APP_ROLE}; SELECT set_config('carnet.facility_ids', '{value}', true)")
    )
