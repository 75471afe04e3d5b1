"""Red-team playbooks that widen access with stolen sessions of privileged accounts, over HTTP:

- account-factory: two stolen system-administrator sessions open front-desk accounts one after
  another (`POST /admin/accounts`), the second approves each role (`POST /admin/grants/{id}/approve`),
  and each new account is taken over and sweeps patients until contained;
- restore-loop: a stolen physician session reads until contained, then two stolen
  security-officer sessions restore it (`POST /security/restore`, `.../approve`), again and again.

What they measure is what the attacker gains: the patients exposed to every account they used,
and those beyond the first containment (which a single stolen session gets anyway). The takeover
of a new account stands for its first-sign-in handover (the attacker read its first password and
authenticator key on the creation page): the runner mints its session, in exercise mode only.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy import select, update

from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import CarnetError
from carnet.phi.exercise import ExerciseTargets
from carnet.redteam.playbooks import (
    _BY_NAME,
    PlaybookResult,
    _is_contained,
    _ledger_count,
    run_playbook,
)
from carnet.redteam.sessions import StolenSession, mint_session
from carnet.runtime import Runtime

WIDENING = ("account-factory", "restore-loop")
FACTORY_ACCOUNTS = 10
RESTORE_CYCLES = 5

_APPROVE_GRANT = re.compile(r'action="/admin/grants/([0-9a-f-]{36})/approve"')
_APPROVE_RESTORE = re.compile(r'action="/security/restore/([0-9a-f-]{36})/approve"')


def _post(client: httpx.Client, who: StolenSession, path: str, data: dict[str, str]) -> httpx.Response:
    # As the page's form would send it: the session cookie and the page's CSRF token.
    return client.post(path, data=data, headers=who.headers | {"Accept": "text/html"})


def _page(client: httpx.Client, who: StolenSession, path: str) -> str:
    response = client.get(path, headers=who.headers | {"Accept": "text/html"})
    return response.text if response.status_code == 200 else ""


def _account_id(runtime: Runtime, username: str) -> uuid.UUID | None:
    with runtime.session_factory() as session:
        return session.scalar(select(Account.id).where(Account.username == username))


def _take_over(runtime: Runtime, account_id: uuid.UUID) -> None:
    """The first-sign-in handover done by the attacker, who read the first password and
    authenticator key on the creation page: the account no longer asks for new ones."""
    with runtime.session_factory.begin() as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(must_change_password=False, must_replace_second_factor=False)
        )


def _facility_of(runtime: Runtime, username: str) -> str:
    with runtime.session_factory() as session:
        found = session.scalar(select(Account.facility_id).where(Account.username == username))
        return str(found) if found else ""


def account_factory(
    runtime: Runtime,
    client: httpx.Client,
    *,
    admins: tuple[str, str],
    desk_model: str,
    targets: ExerciseTargets,
    max_requests: int,
    accounts: int = FACTORY_ACCOUNTS,
) -> PlaybookResult:
    result = PlaybookResult(playbook="account-factory", username="+".join(admins))
    maker, approver = (mint_session(runtime, username=a) for a in admins)
    facility = _facility_of(runtime, desk_model)
    sweep = _BY_NAME["identifier-enumeration"]
    made: list[uuid.UUID] = []
    first_exposed = 0
    since = clock.now()
    for i in range(accounts):
        username = f"rt.desk.{uuid.uuid4().hex[:8]}"
        result.requests += 1
        opened = _post(
            client,
            maker,
            "/admin/accounts",
            {
                "username": username,
                "display_name": f"Agent d'accueil {i + 1}",
                "role": "front_desk",
                "reason": "remplacement à l'accueil des urgences",
                "facility_id": facility,
            },
        )
        result.answers[f"open {opened.status_code}"] = result.answers.get(f"open {opened.status_code}", 0) + 1
        account_id = _account_id(runtime, username)
        if opened.status_code != 200 or account_id is None:
            result.note = f"account {i + 1} not opened ({opened.status_code})"
            break
        approvals = _APPROVE_GRANT.findall(_page(client, approver, "/admin"))
        for grant_id in approvals:
            result.requests += 1
            answer = _post(client, approver, f"/admin/grants/{grant_id}/approve", {})
            key = f"approve {answer.status_code}"
            result.answers[key] = result.answers.get(key, 0) + 1
        _take_over(runtime, account_id)
        try:
            mint_session(runtime, username=username)  # the takeover must find the account active
        except CarnetError:
            result.note = f"account {i + 1} opened but not usable (contained or no role)"
            break
        made.append(account_id)
        share = dataclasses.replace(targets, people=targets.people[i::accounts])
        used = run_playbook(
            runtime, client, sweep, username=username, targets=share, max_requests=max_requests
        )
        result.requests += used.requests
        result.exposed |= used.exposed
        if i == 0:
            first_exposed = _ledger_count(runtime, made, since)
    result.exposed_ledger = _ledger_count(runtime, made, since)
    ids = [a for a in (_account_id(runtime, u) for u in admins) if a is not None]
    held = [a for a in ids if _is_contained(runtime, a)]
    result.contained = bool(held)  # the factory stops when its maker is contained
    beyond = result.exposed_ledger - first_exposed
    result.note = (
        f"{len(made)} accounts opened and used; {beyond} patients beyond the first account's containment"
        + (f"; {result.note}" if result.note else "")
        + f"; {len(held)} of 2 administrators contained"
    )
    return result


def restore_loop(
    runtime: Runtime,
    client: httpx.Client,
    *,
    victim: str,
    officers: tuple[str, str],
    targets: ExerciseTargets,
    max_requests: int,
    cycles: int = RESTORE_CYCLES,
) -> PlaybookResult:
    result = PlaybookResult(playbook="restore-loop", username=f"{victim}+{'+'.join(officers)}")
    first, second = (mint_session(runtime, username=o) for o in officers)
    victim_id = _account_id(runtime, victim)
    assert victim_id is not None
    sweep = _BY_NAME["day-list-walk"]
    since = clock.now()
    first_exposed = 0
    restored = 0
    for cycle in range(cycles):
        try:
            used = run_playbook(
                runtime, client, sweep, username=victim, targets=targets, max_requests=max_requests
            )
        except CarnetError:
            result.note = f"the account could not be used after restore {restored}"
            break
        result.requests += used.requests
        result.exposed |= used.exposed
        if cycle == 0:
            first_exposed = _ledger_count(runtime, [victim_id], since)
        if not _is_contained(runtime, victim_id):
            break
        result.requests += 2
        _post(
            client,
            first,
            "/security/restore",
            {"actor_ref": f"account:{victim_id}", "reason": "vérifié par téléphone avec le médecin"},
        )
        pending = _APPROVE_RESTORE.findall(_page(client, second, "/security"))
        answers = [_post(client, second, f"/security/restore/{p}/approve", {}) for p in pending]
        for answer in answers:
            key = f"restore {answer.status_code}"
            result.answers[key] = result.answers.get(key, 0) + 1
        if _is_contained(runtime, victim_id):
            result.note = f"restore {cycle + 1} refused"
            break
        restored += 1
    result.exposed_ledger = _ledger_count(runtime, [victim_id], since)
    officer_ids = [a for a in (_account_id(runtime, o) for o in officers) if a is not None]
    result.contained = all(_is_contained(runtime, a) for a in officer_ids)
    beyond = result.exposed_ledger - first_exposed
    result.note = (
        f"{restored} restores; {beyond} patients beyond the first containment"
        + (f"; {result.note}" if result.note else "")
        + ("; both officers contained" if result.contained else "")
    )
    return result


def run_widening(
    runtime: Runtime,
    client: httpx.Client,
    name: str,
    *,
    fresh: Callable[[str], str | None],
    targets: ExerciseTargets,
    max_requests: int,
) -> PlaybookResult:
    if name == "account-factory":
        admins = (fresh("system_administrator"), fresh("system_administrator"))
        desks = targets.accounts.get("front_desk") or []
        model = desks[0] if desks else None
        if None in admins or model is None:
            return PlaybookResult(name, username="-", note="not enough unused administrators")
        return account_factory(
            runtime,
            client,
            admins=(str(admins[0]), str(admins[1])),
            desk_model=model,
            targets=targets,
            max_requests=max_requests,
        )
    victim = fresh("physician")
    officers = (fresh("security_officer"), fresh("security_officer"))
    if victim is None or None in officers:
        return PlaybookResult(name, username="-", note="not enough unused accounts")
    return restore_loop(
        runtime,
        client,
        victim=victim,
        officers=(str(officers[0]), str(officers[1])),
        targets=targets,
        max_requests=max_requests,
    )
