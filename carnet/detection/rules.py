"""Detection rules: pure functions from an actor's window counts to findings in plain words.

Each rule reads its thresholds from DetectionConfig and says what it saw as a security officer
would: who, how many patients, over what time, against what usual level. No patient data.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PATIENT_DATA_ROLES, Role
from carnet.detection.config import DetectionConfig, RoleVolume
from carnet.detection.interfaces import ActorCounts, Channel, Finding, Level, Rule


@dataclass(frozen=True)
class Baseline:
    m15: int
    h1: int
    h24: int
    off_hours_share: float


@dataclass(frozen=True)
class Context:
    """What the rules see about one request."""

    actor: Actor
    counts: ActorCounts
    at: dt.datetime
    channel: Channel | None = None
    canaries: Sequence[uuid.UUID] = ()
    account_baseline: Baseline | None = None
    role_baseline: Baseline | None = None
    new_address: bool = False
    denial: bool = False
    # Whether the ledger judged exposures against facility work (WorkRelations configured):
    # without it, a facility-wide role's "outside" counts mean nothing.
    work_known: bool = False
    # An account opened or restored in the last days: a smaller volume budget.
    probation: bool = False


def _who(actor: Actor) -> str:
    if actor.kind is ActorKind.CLIENT:
        return f"API client {actor.client_id or actor.username}"
    return actor.username


def _patients(n: int) -> str:
    return f"{n} different patient{'s' if n != 1 else ''}"


def _volume_role(actor: Actor, config: DetectionConfig) -> tuple[str, RoleVolume] | None:
    """The most permissive patient-data role the actor holds (None: it reads no patient data)."""
    # A Role is a StrEnum: it is its value as a key (str's hash and equality), and `str` gives
    # the value without the Enum's `.value` descriptor (a Python call per role, on every read).
    volumes = [
        (str(r), config.role_volume[r])
        for r in actor.roles
        if (r in PATIENT_DATA_ROLES or r is Role.PATIENT) and r in config.role_volume
    ]
    if not volumes:
        return None
    return max(volumes, key=lambda item: (item[1].h24, item[1].h1, item[1].m15))


_PEOPLE = {
    "physician": "a physician",
    "nurse": "a nurse",
    "front_desk": "a front-desk agent",
    "billing": "a billing clerk",
    "patient": "a patient",
}

# Each window: its baseline field, its words, and the count of distinct patients in it.
_WINDOWS = (
    ("m15", "in the last 15 minutes", "patients_15m"),
    ("h1", "in the last hour", "patients_1h"),
    ("h24", "in the last 24 hours", "patients_24h"),
)


def volume(config: DetectionConfig, ctx: Context) -> Finding | None:
    actor = ctx.actor
    if actor.kind is ActorKind.CLIENT:
        return _client_volume(config, ctx)
    role = _volume_role(actor, config)
    if role is None:
        if ctx.counts.patients_24h == 0:
            return None
        return Finding(
            Rule.NO_PATIENT_ROLE,
            Level.CONTAIN,
            f"{_who(actor)} holds no role that reads patient data, yet was shown "
            f"{_patients(ctx.counts.patients_24h)} in the last 24 hours.",
        )
    role_name, floors = role
    worst: tuple[Level, float, str] | None = None
    for window, words, count in _WINDOWS:
        usual = max(
            getattr(ctx.account_baseline, window, 0) if ctx.account_baseline else 0,
            getattr(ctx.role_baseline, window, 0) if ctx.role_baseline else 0,
        )
        floor = float(getattr(floors, window))
        if ctx.probation:
            # A new or just restored account has no history of its own: a smaller budget, and
            # its role's usual does not lift it.
            floor = max(1.0, floor * config.probation_factor)
            usual = 0
        threshold = min(max(floor, config.baseline_factor * usual), floor * config.baseline_cap_factor)
        seen = getattr(ctx.counts, count)
        if seen < threshold:
            continue
        ratio = seen / threshold
        level = Level.STEP_UP
        if ratio >= config.volume_contain_factor:
            level = Level.CONTAIN
        elif ratio >= config.volume_throttle_factor:
            level = Level.THROTTLE
        usual_words = f"; their usual is about {usual}" if usual else ""
        if ctx.probation:
            usual_words = "; a new or just restored account, on probation"
        sentence = (
            f"{_who(actor)} was shown {_patients(seen)} {words}, {ratio:.1f} times the level at which "
            f"{_PEOPLE.get(role_name, 'someone in this role')} is asked to confirm their identity "
            f"({int(threshold)})"
            f"{usual_words}."
        )
        if worst is None or (level, ratio) > (worst[0], worst[1]):
            worst = (level, ratio, sentence)
    if worst is None:
        return None
    return Finding(Rule.VOLUME, worst[0], worst[2])


def _client_volume(config: DetectionConfig, ctx: Context) -> Finding | None:
    floors = config.client_volume
    worst: tuple[Level, float, str] | None = None
    for window, words, count in _WINDOWS:
        usual = getattr(ctx.account_baseline, window, 0) if ctx.account_baseline else 0
        floor = float(getattr(floors, window))
        threshold = min(max(floor, config.baseline_factor * usual), floor * config.baseline_cap_factor)
        seen = getattr(ctx.counts, count)
        if seen < threshold:
            continue
        ratio = seen / threshold
        level = Level.CONTAIN if ratio >= config.volume_throttle_factor else Level.THROTTLE
        sentence = (
            f"{_who(ctx.actor)} received {_patients(seen)} {words}, above the {int(threshold)} "
            f"allowed to an API client before it is slowed down."
        )
        if worst is None or (level, ratio) > (worst[0], worst[1]):
            worst = (level, ratio, sentence)
    return None if worst is None else Finding(Rule.CLIENT_VOLUME, worst[0], worst[2])


def _care_scoped(actor: Actor, config: DetectionConfig) -> bool:
    roles = actor.roles  # Roles are StrEnums: equal to their values, and hashed alike
    return not roles.isdisjoint(config.care_scoped_roles) and roles.isdisjoint(config.facility_wide_roles)


def outside_care(config: DetectionConfig, ctx: Context) -> Finding | None:
    if not _care_scoped(ctx.actor, config):
        return None
    c = ctx.counts
    who = _who(ctx.actor)
    if c.outside_1h >= config.outside_care_contain_1h:
        return Finding(
            Rule.OUTSIDE_CARE,
            Level.CONTAIN,
            f"{who} was shown {_patients(c.outside_1h)} outside their care in the last hour "
            f"(containment at {config.outside_care_contain_1h}).",
        )
    if c.outside_24h >= config.outside_care_contain_24h:
        return Finding(
            Rule.OUTSIDE_CARE,
            Level.CONTAIN,
            f"{who} was shown {_patients(c.outside_24h)} outside their care in the last 24 hours "
            f"(containment at {config.outside_care_contain_24h}).",
        )
    if c.patients_24h >= config.outside_care_share_min_patients:
        share = c.outside_24h / c.patients_24h
        if share >= config.outside_care_share_contain:
            return Finding(
                Rule.OUTSIDE_CARE,
                Level.CONTAIN,
                f"{share:.0%} of the {c.patients_24h} patients {who} was shown in the last 24 hours "
                f"are outside their care.",
            )
    if c.outside_1h >= config.outside_care_step_up_1h:
        return Finding(
            Rule.OUTSIDE_CARE,
            Level.STEP_UP,
            f"{who} was shown {_patients(c.outside_1h)} outside their care in the last hour.",
        )
    return None


def work_role(actor: Actor, config: DetectionConfig) -> str | None:
    """The facility-wide role judged against its work; None for care-scoped or mixed actors."""
    names = {r.value for r in actor.roles}
    if names & set(config.care_scoped_roles):
        return None  # a clinician's own patients are judged by care relationships
    held = sorted(names & set(config.outside_work), key=lambda r: -config.outside_work[r].contain_24h)
    return held[0] if held else None


def outside_work(config: DetectionConfig, ctx: Context) -> Finding | None:
    """Front desk and billing: patients with no appointment around now, no stay, no invoice of
    the year and no new registration are outside their work; a few a day is a caller to book."""
    if not ctx.work_known:
        return None
    role = work_role(ctx.actor, config)
    if role is None:
        return None
    limits = config.outside_work[role]
    c = ctx.counts
    who = _who(ctx.actor)
    person = _PEOPLE.get(role, "someone in this role")
    tail = "no appointment around now, no recent stay or invoice, not newly registered"
    if c.outside_1h >= limits.contain_1h or c.outside_24h >= limits.contain_24h:
        hourly = c.outside_1h >= limits.contain_1h
        window, n = ("hour", c.outside_1h) if hourly else ("24 hours", c.outside_24h)
        return Finding(
            Rule.OUTSIDE_WORK,
            Level.CONTAIN,
            f"{who}, {person}, was shown {_patients(n)} in the last {window} who have no business with "
            f"the facility ({tail}): a sweep of the patient register.",
        )
    if c.outside_1h >= limits.step_up_1h or c.outside_24h >= limits.step_up_24h:
        hourly = c.outside_1h >= limits.step_up_1h
        window, n = ("hour", c.outside_1h) if hourly else ("24 hours", c.outside_24h)
        return Finding(
            Rule.OUTSIDE_WORK,
            Level.STEP_UP,
            f"{who}, {person}, was shown {_patients(n)} in the last {window} who have no business with "
            f"the facility ({tail}).",
        )
    return None


def weekly_volume(config: DetectionConfig, ctx: Context) -> Finding | None:
    """Seven days against the role's weekly floor and the account's own daily usual: a slow
    drip stays under every daily threshold, not under a week of them."""
    if ctx.actor.kind is ActorKind.CLIENT:
        return None
    role = _volume_role(ctx.actor, config)
    if role is None or role[0] not in config.weekly_volume:
        return None
    floor = float(config.weekly_volume[role[0]])
    usual_day = ctx.account_baseline.h24 if ctx.account_baseline else 0
    threshold = min(max(floor, config.baseline_factor * 5 * usual_day), floor * config.baseline_cap_factor)
    seen = ctx.counts.patients_7d
    if seen < threshold:
        return None
    usual_words = f"; on a busy day they usually see about {usual_day}" if usual_day else ""
    return Finding(
        Rule.WEEKLY_VOLUME,
        Level.STEP_UP,
        f"{_who(ctx.actor)} was shown {_patients(seen)} in the last 7 days, beyond the {int(threshold)} "
        f"at which {_PEOPLE.get(role[0], 'someone in this role')} is asked to confirm their identity"
        f"{usual_words}.",
    )


def enumeration(config: DetectionConfig, ctx: Context) -> Finding | None:
    c = ctx.counts
    who = _who(ctx.actor)
    if c.identifier_searches_15m >= config.identifier_searches_contain_15m:
        return Finding(
            Rule.ENUMERATION,
            Level.CONTAIN,
            f"{who} looked up {c.identifier_searches_15m} different patients one by one in 15 minutes "
            f"(by identifier, or asking who a calendar slot is for): an identifier sweep.",
        )
    if c.wildcard_searches_1h >= config.wildcard_searches_contain_1h:
        return Finding(
            Rule.ENUMERATION,
            Level.CONTAIN,
            f"{who} ran {c.wildcard_searches_1h} partial or wildcard patient searches in the last hour: "
            f"an alphabetical sweep.",
        )
    if c.searches_15m >= config.searches_contain_15m or c.searches_1h >= config.searches_contain_1h:
        return Finding(
            Rule.ENUMERATION,
            Level.CONTAIN,
            f"{who} ran {c.searches_15m} different patient searches in 15 minutes "
            f"({c.searches_1h} in the last hour): a search sweep.",
        )
    if c.identifier_searches_15m >= config.identifier_searches_step_up_15m:
        return Finding(
            Rule.ENUMERATION,
            Level.STEP_UP,
            f"{who} looked up {c.identifier_searches_15m} different patients one by one in 15 minutes "
            f"(by identifier, or asking who a calendar slot is for).",
        )
    if c.wildcard_searches_1h >= config.wildcard_searches_step_up_1h:
        return Finding(
            Rule.ENUMERATION,
            Level.STEP_UP,
            f"{who} ran {c.wildcard_searches_1h} partial or wildcard patient searches in the last hour.",
        )
    if c.searches_15m >= config.searches_step_up_15m:
        return Finding(
            Rule.ENUMERATION,
            Level.STEP_UP,
            f"{who} ran {c.searches_15m} different patient searches in 15 minutes.",
        )
    return None


def list_breadth(config: DetectionConfig, ctx: Context) -> Finding | None:
    n = ctx.counts.lists_15m
    who = _who(ctx.actor)
    if n >= config.list_views_contain_15m:
        return Finding(
            Rule.ENUMERATION,
            Level.CONTAIN,
            f"{who} opened {n} different patient lists (practitioners' calendars) in 15 minutes: "
            f"going through the whole facility's schedule.",
        )
    if n >= config.list_views_step_up_15m:
        return Finding(
            Rule.ENUMERATION,
            Level.STEP_UP,
            f"{who} opened {n} different patient lists (practitioners' calendars) in 15 minutes.",
        )
    return None


def deep_paging(config: DetectionConfig, ctx: Context) -> Finding | None:
    n = ctx.counts.deep_pages_1h
    who = _who(ctx.actor)
    if n >= config.deep_pages_contain_1h:
        return Finding(
            Rule.DEEP_PAGING,
            Level.CONTAIN,
            f"{who} paged beyond page {config.deep_page} of patient lists {n} times in the last hour: "
            f"paging through everything.",
        )
    if n >= config.deep_pages_step_up_1h:
        return Finding(
            Rule.DEEP_PAGING,
            Level.STEP_UP,
            f"{who} paged beyond page {config.deep_page} of a patient list.",
        )
    return None


def canary(config: DetectionConfig, ctx: Context) -> Finding | None:
    if not ctx.canaries:
        return None
    return Finding(
        Rule.CANARY,
        Level.CONTAIN,
        f"{_who(ctx.actor)} was shown a decoy patient record that no one has a reason to open "
        f"({len(ctx.canaries)} decoy{'s' if len(ctx.canaries) != 1 else ''}): a sign of bulk collection.",
    )


def denials(config: DetectionConfig, ctx: Context) -> Finding | None:
    c = ctx.counts
    actor = ctx.actor
    who = _who(actor)
    if c.export_denials_1h >= config.export_denials_contain_1h:
        return Finding(
            Rule.EXPORT,
            Level.CONTAIN,
            f"{who} tried {c.export_denials_1h} times in the last hour to export patient data "
            f"without an approved export.",
        )
    administrator = Role.SYSTEM_ADMINISTRATOR in actor.roles and not (actor.roles & PATIENT_DATA_ROLES)
    if administrator and c.denials_15m >= 1:
        level = Level.CONTAIN if c.denials_15m >= config.admin_denials_contain_15m else Level.RECORD
        return Finding(
            Rule.DENIALS,
            level,
            f"{who}, a system administrator, who reads no patient data, tried to reach patient data "
            f"{c.denials_15m} time{'s' if c.denials_15m != 1 else ''} in 15 minutes.",
        )
    if c.denials_15m >= config.denials_contain_15m:
        return Finding(
            Rule.DENIALS,
            Level.CONTAIN,
            f"{who} was refused patient data {c.denials_15m} times in 15 minutes.",
        )
    if c.denials_24h >= config.denials_contain_24h:
        return Finding(
            Rule.DENIALS,
            Level.CONTAIN,
            f"{who} was refused patient data {c.denials_24h} times in the last 24 hours.",
        )
    if c.denials_15m >= config.denials_step_up_15m:
        return Finding(
            Rule.DENIALS,
            Level.STEP_UP,
            f"{who} was refused patient data {c.denials_15m} times in 15 minutes.",
        )
    if c.denials_24h >= config.denials_step_up_24h:
        return Finding(
            Rule.DENIALS,
            Level.STEP_UP,
            f"{who} was refused patient data {c.denials_24h} times in the last 24 hours.",
        )
    return None


def is_off_hours(config: DetectionConfig, at: dt.datetime) -> bool:
    hour = at.astimezone(zoneinfo.ZoneInfo(config.timezone)).hour
    start, end = config.off_hours_start, config.off_hours_end
    return (hour >= start or hour < end) if start > end else (start <= hour < end)


def off_hours(config: DetectionConfig, ctx: Context) -> Finding | None:
    if ctx.denial or ctx.counts.patients_1h == 0 or not is_off_hours(config, ctx.at):
        return None
    baseline = ctx.account_baseline
    if baseline is not None and baseline.off_hours_share >= config.off_hours_usual_share:
        return None  # night staff
    # Nurses and emergency physicians work nights on rotation: for those roles the night is a
    # normal pattern, so a new account or one rotated onto nights (no baseline, or a baseline of
    # days) is noted, not stopped; volume, care and enumeration rules still judge what it reads.
    night_role = bool({r.value for r in ctx.actor.roles} & set(config.night_roles))
    local = ctx.at.astimezone(zoneinfo.ZoneInfo(config.timezone)).strftime("%H:%M")
    n = ctx.counts.patients_1h
    stops = n >= config.off_hours_step_up_1h and not night_role
    if not stops and baseline is None:
        return None  # no pattern of its own to depart from, and no volume worth asking about
    level = Level.STEP_UP if stops else Level.RECORD
    return Finding(
        Rule.OFF_HOURS,
        level,
        f"{_who(ctx.actor)}, who does not usually work at night, was shown {_patients(n)} in the hour "
        f"before {local}.",
    )


def new_address(config: DetectionConfig, ctx: Context) -> Finding | None:
    if not ctx.new_address or ctx.denial:
        return None
    n = ctx.counts.patients_1h
    level = Level.STEP_UP if n >= config.new_address_step_up_1h else Level.RECORD
    return Finding(
        Rule.NEW_ADDRESS,
        level,
        f"{_who(ctx.actor)} reached patient data from a network address never used by this account "
        f"({ctx.actor.address}); {_patients(n)} in the last hour.",
    )


def export(config: DetectionConfig, ctx: Context) -> Finding | None:
    if ctx.channel is not Channel.EXPORT:
        return None
    # Only the gate's export uses this channel, after a second person approved it with a stated
    # purpose: its volume is not a sweep. A large one asks for a fresh second factor and is
    # shown to the security officer; it is never throttled or contained for its size.
    n = ctx.counts.exported_24h
    who = _who(ctx.actor)
    level = Level.STEP_UP if n >= config.export_step_up_24h else Level.RECORD
    return Finding(
        Rule.EXPORT,
        level,
        f"{who} exported the data of {_patients(n)} in the last 24 hours, under approved exports.",
    )


def persistence(config: DetectionConfig, ctx: Context) -> Finding | None:
    c = ctx.counts
    if c.refusals_1h >= config.refusals_contain_1h:
        n, window = c.refusals_1h, "hour"
    elif c.refusals_24h >= config.refusals_contain_24h and not _proved_since(ctx, c.first_refusal_24h_at):
        # Staff asked again each hour answer each time; a stolen session never does.
        return Finding(
            Rule.PERSISTENCE,
            Level.CONTAIN,
            f"{_who(ctx.actor)} kept requesting patient data after being stopped {c.refusals_24h} times in "
            f"the last 24 hours, without once confirming their identity with a second factor.",
        )
    else:
        return None
    return Finding(
        Rule.PERSISTENCE,
        Level.CONTAIN,
        f"{_who(ctx.actor)} kept requesting patient data after being stopped {n} times in the last {window} "
        f"(asked for a second factor or slowed down).",
    )


def pending_step_up(config: DetectionConfig, ctx: Context) -> Finding | None:
    """Once asked for a second factor, a session gets no more patient data until it answers:
    otherwise a session that cannot answer keeps reading whatever stays under the threshold."""
    if ctx.actor.kind is not ActorKind.STAFF:
        return None
    asked = ctx.counts.first_refusal_24h_at
    if asked is None or _proved_since(ctx, asked):
        return None
    local = asked.astimezone(zoneinfo.ZoneInfo(config.timezone)).strftime("%H:%M")
    return Finding(
        Rule.PERSISTENCE,
        Level.STEP_UP,
        f"{_who(ctx.actor)} was asked to confirm their identity at {local} and has not done so yet.",
    )


def _proved_since(ctx: Context, moment: dt.datetime | None) -> bool:
    proven = ctx.actor.second_factor_at
    return proven is not None and moment is not None and proven >= moment


ExposureRule = Callable[[DetectionConfig, Context], Finding | None]

EXPOSURE_RULES: tuple[ExposureRule, ...] = (
    canary,
    volume,
    weekly_volume,
    outside_care,
    outside_work,
    enumeration,
    list_breadth,
    deep_paging,
    export,
    off_hours,
    new_address,
    persistence,
    pending_step_up,
)
DENIAL_RULES: tuple[ExposureRule, ...] = (denials, persistence)


def evaluate(config: DetectionConfig, ctx: Context) -> list[Finding]:
    """Every finding of this request, most severe first."""
    rules = DENIAL_RULES if ctx.denial else EXPOSURE_RULES
    findings = [f for f in (rule(config, ctx) for rule in rules) if f is not None]
    return sorted(findings, key=lambda f: f.level, reverse=True)


_NEVER = float("inf")  # a count that no rule judges: no threshold


class Judge:
    """`evaluate` for one actor's standing, compiled once: the exposure rules' thresholds for its
    kind and roles, baselines, probation and work, under one config. A request far below every
    threshold (nearly every read) is answered by comparing its counts with them; any other goes
    to `evaluate` itself, so the findings are `evaluate`'s, always (`findings`).

    `silent` answers True only when `evaluate` would return no finding. Proof, rule by rule of
    EXPOSURE_RULES (a denial's context always goes to `evaluate`); counts are what the rules
    compare, every threshold below is computed by the same expression as the rule's, in the same
    floating-point operations, and compared with the same operator:

    - canary: finds only with canaries; silent needs none.
    - volume, API client: per window, finds only if `seen >= threshold` (it `continue`s below);
      silent needs every window's count below that window's threshold (`_t15`, `_t1`, `_t24`,
      from the client floors and the account's baseline).
    - volume, any other actor: without a patient-data role it finds on any patient: such a judge
      is never silent (`_reference_only`); with one, as for clients, from the role's floors, the
      larger baseline and probation, exactly as the rule computes them.
    - weekly_volume: finds only for a non-client with a role in `weekly_volume`, and only if
      `patients_7d >= threshold`; silent needs `patients_7d < _t7` (infinite when it cannot find).
    - outside_care: only for care-scoped actors; finds iff outside_1h reaches its containment or
      step-up level, outside_24h its containment level, or the share test holds; silent needs
      `outside_1h < _o1` and `outside_24h < _o24` (the smaller of the levels of each rule that
      applies) and the share test, as the rule writes it, false.
    - outside_work: only when work is known and the actor has a work role; finds iff outside_1h or
      outside_24h reaches its step-up or containment level: covered by `_o1`, `_o24`.
    - enumeration, list_breadth, deep_paging: each finds iff one of its counts reaches the smaller
      of its step-up and containment levels (searches_1h: its containment level): silent needs
      every one below it.
    - export: finds iff the channel is EXPORT; silent needs another channel.
    - off_hours: none with no patient in the hour, or outside off-hours (`is_off_hours`, with the
      zone it loads); and none when the account's baseline shows night work, or for a night role
      with no baseline (then `stops` is false and the baseline None). Silent needs one of these.
    - new_address: finds only for a new address; silent needs none.
    - persistence: finds only if refusals_1h or refusals_24h reaches its containment level;
      silent needs both below.
    - pending_step_up: for staff, finds only with a first refusal in 24 hours; silent needs none.

    `evaluate` keeps the findings that are not None: when every rule returns None, it returns [].
    The config is read when the judge is made (a DetectionConfig is never changed in place)."""

    __slots__ = (
        "_account_baseline",
        "_deep1",
        "_id15",
        "_kind",
        "_lists15",
        "_night_quiet",
        "_o1",
        "_o24",
        "_off_end",
        "_off_start",
        "_probation",
        "_reference_only",
        "_refusals1",
        "_refusals24",
        "_role_baseline",
        "_roles",
        "_s1",
        "_s15",
        "_share",
        "_share_min",
        "_staff",
        "_t1",
        "_t7",
        "_t15",
        "_t24",
        "_wild1",
        "_work_known",
        "_zone",
        "config",
    )

    def __init__(
        self,
        config: DetectionConfig,
        *,
        actor: Actor,
        account_baseline: Baseline | None,
        role_baseline: Baseline | None,
        work_known: bool,
        probation: bool,
    ) -> None:
        self.config = config
        self._kind = actor.kind
        self._roles = actor.roles
        self._account_baseline = account_baseline
        self._role_baseline = role_baseline
        self._work_known = work_known
        self._probation = probation
        client = actor.kind is ActorKind.CLIENT
        role = None if client else _volume_role(actor, config)
        self._reference_only = not client and role is None
        # volume (`volume`, `_client_volume`): the threshold of each window, as the rule makes it.
        thresholds = []
        for window, _words, _count in _WINDOWS:
            if client:
                usual = getattr(account_baseline, window, 0) if account_baseline else 0
                floor = float(getattr(config.client_volume, window))
            elif role is None:
                thresholds.append(_NEVER)
                continue
            else:
                usual = max(
                    getattr(account_baseline, window, 0) if account_baseline else 0,
                    getattr(role_baseline, window, 0) if role_baseline else 0,
                )
                floor = float(getattr(role[1], window))
                if probation:
                    floor = max(1.0, floor * config.probation_factor)
                    usual = 0
            thresholds.append(
                min(max(floor, config.baseline_factor * usual), floor * config.baseline_cap_factor)
            )
        self._t15, self._t1, self._t24 = thresholds
        # weekly_volume
        self._t7 = _NEVER
        if role is not None and role[0] in config.weekly_volume:
            week = float(config.weekly_volume[role[0]])
            usual_day = account_baseline.h24 if account_baseline else 0
            self._t7 = min(
                max(week, config.baseline_factor * 5 * usual_day), week * config.baseline_cap_factor
            )
        # outside_care, outside_work
        o1: list[float] = [_NEVER]
        o24: list[float] = [_NEVER]
        self._share_min: float = _NEVER
        self._share = config.outside_care_share_contain
        if _care_scoped(actor, config):
            o1 += [config.outside_care_contain_1h, config.outside_care_step_up_1h]
            o24.append(config.outside_care_contain_24h)
            self._share_min = config.outside_care_share_min_patients
        held = work_role(actor, config) if work_known else None
        if held is not None:
            limits = config.outside_work[held]
            o1 += [limits.contain_1h, limits.step_up_1h]
            o24 += [limits.contain_24h, limits.step_up_24h]
        self._o1, self._o24 = min(o1), min(o24)
        # enumeration, list_breadth, deep_paging
        self._id15 = min(config.identifier_searches_contain_15m, config.identifier_searches_step_up_15m)
        self._wild1 = min(config.wildcard_searches_contain_1h, config.wildcard_searches_step_up_1h)
        self._s15 = min(config.searches_contain_15m, config.searches_step_up_15m)
        self._s1 = config.searches_contain_1h
        self._lists15 = min(config.list_views_contain_15m, config.list_views_step_up_15m)
        self._deep1 = min(config.deep_pages_contain_1h, config.deep_pages_step_up_1h)
        # persistence, pending_step_up
        self._refusals1 = config.refusals_contain_1h
        self._refusals24 = config.refusals_contain_24h
        self._staff = actor.kind is ActorKind.STAFF
        # off_hours
        night_role = bool({r.value for r in actor.roles} & set(config.night_roles))
        self._night_quiet = (
            account_baseline is not None and account_baseline.off_hours_share >= config.off_hours_usual_share
        ) or (night_role and account_baseline is None)
        self._zone = zoneinfo.ZoneInfo(config.timezone)
        self._off_start, self._off_end = config.off_hours_start, config.off_hours_end

    def silent(
        self,
        counts: ActorCounts,
        at: dt.datetime,
        channel: Channel | None,
        canaries: Sequence[uuid.UUID],
        new_address: bool,
    ) -> bool:
        """True only if `evaluate` finds nothing in an exposure's context (not a denial) of this
        judge's actor and standing with these values (see the class)."""
        c = counts
        if (
            self._reference_only
            or canaries
            or new_address
            or channel is Channel.EXPORT
            # As the volume rules write it (`seen < threshold`: a NaN threshold is not silent).
            or not (
                c.patients_15m < self._t15
                and c.patients_1h < self._t1
                and c.patients_24h < self._t24
                and c.patients_7d < self._t7
            )
            or c.outside_1h >= self._o1
            or c.outside_24h >= self._o24
            or c.identifier_searches_15m >= self._id15
            or c.wildcard_searches_1h >= self._wild1
            or c.searches_15m >= self._s15
            or c.searches_1h >= self._s1
            or c.lists_15m >= self._lists15
            or c.deep_pages_1h >= self._deep1
            or c.refusals_1h >= self._refusals1
            or c.refusals_24h >= self._refusals24
            or (self._staff and c.first_refusal_24h_at is not None)
        ):
            return False
        if c.patients_24h >= self._share_min and c.outside_24h / c.patients_24h >= self._share:
            return False
        if c.patients_1h == 0 or self._night_quiet:
            return True
        hour = at.astimezone(self._zone).hour
        start, end = self._off_start, self._off_end
        return not ((hour >= start or hour < end) if start > end else (start <= hour < end))

    def findings(self, ctx: Context) -> list[Finding]:
        """`evaluate(self.config, ctx)`, without running the rules when `silent` proves it empty
        (a context of another actor or standing than this judge's goes to `evaluate`)."""
        if (
            not ctx.denial
            and ctx.actor.kind is self._kind
            and ctx.actor.roles == self._roles
            and ctx.account_baseline is self._account_baseline
            and ctx.role_baseline is self._role_baseline
            and ctx.work_known == self._work_known
            and ctx.probation == self._probation
            and self.silent(ctx.counts, ctx.at, ctx.channel, ctx.canaries, ctx.new_address)
        ):
            return []
        return evaluate(self.config, ctx)
