"""Detection thresholds, from CARNET_DETECTION_* environment variables.

Every rule reads its thresholds here, so a hospital tunes them without code. Counts are distinct
patients (or distinct searches, refusals, denials) in the named sliding window.
"""

from __future__ import annotations

import functools

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RoleVolume(BaseSettings):
    """Distinct patients in 15 min / 1 h / 24 h from which a role is asked for a step-up."""

    model_config = SettingsConfigDict(extra="forbid")

    m15: int = Field(ge=1)
    h1: int = Field(ge=1)
    h24: int = Field(ge=1)


def _volumes() -> dict[str, RoleVolume]:
    # Clinicians see their lists (care-scoped); front desk and billing see a facility's day.
    return {
        "physician": RoleVolume(m15=40, h1=80, h24=200),
        "nurse": RoleVolume(m15=40, h1=80, h24=200),
        "front_desk": RoleVolume(m15=60, h1=150, h24=400),
        # Billing works invoice by invoice, not through day lists: a sweep shows quickly.
        "billing": RoleVolume(m15=25, h1=60, h24=200),
        "patient": RoleVolume(m15=2, h1=2, h24=2),
    }


class WorkLimits(BaseSettings):
    """Distinct patients outside a facility-wide role's work (no appointment around now, no
    recent stay or invoice, not newly registered: carnet.phi.work) from which it is asked for a second
    factor, and from which it is contained."""

    model_config = SettingsConfigDict(extra="forbid")

    step_up_1h: int = Field(ge=1)
    step_up_24h: int = Field(ge=1)
    contain_1h: int = Field(ge=1)
    contain_24h: int = Field(ge=1)


def _work_limits() -> dict[str, WorkLimits]:
    # Front desk books callers who have no appointment yet (a few an hour); billing invoices
    # patients who came through the facility, so anyone else is rare for it.
    return {
        "front_desk": WorkLimits(step_up_1h=6, step_up_24h=15, contain_1h=20, contain_24h=60),
        "billing": WorkLimits(step_up_1h=5, step_up_24h=8, contain_1h=15, contain_24h=30),
    }


def _weekly() -> dict[str, int]:
    # Distinct patients in 7 days from which a role is asked for a step-up: what a full-time
    # week's lists add up to. It bounds a drip that stays under every daily floor.
    return {"physician": 600, "nurse": 600, "front_desk": 1200, "billing": 400, "patient": 2}


class DetectionConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARNET_DETECTION_", extra="ignore")

    # Volume: the step-up threshold is max(role floor, baseline_factor x own/role baseline);
    # twice it throttles, `volume_contain_factor` times it contains.
    role_volume: dict[str, RoleVolume] = Field(default_factory=_volumes)
    baseline_factor: float = Field(default=3.0, gt=1)
    # A baseline never lifts a threshold above this many times the floor: a slow drip over
    # weeks cannot teach the detector that bulk reading is usual.
    baseline_cap_factor: float = Field(default=2.0, ge=1)
    volume_throttle_factor: float = Field(default=2.0, gt=1)
    volume_contain_factor: float = Field(default=3.0, gt=1)
    # Seven days: step-up from max(weekly floor, baseline_factor x 5 x own daily usual), capped
    # at baseline_cap_factor x the floor; a stolen session cannot answer it, so it stops there.
    weekly_volume: dict[str, int] = Field(default_factory=_weekly)
    # API clients cannot step up: their floors throttle, twice them contains.
    client_volume: RoleVolume = Field(default_factory=lambda: RoleVolume(m15=500, h1=2000, h24=10000))

    # Patients outside the actor's care relationships (break-the-glass, searches). Judged only
    # for roles whose work is care-scoped: front desk and billing serve the whole facility.
    care_scoped_roles: list[str] = Field(default_factory=lambda: ["physician", "nurse"])
    facility_wide_roles: list[str] = Field(default_factory=lambda: ["front_desk", "billing"])
    outside_care_step_up_1h: int = Field(default=3, ge=1)
    outside_care_contain_1h: int = Field(default=8, ge=1)
    outside_care_contain_24h: int = Field(default=15, ge=1)
    outside_care_share_min_patients: int = Field(default=10, ge=1)
    outside_care_share_contain: float = Field(default=0.5, gt=0, le=1)
    # The same idea for facility-wide roles, against their work instead of care relationships.
    outside_work: dict[str, WorkLimits] = Field(default_factory=_work_limits)

    # Enumeration: distinct search terms, identifier sweeps, wildcard sweeps, deep paging.
    searches_step_up_15m: int = Field(default=15, ge=1)
    searches_contain_15m: int = Field(default=25, ge=1)
    searches_contain_1h: int = Field(default=40, ge=1)
    identifier_searches_step_up_15m: int = Field(default=8, ge=1)
    identifier_searches_contain_15m: int = Field(default=15, ge=1)
    wildcard_searches_step_up_1h: int = Field(default=2, ge=1)
    wildcard_searches_contain_1h: int = Field(default=5, ge=1)
    deep_page: int = Field(default=5, ge=1)
    deep_pages_step_up_1h: int = Field(default=1, ge=1)
    deep_pages_contain_1h: int = Field(default=4, ge=1)
    # Lists of patients (practitioners' calendars): a desk books for a few practitioners; one
    # calendar can hold dozens of patients, so breadth is what tells a scrape.
    list_views_step_up_15m: int = Field(default=6, ge=1)
    list_views_contain_15m: int = Field(default=12, ge=1)

    # Refused attempts to reach patient data (the gate reports its denials).
    admin_denials_contain_15m: int = Field(default=3, ge=1)
    denials_step_up_15m: int = Field(default=10, ge=1)
    denials_contain_15m: int = Field(default=25, ge=1)
    # Spread over a day (a drip that keeps knocking): clinicians reach others through
    # break-the-glass, not by being refused again and again.
    denials_step_up_24h: int = Field(default=20, ge=1)
    denials_contain_24h: int = Field(default=40, ge=1)
    export_denials_contain_1h: int = Field(default=2, ge=1)

    # Approved exports (watermarked): a large one asks for a fresh second factor, never contains.
    export_step_up_24h: int = Field(default=10, ge=1)

    # Off-hours and new addresses: worth a step-up only with some volume.
    timezone: str = "Europe/Paris"
    # Roles whose rotas include nights (22:00-06:00): night work is their normal pattern, so
    # off-hours alone says nothing about them; only an account whose own baseline shows it never
    # works at night is asked, and only with volume.
    night_roles: list[str] = Field(default_factory=lambda: ["physician", "nurse"])
    off_hours_start: int = Field(default=22, ge=0, le=23)
    off_hours_end: int = Field(default=6, ge=0, le=23)
    off_hours_usual_share: float = Field(default=0.05, ge=0, le=1)
    off_hours_step_up_1h: int = Field(default=10, ge=1)
    new_address_step_up_1h: int = Field(default=10, ge=1)

    # Canary patients are cached per worker this long (a new canary counts after at most this).
    canary_refresh_seconds: int = Field(default=10, ge=0)

    # Graduated response.
    step_up_valid_minutes: int = Field(default=60, ge=1)
    refusals_contain_1h: int = Field(default=5, ge=1)
    # A slow drip stopped at a threshold waits for the window to slide and tries again, hour
    # after hour; staff answer their step-up and are asked about once a week.
    refusals_contain_24h: int = Field(default=8, ge=1)
    throttle_seconds: int = Field(default=300, ge=1)
    # Care relationships made by colleagues (referrals, care-team additions) in 24 hours, from
    # which a security officer is alerted (never refused: carnet.detection.referrals).
    care_relationships_by_actor_24h: int = Field(default=20, ge=1)
    care_relationships_to_one_practitioner_24h: int = Field(default=10, ge=1)
    # Probation: an account opened or restored in the last `probation_days` has volume floors
    # multiplied by `probation_factor`: a minted or freshly restored account has a small budget.
    probation_days: int = Field(default=7, ge=0)
    probation_factor: float = Field(default=0.5, gt=0, le=1)

    # Administration (accounts opened, roles requested or approved, restores, export approvals,
    # API clients registered, detection settings): per actor and per installation, in an hour and
    # a day. An alert from max(floor, baseline_factor x the usual p95), containment of the actors
    # involved (and of the accounts they opened or granted) from twice that.
    # Counted per account acted on: opening an account and asking its first role is one act.
    admin_alert_1h: int = Field(default=2, ge=1)
    admin_alert_24h: int = Field(default=6, ge=1)
    installation_admin_alert_1h: int = Field(default=6, ge=1)
    installation_admin_alert_24h: int = Field(default=12, ge=1)
    admin_contain_factor: float = Field(default=2.0, gt=1)
    # The same account restored again within this many days: the officers are contained.
    restore_repeat_days: int = Field(default=7, ge=1)

    # Campaigns: accounts anomalous (a step-up or worse) in the last hour that share a network
    # address or a client fingerprint, or anywhere in the installation. The cohort is asked for a
    # second factor, then contained. Over the installation's usual volume, each bound is one lower.
    campaign_window_minutes: int = Field(default=60, ge=1)
    campaign_step_up_correlated: int = Field(default=2, ge=2)
    campaign_contain_correlated: int = Field(default=3, ge=2)
    campaign_step_up_anomalous: int = Field(default=3, ge=2)
    campaign_contain_anomalous: int = Field(default=5, ge=2)
    # Session timing: this many different accounts reaching patient data from one machine (same
    # address and client) within the minutes below. A shared ward computer at shift change meets
    # it too; its staff answer one step-up (or signed in after it, which counts as answered).
    campaign_machine_accounts: int = Field(default=4, ge=2)
    campaign_machine_minutes: int = Field(default=15, ge=1)
    # Installation-wide distinct patients (every actor, every channel) per 15 min / 1 h from which
    # the installation is "over its usual": max(floor, baseline_factor x its p95).
    installation_m15: int = Field(default=300, ge=1)
    installation_h1: int = Field(default=800, ge=1)

    # An open alert of the same rule for the same actor is updated instead of repeated.
    alert_merge_hours: int = Field(default=24, ge=1)


@functools.lru_cache(maxsize=1)
def get_detection_config() -> DetectionConfig:
    return DetectionConfig()
