"""A live session of a seeded account, standing for a stolen one: the red team's starting point.

Only in demo and test mode (CARNET_ENV): production refuses, so this can never mint a session on
a real installation. The session is opened as if its owner had signed in with their second
factor, which is exactly what a stolen session cookie carries; minting it is audited.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PRIVILEGED_ROLES
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.dependencies import CSRF_HEADER, session_cookie_name
from carnet.identity.models import Account
from carnet.identity.service import roles_of
from carnet.identity.sessions import open_session
from carnet.kernel.errors import Forbidden, NotFound
from carnet.runtime import Runtime

USER_AGENT = "carnet-redteam"


@dataclass(frozen=True)
class StolenSession:
    username: str
    account_id: uuid.UUID
    roles: list[str]
    headers: dict[str, str]


def mint_session(runtime: Runtime, *, username: str) -> StolenSession:
    if not runtime.settings.exercise_mode:
        raise Forbidden("red-team sessions exist only when CARNET_ENV is demo or test")
    with runtime.session_factory.begin() as session:
        account = session.scalar(select(Account).where(Account.username == username))
        if account is None or account.kind != "staff":
            raise NotFound(f"no staff account named {username!r}")
        if account.status != "active":
            raise Forbidden(f"the account {username!r} is {account.status}: no session can be opened")
        roles = roles_of(session, account=account)
        privileged = bool(roles & PRIVILEGED_ROLES)
        issued = open_session(
            session,
            account_id=account.id,
            privileged=privileged,
            second_factor_method="webauthn" if privileged else "totp",
            address=None,
            user_agent=USER_AGENT,
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.REDTEAM_SESSION,
                outcome=Outcome.SUCCESS,
                actor=Actor(
                    kind=ActorKind.STAFF,
                    username=account.username,
                    roles=roles,
                    account_id=account.id,
                    session_id=issued.session_id,
                    user_agent=USER_AGENT,
                ),
                resource_type="Account",
                resource_ids=(str(account.id),),
                detail={"env": runtime.settings.env.value},
            ),
        )
    cookie = session_cookie_name(runtime.settings.origin)
    return StolenSession(
        username=username,
        account_id=account.id,
        roles=sorted(r.value for r in roles),
        headers={"Cookie": f"{cookie}={issued.token}", CSRF_HEADER: issued.csrf_token},
    )
