"""The exposure-accounting contract the gate relies on, and the detection vocabulary."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Protocol

from sqlalchemy.orm import Session

from carnet.access.actor import Actor


class Channel(StrEnum):
    """How a patient's identifying data left the server."""

    CHART = "chart"
    SEARCH = "search"
    LIST = "list"
    EXPORT = "export"
    REPORT = "report"
    WRITE = "write"


class SearchShape(StrEnum):
    """What kind of patient search the gate ran (never its values)."""

    IDENTIFIER = "identifier"  # INS, MRN, phone, email: exact identifiers
    NAME = "name"  # name (+ birth date)
    WILDCARD = "wildcard"  # prefix, partial or empty criteria
    # A name alone, matched among the actor's own patients ("bert"): however many it finds, a
    # partial search (the gate's name-alone branch is to pass it; until then detection takes a
    # NAME search with several results for one).
    PARTIAL = "partial"
    LIST = "list"  # a list page (appointments, stays, invoices)


@dataclass(frozen=True)
class SearchEvent:
    """The shape of one search or list request, passed by the gate as `query_shape`.

    `term_digest` is a keyed digest of the normalised criteria (the gate has the blind-index
    key): equal searches share it, so detection counts distinct searches without seeing them.
    `page` is 1 for the first page.
    """

    shape: SearchShape
    term_digest: str
    page: int = 1
    # A list page away from the actor's work of now (a window of the day's arrivals far from
    # the hour, a worklist paged past what a clerk works through): browsing, so every patient
    # on it counts as outside care or work, like another day's day list.
    browsing: bool = False


class Level(IntEnum):
    """The graduated response, in order of severity."""

    RECORD = 1
    STEP_UP = 2
    THROTTLE = 3
    CONTAIN = 4


class Rule(StrEnum):
    VOLUME = "volume"
    OUTSIDE_CARE = "outside-care"
    OUTSIDE_WORK = "outside-work"  # front desk, billing: patients with no business at the facility
    WEEKLY_VOLUME = "weekly-volume"
    ENUMERATION = "enumeration"
    DEEP_PAGING = "deep-paging"
    CANARY = "canary"
    NO_PATIENT_ROLE = "no-patient-data-role"
    DENIALS = "denials"
    OFF_HOURS = "off-hours"
    NEW_ADDRESS = "new-address"
    EXPORT = "export"
    CLIENT_VOLUME = "api-client-volume"
    PERSISTENCE = "persistence"
    BREAK_GLASS = "break-glass"  # every emergency access, for review (never merged)
    # Many referrals or care-team additions by one account, or naming one practitioner.
    CARE_RELATIONSHIPS = "care-relationships"
    # Accounts opened, roles granted, restores, approvals: per actor and per installation.
    ADMINISTRATION = "administration"
    # Several accounts at once: shared address or client, many anomalous, the installation's volume.
    CAMPAIGN = "campaign"
    # An HL7 v2 interface sending more messages, or other message types, than it is registered for.
    INTERFACE_BUDGET = "interface-budget"


@dataclass(frozen=True)
class Finding:
    """One rule's verdict, with a sentence a security officer understands (no patient data)."""

    rule: Rule
    level: Level
    sentence: str


class EventKind(StrEnum):
    """Detection events other than exposures, counted in windows and shown on timelines."""

    SEARCH = "search"
    IDENTIFIER_SEARCH = "identifier-search"
    WILDCARD_SEARCH = "wildcard-search"
    DEEP_PAGE = "deep-page"
    LIST_VIEW = "list-view"  # a list of patients: a practitioner's calendar, a day list
    DENIAL = "denial"
    EXPORT_DENIAL = "export-denial"
    REFUSAL = "refusal"  # a step-up or throttle the actor did not get past
    # An access-widening administrative action (key: what and on whom), counted per actor and
    # under the installation's reference.
    ADMINISTRATION = "admin"
    # Under a correlation reference (the installation, a network address, a client fingerprint):
    # an account seen there (key: its actor_ref), or found anomalous there.
    SEEN = "seen"
    ANOMALY = "anomaly"


class ExposureLedger(Protocol):
    """Records, in the caller's transaction, every patient whose identifying data leaves.

    `record` may raise carnet.kernel.errors.AccountContained, StepUpRequired or Throttled when
    the exposure crosses a detection threshold; the gate then rolls back and returns nothing.
    Containment and alerts are written in their own transaction once the caller's ends, so
    they survive that rollback.
    """

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
        """`outside_care`: those of `patient_ids` the actor has no care relationship with.
        `fields`: the identifying fields that left (for the breach report), when known."""
        ...

    def record_denial(
        self,
        session: Session,
        *,
        actor: Actor,
        resource_type: str,
        channel: Channel | None = None,
    ) -> None:
        """The gate refused this actor patient data. Never raises for detection: a containment
        it triggers is written after the caller's transaction ends and refuses the next request."""
        ...


class WorkRelations(Protocol):
    """Which patients a facility-wide role (front desk, billing) has a reason to handle now: an
    appointment around now, a stay, a recent invoice, a new registration. Implemented by the gate's
    package (it reads patient tables); detection only asks. Never used to decide access."""

    def in_work(
        self, session: Session, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime
    ) -> frozenset[uuid.UUID]: ...


@dataclass(frozen=True)
class ActorCounts:
    """Sliding-window counts for one actor, as the rules read them."""

    # 15 min and 1 h leave out the actor's own patients seen in lists; 24 h counts everyone.
    patients_15m: int = 0
    patients_1h: int = 0
    patients_24h: int = 0
    outside_1h: int = 0
    outside_24h: int = 0
    exported_24h: int = 0
    # Distinct patients over the last 7 days (approved exports excluded): the slow drip's window.
    patients_7d: int = 0
    searches_15m: int = 0
    searches_1h: int = 0
    identifier_searches_15m: int = 0
    wildcard_searches_1h: int = 0
    deep_pages_1h: int = 0
    # Different lists (practitioners' calendars, day lists) opened in 15 minutes.
    lists_15m: int = 0
    denials_15m: int = 0
    denials_24h: int = 0
    export_denials_1h: int = 0
    refusals_1h: int = 0
    refusals_24h: int = 0
    # When the actor was first stopped (step-up or throttle) in the last hour: a second factor
    # proven after it satisfies a step-up; one proven before (at login) does not.
    first_refusal_at: dt.datetime | None = None
    # The same over 24 hours: a person who proved a second factor since is not a stolen session.
    first_refusal_24h_at: dt.datetime | None = None


class ExposureCounters(Protocol):
    """Sliding-window counters per actor. The SQL ledger rows stay the record; counters are the
    fast path (Redis shared by every worker, or SQL window counts, or memory for unit tests)."""

    def add_event(self, *, actor_ref: str, kind: EventKind, key: str, at: dt.datetime) -> None: ...

    def counts(
        self, session: Session, *, actor_ref: str, at: dt.datetime, since: dt.datetime | None
    ) -> ActorCounts:
        """Counts in the windows ending at `at`, ignoring anything before `since` (a restore)."""
        ...

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
        """Record the request's exposed patients (when `patient_ids`) and `add_event` each of
        `events`, then `counts`: what every guarded request does, in one round trip where the
        store allows it. `listed`: shown in a list (a day list, appointments); patients of the
        actor's own care seen in a list count in the 24-hour window only: a ward's day list is
        the work itself. `exported`: an approved export, counted in its own window only."""
        ...

    def reset(self, *, actor_ref: str) -> None:
        """Forget an actor's windows (after a security officer restores the account)."""
        ...

    def keys(
        self, session: Session, *, actor_ref: str, kind: EventKind, at: dt.datetime, window: dt.timedelta
    ) -> list[str]:
        """The distinct keys of `kind` events under `actor_ref` in the window ending at `at`:
        which accounts a correlation reference saw (an address, the installation)."""
        ...

    def add_installation(self, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime) -> None:
        """Count these patients in the installation-wide window (every actor, every channel)."""
        ...

    def installation_counts(self, session: Session, *, at: dt.datetime) -> tuple[int, int]:
        """Distinct patients exposed installation-wide in the last 15 minutes and hour."""
        ...
