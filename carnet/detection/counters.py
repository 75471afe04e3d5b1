"""Sliding-window counters: Redis (shared by every worker), SQL window counts, or memory.

Distinct patients in a window are counted as "patients whose last exposure falls inside it",
so one sorted set per actor (member: patient, score: last time) answers every window at once.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from sqlalchemy import String, and_, bindparam, case, func, or_, select, true, type_coerce
from sqlalchemy.orm import Session

from carnet.db.base import UtcDateTime
from carnet.detection.interfaces import ActorCounts, EventKind
from carnet.detection.models import DetectionEvent, Exposure

M15 = dt.timedelta(minutes=15)
H1 = dt.timedelta(hours=1)
H24 = dt.timedelta(hours=24)
D7 = dt.timedelta(days=7)
# The windows in seconds, as `adds` subtracts them from a time stamp on every read.
_H1_SECONDS = H1.total_seconds()
_H24_SECONDS = H24.total_seconds()
_D7_SECONDS = D7.total_seconds()


def _week_start(at: dt.datetime, since: dt.datetime | None) -> dt.datetime:
    return max(at - D7, since) if since is not None else at - D7


def _starts(at: dt.datetime, since: dt.datetime | None) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
    def floor(start: dt.datetime) -> dt.datetime:
        return max(start, since) if since is not None else start

    return floor(at - M15), floor(at - H1), floor(at - H24)


class _InstallationWindow:
    """Installation-wide distinct patients in this process: enough for one process (a clinic on
    SQLite, the in-process simulations); several workers share Redis's window instead."""

    def __init__(self) -> None:
        self._window_lock = threading.Lock()
        self._installation: dict[uuid.UUID, dt.datetime] = {}

    def add_installation(self, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime) -> None:
        with self._window_lock:
            for p in patient_ids:
                if p not in self._installation or self._installation[p] < at:
                    self._installation[p] = at
            if len(self._installation) > 200_000:  # keep the last hour only
                self._installation = {p: t for p, t in self._installation.items() if t >= at - H1}

    def installation_counts(self, session: Session, *, at: dt.datetime) -> tuple[int, int]:
        with self._window_lock:
            times = list(self._installation.values())
        return (
            sum(1 for t in times if at - M15 <= t <= at),
            sum(1 for t in times if at - H1 <= t <= at),
        )


class _AddThenCount:
    """`add_and_count` for counters with no single-round-trip form: the steps in order."""

    def add_and_count(
        self,
        session: Session,
        *,
        actor_ref: str,
        at: dt.datetime,
        since: dt.datetime | None,
        patient_ids: Sequence[uuid.UUID] = (),
        outside_care: Sequence[uuid.UUID] = (),
        exported: bool = False,
        listed: bool = False,
        events: Sequence[tuple[EventKind, str]] = (),
    ) -> ActorCounts:
        counters: Any = self  # the class it is mixed into has add_exposures, add_event, counts
        if patient_ids:
            counters.add_exposures(
                actor_ref=actor_ref,
                patient_ids=patient_ids,
                outside_care=outside_care,
                exported=exported,
                listed=listed,
                at=at,
            )
        for kind, key in events:
            counters.add_event(actor_ref=actor_ref, kind=kind, key=key, at=at)
        result: ActorCounts = counters.counts(session, actor_ref=actor_ref, at=at, since=since)
        return result


class SqlExposureCounters(_AddThenCount, _InstallationWindow):
    """Counts from the ledger tables, in the caller's transaction (so they see this request)."""

    def __init__(self) -> None:
        _InstallationWindow.__init__(self)

    def keys(
        self, session: Session, *, actor_ref: str, kind: EventKind, at: dt.datetime, window: dt.timedelta
    ) -> list[str]:
        rows = session.scalars(
            select(DetectionEvent.key)
            .where(
                DetectionEvent.actor_ref == actor_ref,
                DetectionEvent.kind == kind.value,
                DetectionEvent.at >= at - window,
                DetectionEvent.at <= at,
            )
            .distinct()
        )
        return sorted(rows)

    def add_exposures(
        self,
        *,
        actor_ref: str,
        patient_ids: Sequence[uuid.UUID],
        outside_care: Sequence[uuid.UUID],
        exported: bool,
        listed: bool,
        at: dt.datetime,
    ) -> None:
        """Nothing to do: the ledger's own rows are what this class counts."""

    def add_event(self, *, actor_ref: str, kind: EventKind, key: str, at: dt.datetime) -> None:
        """Nothing to do: the ledger writes DetectionEvent rows, which this class counts."""

    def reset(self, *, actor_ref: str) -> None:
        """Nothing to do: ActorState.restored_at bounds the windows."""

    def counts(
        self, session: Session, *, actor_ref: str, at: dt.datetime, since: dt.datetime | None
    ) -> ActorCounts:
        s15, s1, s24 = _starts(at, since)
        s7 = _week_start(at, since)
        params = {
            "actor": actor_ref,
            "at": at,
            "s15": s15,
            "s1": s1,
            "s24": s24,
            "s7": s7,
        }
        row = session.execute(_SQL_COUNTS, params).one()
        return ActorCounts(
            patients_15m=row[0],
            patients_1h=row[1],
            patients_24h=row[2],
            outside_1h=row[3],
            outside_24h=row[4],
            exported_24h=row[5],
            searches_15m=row[6],
            searches_1h=row[7],
            identifier_searches_15m=row[8],
            wildcard_searches_1h=row[9],
            deep_pages_1h=row[10],
            lists_15m=row[11],
            denials_15m=row[12],
            denials_24h=row[13],
            export_denials_1h=row[14],
            refusals_1h=row[15],
            refusals_24h=row[16],
            first_refusal_at=row[17],
            first_refusal_24h_at=row[18],
            patients_7d=int(row[19] or 0),
        )


def _sql_counts_statement() -> Any:
    """Every window count of one actor as one statement, built once: each request only binds its
    values (compiled-cache hit; building it per request cost more than running it)."""
    actor = bindparam("actor", type_=String())
    at = bindparam("at", type_=UtcDateTime())
    s15, s1, s24, s7 = (bindparam(name, type_=UtcDateTime()) for name in ("s15", "s1", "s24", "s7"))

    def seen_since(start: Any, *conditions: Any) -> Any:
        """1 if any of the patient's rows is in this window and kind, else 0 (per patient)."""
        return func.max(case((and_(Exposure.at >= start, *conditions), 1), else_=0))

    # Not the actor's own patients seen in a list (see ExposureCounters.add_and_count), and
    # not an approved export, whose volume two people decided (it has its own window).
    not_export = Exposure.channel != "export"
    targeted = and_(not_export, or_(Exposure.channel != "list", Exposure.outside_care.is_(True)))
    # The distinct patients of each window: the actor's rows grouped by patient once, each
    # window a sum of per-patient flags. The same counts as one COUNT(DISTINCT ...) per window,
    # without sorting every row of the day six times (a ward nurse's day is thousands of rows).
    per_patient = (
        select(
            seen_since(s15, targeted).label("targeted_15m"),
            seen_since(s1, targeted).label("targeted_1h"),
            seen_since(s24, not_export).label("seen_24h"),
            seen_since(s1, not_export, Exposure.outside_care.is_(True)).label("outside_1h"),
            seen_since(s24, not_export, Exposure.outside_care.is_(True)).label("outside_24h"),
            seen_since(s24, Exposure.channel == "export").label("exported_24h"),
        )
        .where(Exposure.actor_ref == actor, Exposure.at >= s24, Exposure.at <= at)
        .group_by(Exposure.patient_id)
        .subquery()
    )
    exposures = select(*(func.coalesce(func.sum(column), 0) for column in per_patient.c)).subquery()

    def keys_since(start: Any, kind: EventKind) -> Any:
        when = and_(DetectionEvent.at >= start, DetectionEvent.kind == kind.value)
        return func.count(func.distinct(case((when, DetectionEvent.key))))

    def events_since(start: Any, kind: EventKind) -> Any:
        when = and_(DetectionEvent.at >= start, DetectionEvent.kind == kind.value)
        return func.count(case((when, DetectionEvent.id)))

    refusal = and_(DetectionEvent.at >= s1, DetectionEvent.kind == EventKind.REFUSAL.value)
    refusal_24h = and_(DetectionEvent.at >= s24, DetectionEvent.kind == EventKind.REFUSAL.value)
    events = (
        select(
            keys_since(s15, EventKind.SEARCH),
            keys_since(s1, EventKind.SEARCH),
            keys_since(s15, EventKind.IDENTIFIER_SEARCH),
            events_since(s1, EventKind.WILDCARD_SEARCH),
            events_since(s1, EventKind.DEEP_PAGE),
            keys_since(s15, EventKind.LIST_VIEW),
            events_since(s15, EventKind.DENIAL),
            events_since(s24, EventKind.DENIAL),
            events_since(s1, EventKind.EXPORT_DENIAL),
            events_since(s1, EventKind.REFUSAL),
            events_since(s24, EventKind.REFUSAL),
            type_coerce(func.min(case((refusal, DetectionEvent.at))), UtcDateTime()),
            type_coerce(func.min(case((refusal_24h, DetectionEvent.at))), UtcDateTime()),
        )
        .where(DetectionEvent.actor_ref == actor, DetectionEvent.at >= s24, DetectionEvent.at <= at)
        .subquery()
    )
    # The week counts like the short windows: a list of one's own care or work (a day list, a
    # calendar) is the work itself; the patients opened from it count.
    week = (
        select(func.count(func.distinct(Exposure.patient_id)))
        .where(Exposure.actor_ref == actor, Exposure.at >= s7, Exposure.at <= at, targeted)
        .scalar_subquery()
    )
    # Two one-row aggregates joined on true, and the week: one round trip.
    return select(exposures, events, week).join_from(exposures, events, true())


_SQL_COUNTS = _sql_counts_statement()


def _targeted(
    patient_ids: Sequence[uuid.UUID], outside_care: Sequence[uuid.UUID], listed: bool
) -> Sequence[uuid.UUID]:
    """What the short windows count: all but the actor's own patients seen in a list."""
    if not listed:
        return patient_ids
    outside = set(outside_care)
    return [p for p in patient_ids if p in outside]


# Which events are counted as distinct keys (same search twice counts once) or as occurrences.
_DISTINCT_KINDS = frozenset(
    {
        EventKind.SEARCH,
        EventKind.IDENTIFIER_SEARCH,
        EventKind.LIST_VIEW,
        EventKind.ADMINISTRATION,
        EventKind.SEEN,
        EventKind.ANOMALY,
    }
)


class MemoryExposureCounters(_AddThenCount, _InstallationWindow):
    """In-process counters for unit tests and a single-process clinic without Redis."""

    def __init__(self) -> None:
        _InstallationWindow.__init__(self)
        self._lock = threading.Lock()
        # actor -> set name -> member -> last time
        self._sets: dict[str, dict[str, dict[str, dt.datetime]]] = {}

    def _touch(self, actor_ref: str, name: str, members: Iterable[str], at: dt.datetime) -> None:
        with self._lock:
            zset = self._sets.setdefault(actor_ref, {}).setdefault(name, {})
            for member in members:
                if member not in zset or zset[member] < at:
                    zset[member] = at

    def add_exposures(
        self,
        *,
        actor_ref: str,
        patient_ids: Sequence[uuid.UUID],
        outside_care: Sequence[uuid.UUID],
        exported: bool,
        listed: bool,
        at: dt.datetime,
    ) -> None:
        if exported:  # an approved export counts in its own window only
            self._touch(actor_ref, "x", (str(p) for p in patient_ids), at)
            return
        self._touch(actor_ref, "a", (str(p) for p in patient_ids), at)
        targeted = _targeted(patient_ids, outside_care, listed)
        self._touch(actor_ref, "w", (str(p) for p in targeted), at)
        self._touch(actor_ref, "p", (str(p) for p in targeted), at)
        self._touch(actor_ref, "o", (str(p) for p in outside_care), at)

    def add_event(self, *, actor_ref: str, kind: EventKind, key: str, at: dt.datetime) -> None:
        member = key if kind in _DISTINCT_KINDS else uuid.uuid4().hex
        self._touch(actor_ref, f"e:{kind.value}", (member,), at)

    def reset(self, *, actor_ref: str) -> None:
        with self._lock:
            self._sets.pop(actor_ref, None)

    def keys(
        self, session: Session, *, actor_ref: str, kind: EventKind, at: dt.datetime, window: dt.timedelta
    ) -> list[str]:
        with self._lock:
            zset = dict(self._sets.get(actor_ref, {}).get(f"e:{kind.value}", {}))
        return sorted(k for k, t in zset.items() if at - window <= t <= at)

    def counts(
        self, session: Session, *, actor_ref: str, at: dt.datetime, since: dt.datetime | None
    ) -> ActorCounts:
        s15, s1, s24 = _starts(at, since)
        with self._lock:
            sets = {name: dict(zset) for name, zset in self._sets.get(actor_ref, {}).items()}

        def n(name: str, start: dt.datetime) -> int:
            return sum(1 for t in sets.get(name, {}).values() if start <= t <= at)

        refusals = [t for t in sets.get("e:refusal", {}).values() if s1 <= t <= at]
        refusals_24h = [t for t in sets.get("e:refusal", {}).values() if s24 <= t <= at]

        return ActorCounts(
            patients_15m=n("p", s15),
            patients_1h=n("p", s1),
            patients_24h=n("a", s24),
            outside_1h=n("o", s1),
            outside_24h=n("o", s24),
            exported_24h=n("x", s24),
            patients_7d=n("w", _week_start(at, since)),
            searches_15m=n("e:search", s15),
            searches_1h=n("e:search", s1),
            identifier_searches_15m=n("e:identifier-search", s15),
            wildcard_searches_1h=n("e:wildcard-search", s1),
            deep_pages_1h=n("e:deep-page", s1),
            lists_15m=n("e:list-view", s15),
            denials_15m=n("e:denial", s15),
            denials_24h=n("e:denial", s24),
            export_denials_1h=n("e:export-denial", s1),
            refusals_1h=n("e:refusal", s1),
            refusals_24h=n("e:refusal", s24),
            first_refusal_at=min(refusals, default=None),
            first_refusal_24h_at=min(refusals_24h, default=None),
        )


class RedisExposureCounters:
    """Counters in Redis sorted sets, shared by every worker. Keys expire after a day."""

    def __init__(self, client: Any, *, prefix: str = "carnet:det") -> None:
        self._redis = client
        self._prefix = prefix
        self._record_script: Any = None
        self._installation_key = self._key("installation", "p")
        # Per actor: its sets' keys, and the keys and indices of its counts (`_plan`).
        self._plans: dict[str, _Plan] = {}

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "carnet:det") -> RedisExposureCounters:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), prefix=prefix)

    @property
    def client(self) -> Any:
        return self._redis

    def _key(self, actor_ref: str, name: str) -> str:
        return f"{self._prefix}:{actor_ref}:{name}"

    def _names(self) -> list[str]:
        return ["a", "w", "p", "o", "x", *(f"e:{kind.value}" for kind in EventKind)]

    def _groups(
        self,
        patient_ids: Sequence[uuid.UUID],
        outside_care: Sequence[uuid.UUID],
        exported: bool,
        listed: bool,
    ) -> list[tuple[str, Sequence[uuid.UUID]]]:
        if exported:  # an approved export counts in its own window only
            return [("x", patient_ids)]
        targeted = _targeted(patient_ids, outside_care, listed)
        return [("a", patient_ids), ("p", targeted), ("o", outside_care), ("w", targeted)]

    def add_event(self, *, actor_ref: str, kind: EventKind, key: str, at: dt.datetime) -> None:
        member = key if kind in _DISTINCT_KINDS else uuid.uuid4().hex
        score = at.timestamp()
        redis_key = self._key(actor_ref, f"e:{kind.value}")
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(redis_key, {member: score}, gt=True)
        pipe.zremrangebyscore(redis_key, "-inf", score - H24.total_seconds())
        pipe.expire(redis_key, int(H24.total_seconds()) + 3600)
        pipe.execute()

    def reset(self, *, actor_ref: str) -> None:
        self._redis.delete(*(self._key(actor_ref, name) for name in self._names()))

    def keys(
        self, session: Session, *, actor_ref: str, kind: EventKind, at: dt.datetime, window: dt.timedelta
    ) -> list[str]:
        found = self._redis.zrangebyscore(
            self._key(actor_ref, f"e:{kind.value}"), (at - window).timestamp(), at.timestamp()
        )
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in found)

    def add_installation(self, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime) -> None:
        key = self._key("installation", "p")
        score = at.timestamp()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {str(p): score for p in patient_ids}, gt=True)
        pipe.zremrangebyscore(key, "-inf", score - H1.total_seconds())
        pipe.expire(key, int(H1.total_seconds()) + 600)
        pipe.execute()

    def installation_counts(self, session: Session, *, at: dt.datetime) -> tuple[int, int]:
        key = self._key("installation", "p")
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcount(key, (at - M15).timestamp(), at.timestamp())
        pipe.zcount(key, (at - H1).timestamp(), at.timestamp())
        m15, h1 = pipe.execute()
        return int(m15), int(h1)

    def _wanted(self, at: dt.datetime, since: dt.datetime | None) -> list[tuple[str, float]]:
        """The (set, window start) of every count, in ActorCounts' field order."""
        s15, s1, s24 = (s.timestamp() for s in _starts(at, since))
        return [
            ("p", s15),
            ("p", s1),
            ("a", s24),
            ("o", s1),
            ("o", s24),
            ("x", s24),
            ("w", _week_start(at, since).timestamp()),
            ("e:search", s15),
            ("e:search", s1),
            ("e:identifier-search", s15),
            ("e:wildcard-search", s1),
            ("e:deep-page", s1),
            ("e:list-view", s15),
            ("e:denial", s15),
            ("e:denial", s24),
            ("e:export-denial", s1),
            ("e:refusal", s1),
            ("e:refusal", s24),
        ]

    def _script(self) -> Any:
        if self._record_script is None:
            self._record_script = self._redis.register_script(_RECORD_AND_COUNT)
        return self._record_script

    def counts(
        self, session: Session, *, actor_ref: str, at: dt.datetime, since: dt.datetime | None
    ) -> ActorCounts:
        return self.add_and_count(session, actor_ref=actor_ref, at=at, since=since)

    def add_and_count(
        self,
        session: Session,
        *,
        actor_ref: str,
        at: dt.datetime,
        since: dt.datetime | None,
        patient_ids: Sequence[uuid.UUID] = (),
        outside_care: Sequence[uuid.UUID] = (),
        exported: bool = False,
        listed: bool = False,
        events: Sequence[tuple[EventKind, str]] = (),
    ) -> ActorCounts:
        """One round trip (a server-side script): record, then count every window."""
        adds = self.adds(
            actor_ref=actor_ref,
            at=at,
            patient_ids=patient_ids,
            outside_care=outside_care,
            exported=exported,
            listed=listed,
            events=events,
        )
        answer = self.request(actor_ref=actor_ref, at=at, since=since, adds=adds)
        assert answer.counts is not None  # no containment key was asked
        return answer.counts

    def adds(
        self,
        *,
        actor_ref: str,
        at: dt.datetime,
        patient_ids: Sequence[uuid.UUID] = (),
        outside_care: Sequence[uuid.UUID] = (),
        exported: bool = False,
        listed: bool = False,
        events: Sequence[tuple[EventKind, str]] = (),
        installation: Sequence[uuid.UUID] = (),
    ) -> list[Add]:
        """What one request adds to the sorted sets (its time travels with it: an add may be
        sent with a later request's script)."""
        stamp = at.timestamp()
        score = repr(stamp)  # text: a Lua number would be printed with 14 digits
        adds: list[Add] = []
        if patient_ids or events:
            plan = self._plan(actor_ref)
        # A read's groups and its installation list are mostly the same list (`_targeted`
        # answers `patient_ids` itself; the ledger passes it as `installation`): its members'
        # text is made once and shared (read only: the script's JSON).
        made: tuple[Sequence[uuid.UUID] | None, list[str]] = (None, [])
        if patient_ids and not (outside_care or exported or listed):
            # A read of patients in care (nearly every request): `_groups`' a, p and w are the
            # patients themselves (o is empty), as below.
            made = (patient_ids, [str(p) for p in patient_ids])
            day = repr(stamp - _H24_SECONDS)
            adds += (
                Add(plan.sets["a"], day, _H24_TTL, made[1], score),
                Add(plan.sets["p"], day, _H24_TTL, made[1], score),
                Add(plan.sets["w"], repr(stamp - _D7_SECONDS), _D7_TTL, made[1], score),
            )
        elif patient_ids:
            day = repr(stamp - _H24_SECONDS)
            for name, ids in self._groups(patient_ids, outside_care, exported, listed):
                if ids:
                    if made[0] is not ids:
                        made = (ids, [str(p) for p in ids])
                    if name == "w":
                        adds.append(Add(plan.sets[name], repr(stamp - _D7_SECONDS), _D7_TTL, made[1], score))
                    else:
                        adds.append(Add(plan.sets[name], day, _H24_TTL, made[1], score))
        for kind, key in events:
            member = key if kind in _DISTINCT_KINDS else uuid.uuid4().hex
            adds.append(Add(plan.events[kind], repr(stamp - _H24_SECONDS), _H24_TTL, [member], score))
        if installation:
            if made[0] is not installation:
                made = (installation, [str(p) for p in installation])
            adds.append(Add(self._installation_key, repr(stamp - _H1_SECONDS), _H1_TTL, made[1], score))
        return adds

    def send(self, adds: Sequence[Add]) -> None:
        """Only these adds (held back by quiet requests), in one round trip: the same script,
        asked for no count."""
        keys: dict[str, int] = {}
        earlier = [
            [keys.setdefault(a.key, len(keys) + 1), a.horizon, a.ttl, a.members, a.score] for a in adds
        ]
        request = {"end": "0", "earlier": earlier, "add": [], "count": [], "first": [], "flags": []}
        self._script()(keys=sorted(keys, key=keys.__getitem__), args=[json.dumps(request)])

    def request(
        self,
        *,
        actor_ref: str,
        at: dt.datetime,
        since: dt.datetime | None,
        adds: Sequence[Add] = (),
        earlier: Sequence[Add] = (),
        contained_key: str | None = None,
        restored: dt.datetime | None = None,
        flag_keys: Sequence[str] = (),
    ) -> Answer:
        """Everything detection asks Redis for one request, in one round trip (a server-side
        script): the adds of earlier requests sent late (`earlier`), then — unless the actor's
        containment flag (`contained_key`) is set and not undone by a restore since — this
        request's adds and every window count; and the flags at `flag_keys` (campaigns)."""
        plan = self._plan(actor_ref)
        # The actor's count keys first (the same indices every request: `_Plan`), then the
        # containment and flag keys, then the adds' keys.
        keys = dict(plan.count_keys)

        def encoded(add: Add) -> list[Any]:
            index = keys.get(add.key)
            if index is None:
                index = keys[add.key] = len(keys) + 1  # Lua counts from 1
            return [index, add.horizon, add.ttl, add.members, add.score]

        s15, s1, s24 = (repr(s.timestamp()) for s in _starts(at, since))
        starts = {"15m": s15, "1h": s1, "24h": s24, "7d": repr(_week_start(at, since).timestamp())}
        request: dict[str, Any] = {
            "end": repr(at.timestamp()),
            "count": [[index, starts[window]] for index, window in plan.counts],
            "first": [[plan.refusals, s1], [plan.refusals, s24]],
        }
        if contained_key is not None:
            request["contained"] = keys.setdefault(contained_key, len(keys) + 1)
            if restored is not None:
                request["restored"] = repr(restored.timestamp())
        request["flags"] = [keys.setdefault(k, len(keys) + 1) for k in flag_keys]
        request["earlier"] = [encoded(a) for a in earlier]
        request["add"] = [encoded(a) for a in adds]
        status, *values = self._script()(keys=list(keys), args=[json.dumps(request)])
        if _text(status) == "contained":
            return Answer(None, _text(values[0]), {})
        n = len(_COUNTED)
        first, first_24h = values[n], values[n + 1]
        flags = dict(zip(flag_keys, (_text(v) for v in values[n + 2 :]), strict=True))

        def stamp(found: Any) -> dt.datetime | None:
            return dt.datetime.fromtimestamp(float(found), dt.UTC) if found else None

        # ActorCounts' fields without its frozen __init__ (twenty object.__setattr__ calls).
        counts = object.__new__(ActorCounts)
        counts.__dict__.update(zip(_COUNTED, (int(v) for v in values[:n]), strict=True))
        counts.__dict__["first_refusal_at"] = stamp(first)
        counts.__dict__["first_refusal_24h_at"] = stamp(first_24h)
        return Answer(counts, None, flags)

    def _plan(self, actor_ref: str) -> _Plan:
        found = self._plans.get(actor_ref)
        if found is None:
            found = _Plan(self, actor_ref)
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[actor_ref] = found
        return found


class _Plan:
    """One actor's keys: its sets', its events', and those its counts read, numbered as every
    request's script gets them first (`count_keys`), with each count's (key index, window), in
    ActorCounts' order (`_wanted`'s)."""

    __slots__ = ("count_keys", "counts", "events", "refusals", "sets")

    def __init__(self, counters: RedisExposureCounters, actor_ref: str) -> None:
        self.sets = {name: counters._key(actor_ref, name) for name in ("a", "w", "p", "o", "x")}
        self.events = {kind: counters._key(actor_ref, f"e:{kind.value}") for kind in EventKind}
        self.count_keys: dict[str, int] = {}
        self.counts: list[tuple[int, str]] = []
        for name, window in _WINDOWED:
            key = counters._key(actor_ref, name)
            self.counts.append((self.count_keys.setdefault(key, len(self.count_keys) + 1), window))
        self.refusals = self.count_keys[counters._key(actor_ref, "e:refusal")]


# The (set, window) of every count, in ActorCounts' field order (as `_wanted` gives their starts).
_WINDOWED = (
    ("p", "15m"),
    ("p", "1h"),
    ("a", "24h"),
    ("o", "1h"),
    ("o", "24h"),
    ("x", "24h"),
    ("w", "7d"),
    ("e:search", "15m"),
    ("e:search", "1h"),
    ("e:identifier-search", "15m"),
    ("e:wildcard-search", "1h"),
    ("e:deep-page", "1h"),
    ("e:list-view", "15m"),
    ("e:denial", "15m"),
    ("e:denial", "24h"),
    ("e:export-denial", "1h"),
    ("e:refusal", "1h"),
    ("e:refusal", "24h"),
)
_COUNTED = tuple(f.name for f in fields(ActorCounts) if not f.name.startswith("first_"))
_H24_TTL = int(_H24_SECONDS) + 3600
_D7_TTL = int(_D7_SECONDS) + 3600
_H1_TTL = int(_H1_SECONDS) + 600


class Add(NamedTuple):
    """Members added to one sorted set at one time (text scores: no precision lost in Lua)."""

    key: str
    horizon: str  # members older than this leave the set
    ttl: int
    members: list[str]
    score: str


@dataclass(frozen=True)
class Answer:
    """Redis's answer to one request: the counts, or the containment flag that stopped it (then
    nothing of the request was added), and the flags read."""

    counts: ActorCounts | None
    contained: str | None
    flags: dict[str, str | None]


def _text(value: Any) -> str | None:
    if value is None or value is False:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# One request's round trip: the adds of earlier requests this worker kept back, the containment
# flag (if set, and not older than a restore, nothing of this request is added), this request's
# exposures and events, every window count, the first refusals, and the flags asked for. Scores
# and bounds arrive as text so that no precision is lost in Lua; GT keeps a patient's latest time
# even if workers' clocks interleave.
_RECORD_AND_COUNT = """
local req = cjson.decode(ARGV[1])
local function apply(adds)
  for _, add in ipairs(adds) do
    local key, members = KEYS[add[1]], add[4]
    for i = 1, #members, 200 do
      local args = {'GT'}
      for j = i, math.min(i + 199, #members) do
        args[#args + 1] = add[5]
        args[#args + 1] = members[j]
      end
      redis.call('ZADD', key, unpack(args))
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', add[2])
    redis.call('EXPIRE', key, add[3])
  end
end
apply(req.earlier)
if req.contained then
  local flag = redis.call('GET', KEYS[req.contained])
  if flag then
    local stamp = tonumber(string.match(flag, '^([^|]*)|'))
    if req.restored and stamp and stamp <= tonumber(req.restored) then
      redis.call('DEL', KEYS[req.contained])
    else
      return {'contained', flag}
    end
  end
end
apply(req.add)
local out = {'ok'}
for _, c in ipairs(req.count) do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[c[1]], c[2], req['end'])
end
for _, f in ipairs(req.first) do
  local found = redis.call('ZRANGEBYSCORE', KEYS[f[1]], f[2], req['end'], 'WITHSCORES', 'LIMIT', 0, 1)
  out[#out + 1] = found[2] or false
end
for _, k in ipairs(req.flags) do
  out[#out + 1] = redis.call('GET', KEYS[k])
end
return out
"""
