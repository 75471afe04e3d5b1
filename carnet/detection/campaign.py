"""Campaign correlation: many stolen accounts used at once are one attack.

Three signals, read from the shared counters (Redis across workers):
- accounts found anomalous (a step-up or worse) in the last hour that share a network address or
  a client fingerprint (the user agent): one operator behind several sessions;
- several accounts anomalous at once anywhere in the installation;
- the installation's own exposure rate (distinct patients, every actor and channel) above its
  usual, which lowers both bounds by one.

The response is graduated as for one account: first the cohort is asked for a fresh second factor
(each member gets a refusal on record, so the pending step-up holds their next request; newcomers
from a flagged address or fingerprint are asked on their first request), then the cohort is
contained. One alert, under the installation's name, lists the accounts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from carnet.access.actor import Actor, ActorKind
from carnet.detection.config import DetectionConfig
from carnet.detection.interfaces import Finding, Level, Rule

INSTALLATION = "installation"
CAMPAIGN_ACTOR = Actor(kind=ActorKind.SYSTEM, username="campaign", roles=frozenset())


# References are scoped to the installation (its database): one Redis may serve several.
def address_ref(actor: Actor, scope: str = "") -> str | None:
    return f"net:{actor.address[:60]}@{scope}" if actor.address else None


def fingerprint_ref(actor: Actor, scope: str = "") -> str | None:
    """The client's fingerprint: its user agent, digested (kept short and free of free text)."""
    if not actor.user_agent:
        return None
    return f"ua:{hashlib.sha256(actor.user_agent.encode()).hexdigest()[:20]}@{scope}"


def machine_ref(actor: Actor, scope: str = "") -> str | None:
    """One machine: the same address and the same client together."""
    address, fingerprint = address_ref(actor, scope), fingerprint_ref(actor, scope)
    if address is None or fingerprint is None:
        return None
    digest = hashlib.sha256(f"{address}|{fingerprint}".encode()).hexdigest()[:24]
    return f"machine:{digest}@{scope}"


def correlation_refs(actor: Actor, scope: str = "") -> list[str]:
    return [ref for ref in (address_ref(actor, scope), fingerprint_ref(actor, scope)) if ref is not None]


def installation_ref(scope: str = "") -> str:
    return f"{INSTALLATION}@{scope}"


def crowd_finding(config: DetectionConfig, accounts: int) -> Finding:
    minutes = config.campaign_machine_minutes
    return Finding(
        Rule.CAMPAIGN,
        Level.STEP_UP,
        f"{accounts} different accounts reached patient data from one machine (the same network "
        f"address and client) within {minutes} minutes: sessions of others used together. Each "
        f"session signed in before this is asked for a fresh second factor.",
    )


@dataclass(frozen=True)
class CampaignView:
    """What the correlation saw when an account was found anomalous."""

    # Anomalous accounts in the window sharing the actor's address, and its fingerprint.
    same_address: Sequence[str]
    same_fingerprint: Sequence[str]
    # Anomalous accounts anywhere in the installation.
    anomalous: Sequence[str]
    # Every account seen from the address or fingerprint in the window (the wider cohort).
    seen_with: Sequence[str]
    installation_m15: int = 0
    installation_h1: int = 0
    usual_m15: int = 0
    usual_h1: int = 0


def installation_over(config: DetectionConfig, view: CampaignView) -> bool:
    m15 = max(config.installation_m15, config.baseline_factor * view.usual_m15)
    h1 = max(config.installation_h1, config.baseline_factor * view.usual_h1)
    return view.installation_m15 >= m15 or view.installation_h1 >= h1


def judge(config: DetectionConfig, view: CampaignView) -> tuple[Finding, list[str]] | None:
    """The campaign finding and its cohort (actor_refs), or None."""
    lower = 1 if installation_over(config, view) else 0
    correlated = max(len(view.same_address), len(view.same_fingerprint))
    anomalous = len(view.anomalous)
    contain = (
        correlated >= config.campaign_contain_correlated - lower
        or anomalous >= config.campaign_contain_anomalous - lower
    )
    step_up = correlated >= max(2, config.campaign_step_up_correlated - lower) or anomalous >= max(
        2, config.campaign_step_up_anomalous - lower
    )
    if not (contain or step_up):
        return None
    shared = sorted(set(view.same_address) | set(view.same_fingerprint))
    if correlated >= 2:
        # Everyone behind the same address or client is in the cohort, anomalous or not yet.
        cohort = sorted(set(shared) | set(view.seen_with))
        how = "sharing a network address or client"
    else:
        cohort = sorted(set(view.anomalous))
        how = "anywhere in the installation"
    volume = ""
    if lower:
        volume = (
            f" The installation was shown {view.installation_m15} different patients in 15 minutes "
            f"({view.installation_h1} in the hour), above its usual."
        )
    level = Level.CONTAIN if contain else Level.STEP_UP
    response = "contained" if contain else "asked for a fresh second factor"
    minutes = config.campaign_window_minutes
    sentence = (
        f"{max(correlated, anomalous)} accounts behaved abnormally within {minutes} minutes, {how}: "
        f"one campaign. {len(cohort)} accounts are {response}.{volume}"
    )
    return Finding(Rule.CAMPAIGN, level, sentence), cohort


def listing(sentence: str, names: Sequence[str]) -> str:
    """The alert's sentence with the accounts it concerns."""
    return f"{sentence} Accounts: {', '.join(sorted(names))}."[:1000]


def window(config: DetectionConfig) -> dt.timedelta:
    return dt.timedelta(minutes=config.campaign_window_minutes)
