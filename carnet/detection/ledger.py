"""The exposure ledger and the detection it drives, inside the gate's transaction.

`record` writes one Exposure row per patient that left, updates the actor's window counters,
runs the rules and answers with the graduated response: record (an alert), step-up, throttle
or contain. Whatever must outlive a refused request (the containment, alerts, the refusal
itself) is written in a dedicated transaction once the caller's transaction has ended — so it
survives the gate's rollback, and never waits on locks that transaction still holds.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
import weakref
import zoneinfo
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Engine, Row, String, Table, bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PATIENT_DATA_ROLES
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.audit.writer import SqlAuditWriter
from carnet.detection import administration, campaign, rules
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
from carnet.detection.counters import Add, RedisExposureCounters, SqlExposureCounters
from carnet.detection.interfaces import (
    ActorCounts,
    Channel,
    EventKind,
    ExposureCounters,
    Finding,
    Level,
    Rule,
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
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, StepUpRequired, Throttled
from carnet.kernel.ids import new_id
from carnet.settings import Settings, get_settings

log = logging.getLogger("carnet.detection")

# Core statements for what every guarded request runs: plain rows, no ORM unit of work.
_STATES = cast(Table, ActorState.__table__).c
ACTOR_STATE = select(_STATES.status, _STATES.reason, _STATES.restored_at).where(
    _STATES.actor_ref == bindparam("actor_ref", type_=String())
)
INSERT_EXPOSURE = insert(cast(Table, Exposure.__table__))
INSERT_EVENT = insert(cast(Table, DetectionEvent.__table__))
_FETCH = object()  # `record`'s default: read the actor's state itself

_ZERO = dt.timedelta(0)
_FOREVER = float("inf")
_SEEN_KINDS = (ActorKind.STAFF, ActorKind.CLIENT)  # whose machines `_note_seen` notes
_CHANNEL_TEXT = {c: c.value for c in Channel}

_PENDING = "carnet.detection.pending"
_HOOKED = "carnet.detection.hooked"
_BASELINE_TTL = 300.0

_SHAPE_EVENTS = {
    SearchShape.IDENTIFIER: (EventKind.SEARCH, EventKind.IDENTIFIER_SEARCH),
    SearchShape.NAME: (EventKind.SEARCH,),
    SearchShape.WILDCARD: (EventKind.SEARCH, EventKind.WILDCARD_SEARCH),
    SearchShape.PARTIAL: (EventKind.SEARCH, EventKind.WILDCARD_SEARCH),
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
        # Per-process caches of shared state read on every request (a few seconds stale at most).
        self._campaign_flags: dict[str, tuple[float, str | None]] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._probation: dict[uuid.UUID, tuple[float, dt.datetime | None]] = {}
        # Redis counts kept per actor while far below every threshold, and the adds held back
        # meanwhile (sent with this worker's next script): see `_quiet_counts`.
        self._quiet: dict[str, _Quiet] = {}
        self._held: list[_Held] = []
        self._flush_timer: threading.Timer | None = None
        # The plain reads' patients this worker has sent to Redis, per actor, with their time: a
        # patient sent recently is in every window a read counts (see `_known`).
        self._sent: dict[str, dict[uuid.UUID, dt.datetime]] = {}
        self._refs: dict[tuple[str | None, str | None], tuple[str, ...]] = {}
        # Per actor reference: what its requests share (`_standing`, `_judge`).
        self._standings: dict[str, _Standing] = {}
        self._trip: tuple[object, object, RedisExposureCounters | None] = (None, None, None)
        # Correlation keys are the installation's own: one Redis may serve several databases.
        self.scope = hashlib.sha256(self.settings.resolved_database_url.encode()).hexdigest()[:8]
        self.installation_ref = campaign.installation_ref(self.scope)

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
        state: object = _FETCH,
        exposure_rows: list[dict[str, Any]] | None = None,
        event_rows: list[dict[str, Any]] | None = None,
    ) -> None:
        """`state`: the actor's ActorState row (`ACTOR_STATE`) when the caller already read it
        in this transaction; `exposure_rows`, `event_rows`: where to put the exposure rows and
        the search events' rows (`INSERT_EVENT`) for the caller to insert in this transaction
        (the gate's fast read sends them with its audit append). Event rows are handed over only
        when Redis counts the events: the SQL counters count the rows, which must be there first."""
        at = clock.now()
        if state is _FETCH:
            state = session.connection().execute(ACTOR_STATE, {"actor_ref": actor.actor_ref}).first()
        state = cast("Row[Any, Any, Any] | None", state)
        redis = self._one_trip()
        # With Redis, the shared flag is read by the request's one script (below).
        self.check_not_contained(state, actor=actor, shared=redis is None)
        if actor.kind is ActorKind.INTERFACE and not fields:
            # A write-only HL7 interface is answered with an ACK alone: no field of the patient
            # left, so nothing was exposed (its volume is judged by carnet.interfaces.budget).
            patient_ids = ()
        ref = actor.actor_ref
        standing = self._standing(actor)
        # One patient (a chart read): the sorted, distinct list is itself.
        distinct = list(patient_ids) if len(patient_ids) == 1 else sorted(set(patient_ids))
        outside: list[uuid.UUID] = []
        if outside_care:
            exposed = set(distinct)
            outside = sorted({p for p in outside_care if p in exposed})
        judged_by_work = standing.work_role is not None and self._work() is not None
        if distinct and judged_by_work:
            # No care relationship narrows a facility-wide role: its "outside" is outside its work.
            work = self._work()
            assert work is not None
            in_work = work.in_work(session, patient_ids=distinct, at=at)
            outside = [p for p in distinct if p not in in_work]
        listed = channel is Channel.LIST
        if listed and (_other_day_list(query_shape, at, self.config) or _browsing(query_shape)):
            # A day list of another day, or a list page away from the work of now, is browsing:
            # every patient on it counts as a patient outside care would, in every window.
            outside = list(distinct)
            listed = False
        if distinct:
            field_text = ",".join(sorted(set(fields)))[:300] or None
            outside_set = set(outside)
            channel_text = _CHANNEL_TEXT[channel]
            resource = resource_type[:40]
            rows = [
                {
                    "id": new_id(),
                    "actor_ref": ref,
                    "patient_id": p,
                    "channel": channel_text,
                    "resource_type": resource,
                    "at": at,
                    "audit_seq": None,
                    "outside_care": p in outside_set,
                    "fields": field_text,
                }
                for p in distinct
            ]
            if exposure_rows is None:
                session.connection().execute(INSERT_EXPOSURE, rows)
            else:
                exposure_rows.extend(rows)
        events: list[tuple[EventKind, str]] = []
        if query_shape is not None:
            events = _search_events(query_shape, deep_page=self.config.deep_page)
            if query_shape.shape is SearchShape.NAME and channel is Channel.SEARCH and len(distinct) >= 2:
                # A name search that matches several patients is a fragment (a name among one's
                # own patients, "bert", "rous"): counted with the partial searches it is.
                events.append((EventKind.WILDCARD_SEARCH, query_shape.term_digest[:80] or "-"))
        for kind, key in events:
            if event_rows is not None and redis is not None:
                row = {"id": new_id(), "actor_ref": ref, "kind": kind.value, "key": key, "at": at}
                event_rows.append(row)
            else:
                self._add_event(session, actor=actor, kind=kind, key=key, at=at)
        if not distinct and not events:
            if redis is not None:
                self.check_not_contained(state, actor=actor)  # no script to read the flag
            return
        restored = state.restored_at if state else None
        exported = channel is Channel.EXPORT
        installation: list[uuid.UUID] = []
        if distinct and not exported:
            # A list (a clinician's day, a practitioner's calendar) of patients in the actor's
            # care or work is the work itself: the 24-hour window and the 7 days count it.
            # Otherwise every patient shown counts installation-wide (the list itself, shared:
            # nothing changes it).
            installation = distinct
            if listed:
                mine = set(distinct) - set(outside)
                installation = [p for p in distinct if p not in mine]
        now = time.monotonic()
        request: _Request | None = None
        quiet = False
        if redis is not None:
            counts = None
            if not (events or outside or listed or exported):  # `_plain`
                counts = self._quiet_counts(actor, standing, at, restored, distinct, installation, now)
            quiet = counts is not None
            if counts is None:
                request = _Request(
                    actor, at, restored, distinct, outside, exported, listed, events, installation
                )
                counts = self._one_round_trip(redis, request)
        else:
            # The counters learn this request and answer every window in one round trip.
            counts = self.counters.add_and_count(
                session,
                actor_ref=ref,
                at=at,
                since=restored,
                patient_ids=distinct,
                outside_care=outside,
                exported=exported,
                listed=listed,
                events=events,
            )
            if installation:
                self.counters.add_installation(patient_ids=installation, at=at)
        now = time.monotonic()
        if actor.kind in _SEEN_KINDS:
            seen = self._seen
            for pair in standing.seen_pairs:
                if seen.get(pair, 0.0) <= now:  # a pair due (checked again, under the lock)
                    self._note_seen(session, actor, at)
                    break
        canaries: list[uuid.UUID] = []
        if distinct:
            expires, decoys = self._canaries
            if expires <= now:
                decoys = self._canary_ids(session)
            if decoys:
                canaries = sorted(set(distinct) & decoys)
        judge, account_baseline, role_baseline, probation = self._judge(
            session, actor, standing, restored, at, now, judged_by_work
        )
        new_address = False
        if actor.address and not standing.address_known:
            new_address = self._is_new_address(session, actor, at, standing)

        def context() -> rules.Context:
            return rules.Context(
                actor=actor,
                counts=counts,
                at=at,
                channel=channel,
                canaries=canaries,
                account_baseline=account_baseline,
                role_baseline=role_baseline,
                new_address=new_address,
                work_known=judged_by_work,
                probation=probation,
            )

        ctx: rules.Context | None = None
        if judge.silent(counts, at, channel, canaries, new_address):
            # `rules.evaluate` would find nothing (see rules.Judge): only the campaign flag speaks.
            flagged = self._campaign_flag(actor, standing.campaign_refs)
            findings = [] if flagged is None else [flagged]
        else:
            ctx = context()
            findings = self._findings(ctx, judge, standing.campaign_refs)
        if findings or (quiet is False and redis is not None):
            if ctx is None:
                ctx = context()
            if quiet and findings and redis is not None:
                # Judged on the kept counts: judge again on Redis's own (this request included).
                self._forget_quiet(ref)
                request = _Request(
                    actor, at, restored, distinct, outside, exported, listed, events, installation
                )
                ctx = dataclasses.replace(ctx, counts=self._one_round_trip(redis, request))
                findings = self._findings(ctx, judge, standing.campaign_refs)
            elif redis is not None and not quiet:
                assert request is not None
                self._keep_quiet(request, ctx, findings, judge)
            self._respond(session, actor=actor, findings=findings, ctx=ctx)

    def _findings(
        self, ctx: rules.Context, judge: rules.Judge | None = None, refs: Sequence[str] | None = None
    ) -> list[Finding]:
        """`rules.evaluate` (through `judge`, the actor's compiled standing, when given) and the
        campaign flag; `refs`: the actor's campaign references, when known."""
        findings = rules.evaluate(self.config, ctx) if judge is None else judge.findings(ctx)
        flagged = self._campaign_flag(ctx.actor, refs)
        if flagged is not None:
            findings = sorted([*findings, flagged], key=lambda f: f.level, reverse=True)
        return findings

    # -- what an actor's requests share ---------------------------------------------------
    def _standing(self, actor: Actor) -> _Standing:
        """The actor's references and work role, made by its first request (and again when its
        roles, kind, address or client change, or the config)."""
        key = (actor.kind, actor.roles, actor.address, actor.user_agent)
        ref = actor.actor_ref
        found = self._standings.get(ref)
        if found is not None and found.key == key and found.config is self.config:
            return found
        machine = tuple(self._machine_refs(actor)) if actor.kind in _SEEN_KINDS else ()
        made = _Standing(
            key=key,
            config=self.config,
            campaign_refs=(ref, *self._machine_refs(actor)) if actor.kind is ActorKind.STAFF else (),
            seen_pairs=tuple((r, ref) for r in machine),
            work_role=rules.work_role(actor, self.config),
            address_pair=(ref, actor.address[:64]) if actor.address else None,
        )
        with self._lock:
            if len(self._standings) > 50_000:
                self._standings.clear()
            self._standings[ref] = made
        return made

    def _judge(
        self,
        session: Session,
        actor: Actor,
        standing: _Standing,
        restored: dt.datetime | None,
        at: dt.datetime,
        now: float,
        work_known: bool,
    ) -> tuple[rules.Judge, rules.Baseline | None, rules.Baseline | None, bool]:
        """The rules compiled for the actor's standing now, with the baselines and probation they
        were compiled for. The baselines and the account's opening are those `_baseline` and
        `_on_probation` answer (their caches, read again once the first of them expires)."""
        view = standing.view  # read once: another request of the actor may replace it meanwhile
        if view.expires <= now:
            ref = actor.actor_ref
            expires, account = self._baseline_entry(session, ref)
            role_expires, role = self._role_baseline_entry(session, actor)
            opened_expires, opened = self._opened_entry(session, actor)
            until = min(expires, role_expires, opened_expires)
            if account is view.account_baseline and role is view.role_baseline and opened == view.opened:
                view = _View(until, account, role, opened, view.judges)  # the same judges
            else:
                view = _View(until, account, role, opened, {})
            standing.view = view
        probation = False
        if actor.kind is ActorKind.STAFF and actor.account_id is not None and self.config.probation_days != 0:
            days = dt.timedelta(days=self.config.probation_days)
            opened = view.opened
            probation = (restored is not None and _ZERO <= at - restored < days) or (
                opened is not None and _ZERO <= at - opened < days
            )
        judge = view.judges.get((probation, work_known))
        if judge is None:
            judge = view.judges[(probation, work_known)] = rules.Judge(
                self.config,
                actor=actor,
                account_baseline=view.account_baseline,
                role_baseline=view.role_baseline,
                work_known=work_known,
                probation=probation,
            )
        return judge, view.account_baseline, view.role_baseline, probation

    # -- Redis: one round trip per request at most, none while far below every threshold --------
    def _one_trip(self) -> RedisExposureCounters | None:
        """The Redis counters, when the containment flags live in the same Redis (then one
        script answers both)."""
        counters, flags = self.counters, self.flags
        found = self._trip
        if found[0] is counters and found[1] is flags:
            return found[2]  # answered for these counters and flags already
        trip = (
            counters
            if isinstance(counters, RedisExposureCounters)
            and isinstance(flags, RedisContainmentFlags)
            and counters.client is flags.client
            else None
        )
        self._trip = (counters, flags, trip)
        return trip

    def _one_round_trip(self, redis: RedisExposureCounters, request: _Request) -> ActorCounts:
        """The request's exposures and events, the containment flag, every window count and
        the campaign flags due for a refresh, with the adds kept back by quiet requests."""
        actor = request.actor
        flags = cast(RedisContainmentFlags, self.flags)
        now = time.monotonic()
        refs = self._campaign_refs(actor)
        with self._lock:
            due = [r for r in refs if (c := self._campaign_flags.get(r)) is None or c[0] <= now]
            earlier, self._held = self._held, []
        adds = redis.adds(
            actor_ref=actor.actor_ref,
            at=request.at,
            patient_ids=request.patient_ids,
            outside_care=request.outside_care,
            exported=request.exported,
            listed=request.listed,
            events=request.events,
            installation=request.installation,
        )
        try:
            answer = redis.request(
                actor_ref=actor.actor_ref,
                at=request.at,
                since=request.restored,
                adds=adds,
                earlier=[a for held in earlier for a in held.adds(redis)],
                contained_key=flags.key(actor.actor_ref),
                restored=request.restored,
                flag_keys=[flags.key(f"campaign:{r}") for r in due],
            )
        except Exception:
            with self._lock:
                self._held[:0] = earlier  # sent with the next request instead
            raise
        with self._lock:
            if len(self._campaign_flags) > 10_000:
                self._campaign_flags.clear()
            for ref in due:
                self._campaign_flags[ref] = (now + 2.0, answer.flags.get(flags.key(f"campaign:{ref}")))
            self._note_sent(earlier)
            if answer.contained is None and _plain(request):
                self._note_sent([_Held(now, actor.actor_ref, request.at, request.patient_ids, ())])
        if answer.contained is not None:
            self._forget_quiet(actor.actor_ref)
            flagged = _parse_flag(answer.contained)
            reason = flagged[1] if flagged is not None else answer.contained
            raise AccountContained(contained_message(reason, self.settings.security_contact))
        assert answer.counts is not None
        return answer.counts

    def _keep_quiet(
        self, request: _Request, ctx: rules.Context, findings: list[Finding], judge: rules.Judge
    ) -> None:
        """Keep Redis's counts for the actor's next requests when even counts raised by
        QUIET_HEADROOM patients would find nothing: those requests are judged on these counts
        and their adds go with the next script of this worker (QUIET_SECONDS at most)."""
        ref = request.actor.actor_ref
        raised = _raised(ctx.counts, QUIET_HEADROOM)
        if findings or (
            not judge.silent(raised, ctx.at, ctx.channel, (), False)
            and rules.evaluate(
                self.config, dataclasses.replace(ctx, counts=raised, canaries=(), new_address=False)
            )
        ):
            self._forget_quiet(ref)
            return
        with self._lock:
            if len(self._quiet) > 50_000:
                self._quiet.clear()
            self._quiet[ref] = _Quiet(
                until=time.monotonic() + QUIET_SECONDS,
                at=request.at,
                restored=request.restored,
                counts=ctx.counts,
                budget=QUIET_BUDGET,
                known=self._known(ref, request.at, request.restored),
            )

    def _known(self, actor_ref: str, at: dt.datetime, restored: dt.datetime | None) -> set[uuid.UUID]:
        """The patients counted in every window of counts Redis answered at `at` and still in them
        for the QUIET_SECONDS they are kept: those of plain reads this worker sent to Redis (by
        then) less than KNOWN_AGE ago, and not before a restore (the windows start there). A
        read of one of them adds no patient to any window: it needs no budget. (A list's patients
        in care are not among them: a list adds them to the 24-hour window only.)"""
        oldest = at - KNOWN_AGE
        if restored is not None and restored > oldest:
            oldest = restored
        sent = self._sent.get(actor_ref, {})
        return {p for p, t in sent.items() if t >= oldest}

    def _note_sent(self, reads: Sequence[_Held]) -> None:
        """These plain reads reached Redis (the caller holds the lock)."""
        for held in reads:
            sent = self._sent.get(held.actor_ref)
            if sent is None:
                if len(self._sent) > 50_000:
                    self._sent.clear()
                sent = self._sent[held.actor_ref] = {}
            if len(sent) > SENT_PER_ACTOR:
                oldest = held.at - KNOWN_AGE
                for p in [p for p, t in sent.items() if t < oldest] or list(sent):
                    del sent[p]
            for p in held.patient_ids:
                if (t := sent.get(p)) is None or t < held.at:
                    sent[p] = held.at

    def _forget_quiet(self, actor_ref: str) -> None:
        with self._lock:
            self._quiet.pop(actor_ref, None)

    def _quiet_counts(
        self,
        actor: Actor,
        standing: _Standing,
        at: dt.datetime,
        restored: dt.datetime | None,
        patient_ids: list[uuid.UUID],
        installation: list[uuid.UUID],
        now: float,
    ) -> ActorCounts | None:
        """The actor's counts without asking Redis: its kept counts, each new patient added to
        every window, for a plain read of patients in care (no search, list, export or outside
        patient: the caller's test) while the kept counts are fresh (else None: ask Redis)."""
        ref = actor.actor_ref
        flags = self._campaign_flags
        with self._lock:
            kept = self._quiet.get(ref)
            if kept is None or kept.until <= now or kept.restored != restored:
                return None
            if not _ZERO <= at - kept.at <= _QUIET_AGE:
                return None  # the clock moved (a test's, or the host's): ask Redis
            held = self._held
            if held and (held[0].since + QUIET_SECONDS <= now or len(held) >= QUIET_HELD):
                return None  # time to send what is held
            for r in standing.campaign_refs:
                if (c := flags.get(r)) is None or c[0] <= now:
                    return None
            known = kept.known
            if len(patient_ids) == 1:  # a chart read
                new = [] if patient_ids[0] in known else patient_ids
            else:
                new = [p for p in patient_ids if p not in known]
            if len(new) > kept.budget:
                return None
            if new:
                kept.counts = _raised(kept.counts, len(new))
                kept.budget -= len(new)
                known.update(new)
            # Its adds are made when they are sent (`_Held.adds`).
            held.append(_Held(now, ref, at, patient_ids, installation))
            if self._flush_timer is None:
                # An idle worker sends what it holds all the same (and at exit: `_flush_at_exit`).
                self._flush_timer = threading.Timer(QUIET_FLUSH_SECONDS, self.flush_held)
                self._flush_timer.daemon = True
                self._flush_timer.start()
                _holding.add(self)
            return kept.counts

    def flush_held(self) -> None:
        """Send the adds held back by quiet requests to Redis now (a timer calls it when no
        request of this worker did within QUIET_FLUSH_SECONDS; so does the process's exit)."""
        with self._lock:
            held, self._held = self._held, []
            self._flush_timer = None
        if not held:
            return
        redis = cast(RedisExposureCounters, self.counters)
        try:
            redis.send([a for h in held for a in h.adds(redis)])
        except Exception as exc:  # kept for the next request's script; log the kind only
            log.error("detection: held counts not sent (%s)", type(exc).__name__)
            with self._lock:
                self._held[:0] = held
            return
        with self._lock:
            self._note_sent(held)

    def _campaign_refs(self, actor: Actor) -> list[str]:
        if actor.kind is not ActorKind.STAFF:
            return []
        return [actor.actor_ref, *self._machine_refs(actor)]

    def _machine_refs(self, actor: Actor) -> list[str]:
        """The actor's address and client references, then its machine's (`campaign`), computed
        once per address and client (each is a digest, asked several times a request)."""
        key = (actor.address, actor.user_agent)
        found = self._refs.get(key)
        if found is None:
            machine = campaign.machine_ref(actor, self.scope)
            found = (*campaign.correlation_refs(actor, self.scope), *([machine] if machine else []))
            if len(self._refs) > 10_000:
                self._refs.clear()
            self._refs[key] = found
        return list(found)

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
        state = session.connection().execute(ACTOR_STATE, {"actor_ref": actor.actor_ref}).first()
        self.check_not_contained(state, actor=actor)
        return state

    def check_not_contained(
        self, state: Row[Any, Any, Any] | None, *, actor: Actor, shared: bool = True
    ) -> None:
        """`ensure_not_contained` on the actor's state row read by the caller (`shared`: also
        the flag shared by every worker, which `record` otherwise reads in its one script)."""
        if state is not None and state.status == CONTAINED:
            reason = state.reason or "unusual access to patient data."
            raise AccountContained(contained_message(reason, self.settings.security_contact))
        if not shared and self._local_flags.get(actor.actor_ref) is None:
            return  # the usual case: no flag of this process
        for flags in (self.flags, self._local_flags) if shared else (self._local_flags,):
            flagged = _parse_flag(flags.get(actor.actor_ref))
            if flagged is None:
                continue
            flagged_at, reason = flagged
            restored_at = state.restored_at if state is not None else None
            if restored_at is not None and restored_at >= flagged_at:
                flags.clear(actor.actor_ref)  # a security officer restored the account since
                continue
            raise AccountContained(contained_message(reason, self.settings.security_contact))

    def forget(self, *, actor_ref: str) -> None:
        """After a restore: clear flags and windows so old counts do not contain again."""
        with self._lock:
            self._quiet.pop(actor_ref, None)
            self._held = [h for h in self._held if h.actor_ref != actor_ref]
            self._sent.pop(actor_ref, None)
        self.flags.clear(actor_ref)
        self.flags.clear(f"campaign:{actor_ref}")
        self._local_flags.clear(actor_ref)
        with self._lock:
            self._campaign_flags.pop(actor_ref, None)
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
        if self._anomalous(actor, level, ctx):
            self._after(session, lambda s: self._correlate(s, actor=actor, at=at))
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

    def _anomalous(self, actor: Actor, level: Level, ctx: rules.Context) -> bool:
        """Contained, or stopped again while an earlier request for a second factor is still
        unanswered: staff answer at once, a stolen session never does. Only such accounts count
        toward a campaign, so honest step-ups never add up to one."""
        if actor.kind not in (ActorKind.STAFF, ActorKind.CLIENT):
            return False
        if level is Level.CONTAIN:
            return True
        asked = ctx.counts.first_refusal_24h_at
        return level >= Level.STEP_UP and asked is not None and not rules._proved_since(ctx, asked)

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

    # -- probation -----------------------------------------------------------------------
    def _on_probation(
        self, session: Session, actor: Actor, restored_at: dt.datetime | None, at: dt.datetime
    ) -> bool:
        """Opened by an administrator, or restored, in the last `probation_days`. Accounts made by
        the seed or an import are not new staff; an account cannot act before it exists."""
        if actor.kind is not ActorKind.STAFF or actor.account_id is None or self.config.probation_days == 0:
            return False
        days = dt.timedelta(days=self.config.probation_days)
        if restored_at is not None and dt.timedelta(0) <= at - restored_at < days:
            return True
        opened = self._opened_entry(session, actor)[1]
        return opened is not None and dt.timedelta(0) <= at - opened < days

    def _opened_entry(self, session: Session, actor: Actor) -> tuple[float, dt.datetime | None]:
        """When a staff account was opened by an administrator (None: by the seed or an import,
        or not an account), and until when this process keeps that answer (time.monotonic)."""
        if actor.kind is not ActorKind.STAFF or actor.account_id is None or self.config.probation_days == 0:
            return _FOREVER, None
        now = time.monotonic()
        with self._lock:
            cached = self._probation.get(actor.account_id)
        if cached is None or cached[0] <= now:
            opened = session.scalar(select(Account.created_at).where(Account.id == actor.account_id))
            if opened is not None and not administration.opened_by_staff(
                session, account_id=actor.account_id
            ):
                opened = None
            cached = (now + _BASELINE_TTL, opened)
            with self._lock:
                if len(self._probation) > 50_000:
                    self._probation.clear()
                self._probation[actor.account_id] = cached
        return cached

    # -- administration ------------------------------------------------------------------
    def note_administration(self, session: Session, record: AuditRecord) -> None:
        """An access-widening action was audited in `session`: count it for its actor and the
        installation, alert on a burst, contain the actors involved (and the accounts they opened
        or granted in the last day) from twice the alert level. Raises AccountContained then, so
        the action that crossed it rolls back."""
        actor = record.actor
        at = clock.now()
        key = administration.event_key(record)
        everyone = administration.installation_key(record)
        self._add_event(session, actor=actor, kind=EventKind.ADMINISTRATION, key=key, at=at)
        session.execute(
            insert(DetectionEvent).values(
                id=new_id(),
                actor_ref=self.installation_ref,
                kind=EventKind.ADMINISTRATION.value,
                key=everyone,
                at=at,
            )
        )
        self.counters.add_event(actor_ref=actor.actor_ref, kind=EventKind.ADMINISTRATION, key=key, at=at)
        self.counters.add_event(
            actor_ref=self.installation_ref, kind=EventKind.ADMINISTRATION, key=everyone, at=at
        )

        def keys(ref: str, window: dt.timedelta) -> list[str]:
            return self.counters.keys(
                session, actor_ref=ref, kind=EventKind.ADMINISTRATION, at=at, window=window
            )

        installation_1h = keys(self.installation_ref, administration.H1)
        installation_24h = keys(self.installation_ref, administration.H24)
        counts = administration.AdminCounts(
            actor_1h=len(keys(actor.actor_ref, administration.H1)),
            actor_24h=len(keys(actor.actor_ref, administration.H24)),
            installation_1h=len(installation_1h),
            installation_24h=len(installation_24h),
        )
        officers = administration.repeated_restore(
            session, record=record, at=at, days=self.config.restore_repeat_days
        )
        verdict = administration.judge(
            self.config,
            actor=actor,
            what=administration.WATCHED[record.kind],
            counts=counts,
            actor_usual=self._admin_baseline(session, f"admin:{actor.actor_ref}"),
            installation_usual=self._admin_baseline(session, f"admin:{administration.INSTALLATION}"),
            repeated_restore=bool(officers),
        )
        if verdict is None:
            return
        finding, everyone_involved = verdict
        if finding.level is not Level.CONTAIN:
            self._after(session, lambda s: self._write_alerts(s, actor=actor, findings=[finding], at=at))
            return
        refs = {actor.actor_ref, *(f"account:{o}" for o in officers)}
        if everyone_involved:
            refs |= set(administration.actors_in(installation_1h))
        flag = f"{at.timestamp()}|{finding.sentence}"
        for ref in refs:
            self.flags.set(ref, flag)
            self._local_flags.set(ref, flag)
        involved = sorted(refs)
        self._after(session, lambda s: self._contain_administration(s, refs=involved, finding=finding, at=at))
        raise AccountContained(contained_message(finding.sentence, self.settings.security_contact))

    def _contain_administration(
        self, session: Session, *, refs: list[str], finding: Finding, at: dt.datetime
    ) -> None:
        products = administration.opened_or_granted(session, actor_refs=refs, since=at - administration.H24)
        made = [f"account:{a}" for a in products]
        produced = Finding(
            finding.rule,
            Level.CONTAIN,
            "opened or granted a role during an administration burst that was contained: " + finding.sentence,
        )
        for ref in made:
            self.flags.set(ref, f"{at.timestamp()}|{produced.sentence}")
        for ref in refs:
            contain(session, actor=self._actor_of(session, ref), findings=[finding], audit=self.audit, at=at)
        for ref in made:
            if ref not in refs:
                contain(
                    session, actor=self._actor_of(session, ref), findings=[produced], audit=self.audit, at=at
                )

    def _admin_baseline(self, session: Session, subject: str) -> administration.AdminBaseline:
        found = self._baseline(session, subject)
        return (
            administration.AdminBaseline()
            if found is None
            else administration.AdminBaseline(found.h1, found.h24)
        )

    def _actor_of(self, session: Session, actor_ref: str) -> Actor:
        """An actor to contain, from its reference (an account or an API client)."""
        kind, _, value = actor_ref.partition(":")
        if kind == "client":
            return Actor(kind=ActorKind.CLIENT, username=value, roles=frozenset(), client_id=value)
        try:
            account_id = uuid.UUID(value)
        except ValueError:
            return Actor(kind=ActorKind.STAFF, username=value, roles=frozenset())
        username = session.scalar(select(Account.username).where(Account.id == account_id)) or value
        return Actor(kind=ActorKind.STAFF, username=username, roles=frozenset(), account_id=account_id)

    # -- campaigns -----------------------------------------------------------------------
    def _note_seen(self, session: Session, actor: Actor, at: dt.datetime) -> None:
        """Which accounts each network address and client fingerprint serves (once per five
        minutes per pair and process: enough for an hour's window)."""
        if actor.kind not in (ActorKind.STAFF, ActorKind.CLIENT):
            return
        now = time.monotonic()
        refs = self._machine_refs(actor)
        me = actor.actor_ref
        with self._lock:  # the usual case: every pair noted less than five minutes ago
            for ref in refs:
                if self._seen.get((ref, me), 0.0) <= now:
                    break
            else:
                return
        for ref in refs:
            pair = (ref, actor.actor_ref)
            with self._lock:
                if self._seen.get(pair, 0.0) > now:
                    continue
                if len(self._seen) > 100_000:
                    self._seen.clear()
                self._seen[pair] = now + 300
            session.execute(
                insert(DetectionEvent).values(
                    id=new_id(), actor_ref=ref, kind=EventKind.SEEN.value, key=actor.actor_ref, at=at
                )
            )
            self.counters.add_event(actor_ref=ref, kind=EventKind.SEEN, key=actor.actor_ref, at=at)
            if ref.startswith("machine:"):  # campaign.machine_ref
                self._judge_machine(session, ref, at)

    def _judge_machine(self, session: Session, machine: str, at: dt.datetime) -> None:
        """Session timing: many accounts from one machine in minutes is one operator's doing."""
        window = dt.timedelta(minutes=self.config.campaign_machine_minutes)
        accounts = self.counters.keys(session, actor_ref=machine, kind=EventKind.SEEN, at=at, window=window)
        if len(accounts) < self.config.campaign_machine_accounts:
            return
        flagged = _parse_flag(self.flags.get(f"campaign:{machine}"))
        if flagged is not None and at - flagged[0] < dt.timedelta(hours=24):
            return  # already flagged today: its staff are not asked again and again
        finding = campaign.crowd_finding(self.config, len(accounts))
        self._flag_campaign(machine, f"{at.timestamp()}|{finding.sentence}")

        def alert(own: Session) -> None:
            names = [self._actor_of(own, ref).username for ref in accounts]
            listed = Finding(finding.rule, finding.level, campaign.listing(finding.sentence, names))
            raise_alert(
                own,
                actor=campaign.CAMPAIGN_ACTOR,
                finding=listed,
                at=at,
                merge_hours=self.config.alert_merge_hours,
            )

        self._after(session, alert)

    def _campaign_flag(self, actor: Actor, refs: Sequence[str] | None = None) -> Finding | None:
        """A step-up for a staff account of a campaign's cohort, or reaching patient data from an
        address or client a campaign used (its first request included), until it proves a second
        factor after the campaign was found. `refs`: the actor's campaign references, if known."""
        if actor.kind is not ActorKind.STAFF:
            return None
        now = time.monotonic()
        if refs is None:
            refs = self._campaign_refs(actor)
        flags = self._campaign_flags
        for ref in refs:  # the usual case: every flag cached, and none set
            if (c := flags.get(ref)) is None or c[0] <= now or c[1] is not None:
                break
        else:
            return None
        with self._lock:
            kept = [self._campaign_flags.get(ref) for ref in refs]
        for ref, cached in zip(refs, kept, strict=True):
            if cached is None or cached[0] <= now:
                cached = (now + 2.0, self.flags.get(f"campaign:{ref}"))
                with self._lock:
                    if len(self._campaign_flags) > 10_000:
                        self._campaign_flags.clear()
                    self._campaign_flags[ref] = cached
            if cached[1] is None:
                continue  # no campaign flag (what `_parse_flag` answers None for)
            parsed = _parse_flag(cached[1])
            if parsed is None or clock.now() - parsed[0] > dt.timedelta(hours=24):
                continue
            proven = actor.second_factor_at
            if proven is not None and proven >= parsed[0]:
                continue  # answered since (or signed in afresh since): asked once per campaign
            if ref == actor.actor_ref:
                return Finding(
                    Rule.CAMPAIGN,
                    Level.STEP_UP,
                    f"{actor.username} is among accounts used together in a campaign: {parsed[1]}"[:1000],
                )
            what = {"net": "network address", "ua": "client"}.get(ref.partition(":")[0], "machine")
            return Finding(
                Rule.CAMPAIGN,
                Level.STEP_UP,
                f"{actor.username} reaches patient data from a {what} that several accounts used "
                f"in a campaign today: {parsed[1]}"[:1000],
            )
        return None

    def _flag_campaign(self, ref: str, flag: str) -> None:
        """Shared with every worker; this one knows at once (its cache would wait 2 s)."""
        self.flags.set(f"campaign:{ref}", flag)
        with self._lock:
            self._campaign_flags[ref] = (time.monotonic() + 2.0, flag)

    def _correlate(self, session: Session, *, actor: Actor, at: dt.datetime) -> None:
        """`actor` was just found anomalous: note it, then judge the installation as a whole."""
        refs = campaign.correlation_refs(actor, self.scope)
        for ref in [self.installation_ref, *refs]:
            session.add(
                DetectionEvent(actor_ref=ref, kind=EventKind.ANOMALY.value, key=actor.actor_ref, at=at)
            )
            self.counters.add_event(actor_ref=ref, kind=EventKind.ANOMALY, key=actor.actor_ref, at=at)
        session.flush()
        window = campaign.window(self.config)

        def keys(ref: str | None, kind: EventKind) -> list[str]:
            if ref is None:
                return []
            return self.counters.keys(session, actor_ref=ref, kind=kind, at=at, window=window)

        address, fingerprint = (
            campaign.address_ref(actor, self.scope),
            campaign.fingerprint_ref(actor, self.scope),
        )
        same_address, same_fingerprint = (
            keys(address, EventKind.ANOMALY),
            keys(fingerprint, EventKind.ANOMALY),
        )
        crowded: list[str] = []
        for shared, found in ((address, same_address), (fingerprint, same_fingerprint)):
            if shared is not None and len(found) >= 2:
                crowded.append(shared)
        seen_with = sorted({k for r in crowded for k in keys(r, EventKind.SEEN)})
        m15, h1 = self.counters.installation_counts(session, at=at)
        usual = self._baseline(session, campaign.INSTALLATION)
        view = campaign.CampaignView(
            same_address=same_address,
            same_fingerprint=same_fingerprint,
            anomalous=keys(self.installation_ref, EventKind.ANOMALY),
            seen_with=seen_with,
            installation_m15=m15,
            installation_h1=h1,
            usual_m15=usual.m15 if usual else 0,
            usual_h1=usual.h1 if usual else 0,
        )
        verdict = campaign.judge(self.config, view)
        if verdict is None:
            return
        finding, cohort = verdict
        members = [self._actor_of(session, ref) for ref in cohort]
        listed = Finding(
            finding.rule, finding.level, campaign.listing(finding.sentence, [m.username for m in members])
        )
        alert, created = raise_alert(
            session,
            actor=campaign.CAMPAIGN_ACTOR,
            finding=listed,
            at=at,
            merge_hours=self.config.alert_merge_hours,
        )
        if created:
            self.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.DETECTION_ALERT,
                    outcome=Outcome.SUCCESS,
                    actor=campaign.CAMPAIGN_ACTOR,
                    resource_type="Alert",
                    resource_ids=(str(alert.id), *cohort[:50]),
                    policy_reason=finding.sentence[:500],
                    detail={"rule": finding.rule.value, "level": finding.level.name.lower()},
                ),
            )
        flag = f"{at.timestamp()}|{finding.sentence}"
        for crowded_ref in crowded:
            self._flag_campaign(crowded_ref, flag)
        if finding.level is Level.CONTAIN:
            for member in members:
                state = session.get(ActorState, member.actor_ref)
                if state is not None and state.status == CONTAINED:
                    continue
                self.flags.set(member.actor_ref, flag)
                self._local_flags.set(member.actor_ref, flag)
                contain(session, actor=member, findings=[listed], audit=self.audit, at=at)
            return
        # Step-up: each member's next request waits for a second factor proven after now.
        for member in members:
            self._flag_campaign(member.actor_ref, flag)

    # -- after the caller's transaction ---------------------------------------------------
    def _after(self, session: Session, action: AfterAction) -> None:
        """Run `action` in a new transaction once the caller's root transaction ends (begun
        here if the session has none yet: the gate's fast path begins one only when used)."""
        if not session.in_transaction():
            session.begin()
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
        return self._baseline_entry(session, subject)[1]

    def _baseline_entry(self, session: Session, subject: str) -> tuple[float, rules.Baseline | None]:
        """The subject's baseline, and until when this process keeps it (time.monotonic)."""
        now = time.monotonic()
        with self._lock:
            cached = self._baselines.get(subject)
        if cached is not None and cached[0] > now:
            return cached
        row = session.get(ExposureBaseline, subject)
        value = None if row is None else rules.Baseline(row.m15, row.h1, row.h24, row.off_hours_share)
        cached = (now + _BASELINE_TTL, value)
        with self._lock:
            if len(self._baselines) > 50_000:
                self._baselines.clear()
            self._baselines[subject] = cached
        return cached

    def _role_baseline(self, session: Session, actor: Actor) -> rules.Baseline | None:
        return self._role_baseline_entry(session, actor)[1]

    def _role_baseline_entry(self, session: Session, actor: Actor) -> tuple[float, rules.Baseline | None]:
        """The largest baseline of the actor's patient-data roles, kept until the first of them
        expires."""
        roles_ = sorted(r.value for r in actor.roles if r in PATIENT_DATA_ROLES)
        best: rules.Baseline | None = None
        expires = _FOREVER
        for role in roles_:
            until, value = self._baseline_entry(session, f"role:{role}")
            expires = min(expires, until)
            if value is not None and (best is None or value.h24 > best.h24):
                best = value
        return expires, best

    def _is_new_address(
        self, session: Session, actor: Actor, at: dt.datetime, standing: _Standing | None = None
    ) -> bool:
        """`standing`: the actor's, which learns when its address is known (for good: a known
        address is never forgotten)."""
        address = actor.address
        if not address:
            return False
        if standing is not None:
            if standing.address_known:
                return False
            new = self._is_new_address(session, actor, at)
            standing.address_known = standing.address_pair in self._known_addresses
            return new
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


# A request judged on kept counts adds at most QUIET_BUDGET new patients to them, within
# QUIET_SECONDS, and only while counts raised by QUIET_HEADROOM patients would find nothing: what
# other workers hold back meanwhile (QUIET_BUDGET each) stays inside that headroom.
QUIET_SECONDS = 2.0
QUIET_BUDGET = 4
QUIET_HEADROOM = 16
QUIET_HELD = 500  # adds held by this worker before its next request asks Redis anyway
# An idle worker sends what it holds after this long (a busy one with its next request's script).
QUIET_FLUSH_SECONDS = 2 * QUIET_SECONDS
# A patient whose plain read this worker sent to Redis less than this ago is in every window a
# read counts (the shortest is 15 minutes) for as long as kept counts are used (QUIET_SECONDS),
# with a margin: reading it again adds no patient (`_known`).
KNOWN_AGE = dt.timedelta(minutes=15) - 3 * dt.timedelta(seconds=QUIET_SECONDS)
_QUIET_AGE = dt.timedelta(seconds=QUIET_SECONDS)
SENT_PER_ACTOR = 2_000


class _Standing:
    """What the requests of one actor share: its references (campaign, machine), its work role,
    whether its address is known, and the rules compiled for its baselines and probation
    (`SqlExposureLedger._judge`), made by its first request. `key`: the actor's fields they are
    made of; `view`: the baselines and opening date the judges are compiled for (`_View`)."""

    __slots__ = (
        "address_known",
        "address_pair",
        "campaign_refs",
        "config",
        "key",
        "seen_pairs",
        "view",
        "work_role",
    )

    def __init__(
        self,
        *,
        key: tuple[object, ...],
        config: DetectionConfig,
        campaign_refs: tuple[str, ...],
        seen_pairs: tuple[tuple[str, str], ...],
        work_role: str | None,
        address_pair: tuple[str, str] | None,
    ) -> None:
        self.key = key
        self.config = config
        self.campaign_refs = campaign_refs
        self.seen_pairs = seen_pairs
        self.work_role = work_role
        self.address_pair = address_pair
        self.address_known = False
        self.view = _View(-_FOREVER, None, None, None, {})


class _View(NamedTuple):
    """An actor's baselines and opening date as the ledger's caches answered them, until
    `expires` (the first of them to expire, time.monotonic), and the judges compiled for them
    (per probation and work known): replaced whole, never changed but for a judge added."""

    expires: float
    account_baseline: rules.Baseline | None
    role_baseline: rules.Baseline | None
    opened: dt.datetime | None
    judges: dict[tuple[bool, bool], rules.Judge]


class _Held:
    """A quiet plain read whose adds are held back for a later script (made when sent)."""

    __slots__ = ("actor_ref", "at", "installation", "patient_ids", "since")

    def __init__(
        self,
        since: float,
        actor_ref: str,
        at: dt.datetime,
        patient_ids: Sequence[uuid.UUID],
        installation: Sequence[uuid.UUID],
    ) -> None:
        self.since = since  # time.monotonic() when it was held
        self.actor_ref = actor_ref
        self.at = at
        self.patient_ids = patient_ids
        self.installation = installation

    def adds(self, redis: RedisExposureCounters) -> list[Add]:
        return redis.adds(
            actor_ref=self.actor_ref, at=self.at, patient_ids=self.patient_ids, installation=self.installation
        )


def _plain(request: _Request) -> bool:
    """A read of patients in care and nothing else (no search, list, export or patient outside
    care): what may be judged on kept counts, adding its patients to every window alike."""
    return not (request.events or request.outside_care or request.listed or request.exported)


_holding: weakref.WeakSet[SqlExposureLedger] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """A worker shutting down sends what its ledgers hold (nothing counted is left behind)."""
    for ledger in list(_holding):
        ledger.flush_held()


@dataclasses.dataclass(frozen=True)
class _Request:
    actor: Actor
    at: dt.datetime
    restored: dt.datetime | None
    patient_ids: list[uuid.UUID]
    outside_care: list[uuid.UUID]
    exported: bool
    listed: bool
    events: list[tuple[EventKind, str]]
    installation: list[uuid.UUID]


@dataclasses.dataclass(slots=True)
class _Quiet:
    """An actor's kept counts (changed under the ledger's lock only)."""

    until: float
    at: dt.datetime
    restored: dt.datetime | None
    counts: ActorCounts
    budget: int
    known: set[uuid.UUID]


def _raised(counts: ActorCounts, n: int) -> ActorCounts:
    """The counts with `n` more distinct patients in every window a read in care counts.

    `dataclasses.replace` without its cost (ActorCounts' frozen `__init__` sets each of its
    twenty fields through `object.__setattr__`): the same fields, four of them raised."""
    raised = object.__new__(ActorCounts)
    values = raised.__dict__
    values.update(counts.__dict__)
    values["patients_15m"] += n
    values["patients_1h"] += n
    values["patients_24h"] += n
    values["patients_7d"] += n
    return raised


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


# Lists of one day whose digest names it: a clinician's day list, the front desk's arrivals.
DAY_LISTS = ("day-list", "arrivals")


def _other_day_list(query_shape: SearchEvent | None, at: dt.datetime, config: DetectionConfig) -> bool:
    """A clinician's day list of a day other than the current one (the day list's digest names
    its day). Around midnight both the UTC and the local date are current, and a night shift
    before 06:00 still works on the list of the evening it started."""
    if query_shape is None or query_shape.shape is not SearchShape.LIST:
        return False
    prefix, _, day_text = query_shape.term_digest.partition(":")
    if prefix not in DAY_LISTS:
        return False
    try:
        day = dt.date.fromisoformat(day_text)
    except ValueError:
        return False
    local = at.astimezone(zoneinfo.ZoneInfo(config.timezone))
    current = {at.astimezone(dt.UTC).date(), local.date()}
    if local.hour < config.off_hours_end:
        current.add(local.date() - dt.timedelta(days=1))
    return day not in current


def _browsing(query_shape: SearchEvent | None) -> bool:
    return query_shape is not None and query_shape.shape is SearchShape.LIST and query_shape.browsing


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
