"""The exposure ledger and the detection it drives, inside the gate's transaction.

`record` writes one Exposure row per patient that left, updates the actor's window counters,
runs the rules and answers with the graduated response: record (an alert), step-up, throttle
or contain. Whatever must outlive a refused request (the containment, alerts, the refusal
itself) is written in a dedicated transaction once the caller's transaction has ended — so it
survives the gate's rollback, and never waits on locks that transaction still holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Engine, Row, String, Table, bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PATIENT_DATA_ROLES
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.audit.writer import SqlAuditWriter
from carnet.detection import rules
from carnet.detection.config import DetectionConfig, get_detection_config
from carnet.detection.containment import (
    CONTAINED,
    ContainmentFlags,
    MemoryContainmentFlags,
    RedisContainmentFlags,
    contain,
    contained_message,
    raise_alert,
)
from carnet.detection.counters import RedisExposureCounters, SqlExposureCounters
from carnet.detection.interfaces import (
    Channel,
    EventKind,
    ExposureCounters,
    Finding,
    Level,
    SearchEvent,
    SearchShape,
    WorkRelations,
)
from carnet.detection.models import (
    ActorAddress,
    ActorState,
    CanaryPatient,
    DetectionEvent,
    Exposure,
    ExposureBaseline,
)
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, StepUpRequired, Throttled
from carnet.kernel.ids import new_id
from carnet.settings import Settings, get_settings

log = logging.getLogger("carnet.detection")

# Core statements for what every guarded request runs: plain rows, no ORM unit of work.
_STATES = cast(Table, ActorState.__table__).c
_ACTOR_STATE = select(_STATES.status, _STATES.reason, _STATES.restored_at).where(
    _STATES.actor_ref == bindparam("actor_ref", type_=String())
)
_INSERT_EXPOSURE = insert(cast(Table, Exposure.__table__))

_PENDING = "carnet.detection.pending"
_HOOKED = "carnet.detection.hooked"
_BASELINE_TTL = 300.0

_SHAPE_EVENTS = {
    SearchShape.IDENTIFIER: (EventKind.SEARCH, EventKind.IDENTIFIER_SEARCH),
    SearchShape.NAME: (EventKind.SEARCH,),
    SearchShape.WILDCARD: (EventKind.SEARCH, EventKind.WILDCARD_SEARCH),
    SearchShape.LIST: (EventKind.LIST_VIEW,),
}

AfterAction = Callable[[Session], None]

# The facility-work relations the gate's package provides when it is imported (detection cannot
# read patient tables, and the runtime that builds ledgers must not depend on the gate).
_provided_work: list[WorkRelations] = []


def provide_work_relations(work: WorkRelations) -> None:
    """Called once by carnet.phi: every ledger built without its own `work` uses this one."""
    _provided_work[:] = [work]


class SqlExposureLedger:
    """The ledger in the application database, with counters in Redis, SQL or memory."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        config: DetectionConfig | None = None,
        counters: ExposureCounters | None = None,
        flags: ContainmentFlags | None = None,
        audit: AuditWriter | None = None,
        work: WorkRelations | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        # Front desk and billing are judged against their facility work (None: not judged).
        self.work = work
        self.config = config or get_detection_config()
        self.counters: ExposureCounters = counters or SqlExposureCounters()
        self.flags: ContainmentFlags = flags or MemoryContainmentFlags()
        # A containment whose write failed still refuses the actor in this process.
        self._local_flags = MemoryContainmentFlags()
        self.audit = audit or SqlAuditWriter()
        self._lock = threading.Lock()
        self._known_addresses: set[tuple[str, str]] = set()
        self._baselines: dict[str, tuple[float, rules.Baseline | None]] = {}
        self._canaries: tuple[float, frozenset[uuid.UUID]] = (0.0, frozenset())

    # -- the contract --------------------------------------------------------------------
    def record(
        self,
        session: Session,
        *,
        actor: Actor,
        patient_ids: Sequence[uuid.UUID],
        channel: Channel,
        resource_type: str,
        outside_care: Sequence[uuid.UUID] = (),
        query_shape: SearchEvent | None = None,
        fields: Sequence[str] = (),
    ) -> None:
        at = clock.now()
        state = self.ensure_not_contained(session, actor=actor)
        if actor.kind is ActorKind.INTERFACE and not fields:
            # A write-only HL7 interface is answered with an ACK alone: no field of the patient
            # left, so nothing was exposed (its volume is judged by carnet.interfaces.budget).
            patient_ids = ()
        distinct = sorted(set(patient_ids))
        exposed = set(distinct)
        outside = sorted({p for p in outside_care if p in exposed})
        if distinct and self._judged_by_work(actor):
            # No care relationship narrows a facility-wide role: its "outside" is outside its work.
            work = self._work()
            assert work is not None
            in_work = work.in_work(session, patient_ids=distinct, at=at)
            outside = [p for p in distinct if p not in in_work]
        if distinct:
            field_text = ",".join(sorted(set(fields)))[:300] or None
            outside_set = set(outside)
            session.connection().execute(
                _INSERT_EXPOSURE,
                [
                    {
                        "id": new_id(),
                        "actor_ref": actor.actor_ref,
                        "patient_id": p,
                        "channel": channel.value,
                        "resource_type": resource_type[:40],
                        "at": at,
                        "audit_seq": None,
                        "outside_care": p in outside_set,
                        "fields": field_text,
                    }
                    for p in distinct
                ],
            )
        events = _search_events(query_shape, deep_page=self.config.deep_page)
        for kind, key in events:
            self._add_event(session, actor=actor, kind=kind, key=key, at=at)
        if not distinct and not events:
            return
        # The counters learn this request and answer every window in one round trip.
        counts = self.counters.add_and_count(
            session,
            actor_ref=actor.actor_ref,
            at=at,
            since=state.restored_at if state else None,
            patient_ids=distinct,
            outside_care=outside,
            exported=channel is Channel.EXPORT,
            # A list (a clinician's day, a practitioner's calendar) of patients in the actor's
            # care or work is the work itself: the 24-hour window and the 7 days count it.
            listed=channel is Channel.LIST,
            events=events,
        )
        canaries = sorted(exposed & self._canary_ids(session)) if distinct else []
        ctx = rules.Context(
            actor=actor,
            counts=counts,
            at=at,
            channel=channel,
            canaries=canaries,
            account_baseline=self._baseline(session, actor.actor_ref),
            role_baseline=self._role_baseline(session, actor),
            new_address=self._is_new_address(session, actor, at),
            work_known=self._judged_by_work(actor),
        )
        self._respond(session, actor=actor, findings=rules.evaluate(self.config, ctx), ctx=ctx)

    def _work(self) -> WorkRelations | None:
        return self.work if self.work is not None else next(iter(_provided_work), None)

    def _judged_by_work(self, actor: Actor) -> bool:
        return self._work() is not None and rules.work_role(actor, self.config) is not None

    def record_denial(
        self,
        session: Session,
        *,
        actor: Actor,
        resource_type: str,
        channel: Channel | None = None,
    ) -> None:
        at = clock.now()
        kind = EventKind.EXPORT_DENIAL if channel is Channel.EXPORT else EventKind.DENIAL
        key = resource_type[:80]
        self._add_event(session, actor=actor, kind=kind, key=key, at=at)
        state = session.get(ActorState, actor.actor_ref)
        counts = self.counters.add_and_count(
            session,
            actor_ref=actor.actor_ref,
            at=at,
            since=state.restored_at if state else None,
            events=[(kind, key)],
        )
        if state is not None and state.status == CONTAINED:
            return
        ctx = rules.Context(
            actor=actor,
            counts=counts,
            at=at,
            denial=True,
        )
        # The request is already refused: a containment meets the actor's next request.
        with contextlib.suppress(AccountContained, StepUpRequired, Throttled):
            self._respond(session, actor=actor, findings=rules.evaluate(self.config, ctx), ctx=ctx)

    # -- what every worker checks first ----------------------------------------------------
    def ensure_not_contained(self, session: Session, *, actor: Actor) -> Row[Any, Any, Any] | None:
        """Raise AccountContained if the actor is contained (the database row, or a flag set by a
        worker whose containment is not yet committed and not since undone by a restore)."""
        state = session.connection().execute(_ACTOR_STATE, {"actor_ref": actor.actor_ref}).first()
        if state is not None and state.status == CONTAINED:
            reason = state.reason or "unusual access to patient data."
            raise AccountContained(contained_message(reason, self.settings.security_contact))
        for flags in (self.flags, self._local_flags):
            flagged = _parse_flag(flags.get(actor.actor_ref))
            if flagged is None:
                continue
            flagged_at, reason = flagged
            restored_at = state.restored_at if state is not None else None
            if restored_at is not None and restored_at >= flagged_at:
                flags.clear(actor.actor_ref)  # a security officer restored the account since
                continue
            raise AccountContained(contained_message(reason, self.settings.security_contact))
        return state

    def forget(self, *, actor_ref: str) -> None:
        """After a restore: clear flags and windows so old counts do not contain again."""
        self.flags.clear(actor_ref)
        self._local_flags.clear(actor_ref)
        self.counters.reset(actor_ref=actor_ref)

    # -- response ------------------------------------------------------------------------
    def _respond(
        self, session: Session, *, actor: Actor, findings: list[Finding], ctx: rules.Context
    ) -> None:
        if not findings:
            return
        at = ctx.at
        top = findings[0]
        level = top.level
        if level is Level.STEP_UP and actor.kind in (ActorKind.CLIENT, ActorKind.SYSTEM):
            level = Level.THROTTLE  # no second factor to ask for
        if level is Level.STEP_UP and self._stepped_up(actor, ctx):
            level = Level.RECORD
        if level is Level.CONTAIN:
            reason = " ".join(f.sentence for f in findings if f.level is Level.CONTAIN)[:1000]
            flag = f"{at.timestamp()}|{reason}"
            self.flags.set(actor.actor_ref, flag)
            self._local_flags.set(actor.actor_ref, flag)
            self._after(session, lambda s: self._write_containment(s, actor=actor, findings=findings, at=at))
            raise AccountContained(contained_message(reason, self.settings.security_contact))
        self._after(session, lambda s: self._write_alerts(s, actor=actor, findings=findings, at=at))
        if level is Level.THROTTLE:
            self._after(session, lambda s: self._write_refusal(s, actor=actor, at=at))
            raise Throttled(
                f"Slowed down: {top.sentence} Try again in a few minutes.",
                retry_after_seconds=self.config.throttle_seconds,
            )
        if level is Level.STEP_UP:
            self._after(session, lambda s: self._write_refusal(s, actor=actor, at=at))
            raise StepUpRequired(f"Confirm your identity with your second factor to continue: {top.sentence}")

    def _stepped_up(self, actor: Actor, ctx: rules.Context) -> bool:
        """A second factor proven recently AND after the actor was first asked for it: the one
        proven at login does not count, or a stolen fresh session would walk through."""
        proven = actor.second_factor_at
        asked = ctx.counts.first_refusal_at
        if proven is None or asked is None:
            return False
        return proven >= asked and ctx.at - proven <= dt.timedelta(minutes=self.config.step_up_valid_minutes)

    def _write_containment(
        self, session: Session, *, actor: Actor, findings: list[Finding], at: dt.datetime
    ) -> None:
        contain(session, actor=actor, findings=findings, audit=self.audit, at=at)

    def _write_alerts(
        self, session: Session, *, actor: Actor, findings: list[Finding], at: dt.datetime
    ) -> None:
        for finding in findings:
            alert, created = raise_alert(
                session, actor=actor, finding=finding, at=at, merge_hours=self.config.alert_merge_hours
            )
            if created and finding.level >= Level.STEP_UP:
                self.audit.append(
                    session,
                    AuditRecord(
                        kind=AuditKind.DETECTION_ALERT,
                        outcome=Outcome.SUCCESS,
                        actor=actor,
                        resource_type="Alert",
                        resource_ids=(str(alert.id),),
                        policy_reason=finding.sentence[:500],
                        detail={"rule": finding.rule.value, "level": finding.level.name.lower()},
                    ),
                )

    def _write_refusal(self, session: Session, *, actor: Actor, at: dt.datetime) -> None:
        session.add(DetectionEvent(actor_ref=actor.actor_ref, kind=EventKind.REFUSAL.value, key="-", at=at))
        self.counters.add_event(actor_ref=actor.actor_ref, kind=EventKind.REFUSAL, key="-", at=at)

    # -- after the caller's transaction ---------------------------------------------------
    def _after(self, session: Session, action: AfterAction) -> None:
        """Run `action` in a new transaction once the caller's root transaction ends."""
        pending: list[AfterAction] = session.info.setdefault(_PENDING, [])
        pending.append(action)
        if not session.info.get(_HOOKED):
            session.info[_HOOKED] = True
            event.listen(session, "after_transaction_end", self._run_pending)

    def _run_pending(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None or transaction.nested:
            return
        pending: list[AfterAction] = session.info.pop(_PENDING, [])
        if not pending:
            return
        bind = session.get_bind()
        engine: Engine = bind if isinstance(bind, Engine) else bind.engine
        for action in pending:
            for attempt in range(3):
                try:
                    with Session(bind=engine, expire_on_commit=False) as own, own.begin():
                        action(own)
                    break
                except Exception as exc:  # keep the first request's answer; log the kind only
                    log.error("detection write failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                    time.sleep(0.05 * (attempt + 1))

    # -- events, baselines, addresses -----------------------------------------------------
    def _add_event(
        self, session: Session, *, actor: Actor, kind: EventKind, key: str, at: dt.datetime
    ) -> None:
        """The event's row (its callers count it with `add_and_count`)."""
        session.execute(
            insert(DetectionEvent).values(
                id=new_id(), actor_ref=actor.actor_ref, kind=kind.value, key=key, at=at
            )
        )

    def _canary_ids(self, session: Session) -> frozenset[uuid.UUID]:
        """Every canary, reloaded every few seconds (they are few, and seeded, not hot)."""
        now = time.monotonic()
        expires, ids = self._canaries
        if expires > now:
            return ids
        ids = frozenset(session.scalars(select(CanaryPatient.patient_id)))
        self._canaries = (now + self.config.canary_refresh_seconds, ids)
        return ids

    def _baseline(self, session: Session, subject: str) -> rules.Baseline | None:
        now = time.monotonic()
        with self._lock:
            cached = self._baselines.get(subject)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = session.get(ExposureBaseline, subject)
        value = None if row is None else rules.Baseline(row.m15, row.h1, row.h24, row.off_hours_share)
        with self._lock:
            if len(self._baselines) > 50_000:
                self._baselines.clear()
            self._baselines[subject] = (now + _BASELINE_TTL, value)
        return value

    def _role_baseline(self, session: Session, actor: Actor) -> rules.Baseline | None:
        roles_ = sorted(r.value for r in actor.roles if r in PATIENT_DATA_ROLES)
        best: rules.Baseline | None = None
        for role in roles_:
            value = self._baseline(session, f"role:{role}")
            if value is not None and (best is None or value.h24 > best.h24):
                best = value
        return best

    def _is_new_address(self, session: Session, actor: Actor, at: dt.datetime) -> bool:
        address = actor.address
        if not address:
            return False
        pair = (actor.actor_ref, address[:64])
        with self._lock:
            if pair in self._known_addresses:
                return False
        if session.get(ActorAddress, pair) is not None:
            with self._lock:
                self._known_addresses.add(pair)
            return False
        has_history = (
            session.scalar(
                select(ActorAddress.address).where(ActorAddress.actor_ref == actor.actor_ref).limit(1)
            )
            is not None
        )
        self._after(session, lambda s: _remember_address(s, pair, at))
        return has_history


def _remember_address(session: Session, pair: tuple[str, str], at: dt.datetime) -> None:
    try:
        with session.begin_nested():
            session.add(ActorAddress(actor_ref=pair[0], address=pair[1], first_seen_at=at))
    except IntegrityError:
        pass  # another worker noted it first


def _parse_flag(value: str | None) -> tuple[dt.datetime, str] | None:
    if value is None:
        return None
    stamp, _, reason = value.partition("|")
    try:
        return dt.datetime.fromtimestamp(float(stamp), dt.UTC), reason
    except ValueError:
        return dt.datetime.max.replace(tzinfo=dt.UTC), value  # unreadable: stay contained


def _search_events(query_shape: SearchEvent | None, *, deep_page: int) -> list[tuple[EventKind, str]]:
    if query_shape is None:
        return []
    digest = query_shape.term_digest[:80] or "-"
    events = [(kind, digest) for kind in _SHAPE_EVENTS[query_shape.shape]]
    if query_shape.page > deep_page:
        events.append((EventKind.DEEP_PAGE, digest))
    return events


def build_ledger(
    settings: Settings,
    *,
    audit: AuditWriter | None = None,
    config: DetectionConfig | None = None,
    work: WorkRelations | None = None,
) -> SqlExposureLedger:
    """Counters and flags in Redis when CARNET_REDIS_URL is set (shared by workers), else SQL."""
    counters: ExposureCounters
    flags: ContainmentFlags
    if settings.redis_url:
        import redis

        client: Any = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        counters = RedisExposureCounters(client)
        flags = RedisContainmentFlags(client)
    else:
        counters = SqlExposureCounters()
        flags = MemoryContainmentFlags()
    return SqlExposureLedger(
        settings=settings, config=config, counters=counters, flags=flags, audit=audit, work=work
    )
