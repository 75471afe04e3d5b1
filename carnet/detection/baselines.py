"""Baselines: each account's and each role's usual volume, from the exposure ledger.

A nightly job (`carnet incident baselines`) computes, over the last weeks, the 95th percentile
of distinct patients per 15 minutes, per hour and per day (counting only periods with
activity), and the share of exposures at night. The volume rule asks for a step-up from
`baseline_factor` times the larger of the account's and its role's usual level — never below
the role's floor, so a quiet account is not stopped by a busy morning either.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carnet.access.actor import ActorKind
from carnet.access.models import RoleGrant
from carnet.audit.interfaces import Outcome
from carnet.audit.models import AuditEvent
from carnet.detection.administration import WATCHED
from carnet.detection.config import DetectionConfig
from carnet.detection.models import Exposure, ExposureBaseline
from carnet.detection.rules import is_off_hours
from carnet.kernel import clock

_BUCKETS = {"m15": 15 * 60, "h1": 3600, "h24": 86400}


@dataclass(frozen=True)
class BaselineSummary:
    accounts: int
    roles: int
    exposures: int


def p95(values: list[int]) -> int:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def refresh_baselines(
    session: Session, *, config: DetectionConfig, days: int = 28, now: dt.datetime | None = None
) -> BaselineSummary:
    """Recompute every baseline from the ledger, in the caller's transaction."""
    now = now or clock.now()
    since = now - dt.timedelta(days=days)
    # actor -> window -> bucket start -> patients
    buckets: dict[str, dict[str, dict[int, set[uuid.UUID]]]] = defaultdict(lambda: defaultdict(dict))
    night: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    exposures = 0
    rows = session.execute(
        select(Exposure.actor_ref, Exposure.patient_id, Exposure.at, Exposure.channel, Exposure.outside_care)
        .where(Exposure.at >= since, Exposure.at < now)
        .execution_options(yield_per=10_000)
    )
    # The installation's own rate, as its campaign rule counts it (every actor; no export, no
    # list of one's own patients).
    installation: dict[str, dict[int, set[uuid.UUID]]] = defaultdict(dict)
    for actor_ref, patient_id, at, channel, outside in rows:
        exposures += 1
        seconds = int(at.timestamp())
        for window, width in _BUCKETS.items():
            buckets[actor_ref][window].setdefault(seconds - seconds % width, set()).add(patient_id)
            if channel != "export" and (channel != "list" or outside):
                installation[window].setdefault(seconds - seconds % width, set()).add(patient_id)
        total[actor_ref] += 1
        night[actor_ref] += is_off_hours(config, at)

    roles_of: dict[str, set[str]] = defaultdict(set)
    for account_id, role in session.execute(
        select(RoleGrant.account_id, RoleGrant.role).where(RoleGrant.status == "active")
    ):
        roles_of[f"account:{account_id}"].add(role)

    role_counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    rows_out: list[dict[str, object]] = []
    for actor_ref, windows in buckets.items():
        counts = {w: [len(p) for p in windows[w].values()] for w in _BUCKETS}
        rows_out.append(
            {
                "subject": actor_ref,
                **{w: p95(counts[w]) for w in _BUCKETS},
                "off_hours_share": night[actor_ref] / total[actor_ref],
                "computed_at": now,
            }
        )
        for role in roles_of.get(actor_ref, ()):
            for w in _BUCKETS:
                role_counts[role][w].extend(counts[w])
    for role, counts in role_counts.items():
        rows_out.append(
            {
                "subject": f"role:{role}",
                **{w: p95(counts[w]) for w in _BUCKETS},
                "off_hours_share": 0.0,  # night work is judged per account
                "computed_at": now,
            }
        )
    if installation:
        rows_out.append(
            {
                "subject": "installation",
                **{w: p95([len(p) for p in installation[w].values()]) for w in _BUCKETS},
                "off_hours_share": 0.0,
                "computed_at": now,
            }
        )
    rows_out.extend(_administration_baselines(session, since=since, now=now))
    session.execute(delete(ExposureBaseline))
    for row in rows_out:
        session.add(ExposureBaseline(**row))
    return BaselineSummary(accounts=len(buckets), roles=len(role_counts), exposures=exposures)


def _administration_baselines(
    session: Session, *, since: dt.datetime, now: dt.datetime
) -> list[dict[str, object]]:
    """Each administrator's, and the installation's, usual access-widening actions per active
    hour and day (p95), from the audit trail: subjects `admin:<actor>` and `admin:installation`."""
    counts: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    rows = session.execute(
        select(AuditEvent.actor_ref, AuditEvent.recorded_at).where(
            AuditEvent.kind.in_([k.value for k in WATCHED]),
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.actor_kind == ActorKind.STAFF.value,
            AuditEvent.recorded_at >= since,
            AuditEvent.recorded_at < now,
        )
    )
    for actor_ref, at in rows:
        seconds = int(at.timestamp())
        for subject in (f"admin:{actor_ref}", "admin:installation"):
            for window in ("h1", "h24"):
                width = _BUCKETS[window]
                counts[subject][window][seconds - seconds % width] += 1
    return [
        {
            "subject": subject[:80],
            "m15": 0,
            "h1": p95(list(windows["h1"].values())),
            "h24": p95(list(windows["h24"].values())),
            "off_hours_share": 0.0,
            "computed_at": now,
        }
        for subject, windows in counts.items()
    ]
