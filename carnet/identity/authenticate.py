"""Login, step-up and the request's Actor: who is asking, proven how, since when.

One generic answer for an unknown user, a wrong password and a wrong code; unknown users cost
an Argon2 verification too, so the answers do not differ in time either.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import String, Table, and_, bindparam, select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.context import ACCOUNT_AND_GRANTS
from carnet.access.models import RoleGrant
from carnet.access.roles import PRIVILEGED_ROLES, Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.db.base import detached
from carnet.db.prepared import PreparedSelect
from carnet.identity import handover, passkeys, passwords, service, sessions
from carnet.identity.models import Account, AuthSession
from carnet.identity.throttle import LimitsLoginThrottle, LoginThrottle
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    CarnetError,
    InvalidInput,
    StepUpRequired,
)
from carnet.runtime import Runtime
from carnet.settings import Environment

_SERVICE_LOCK = threading.Lock()
GENERIC_FAILURE = "the username, password or code is not right"
# Above the slowest natural failure on this machine kind (see benchmarks/login_timing.py).
FAILURE_FLOOR_SECONDS = 0.25


class LoginThrottled(CarnetError):
    """Too many failed attempts for this username or address: wait before trying again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; try again in {retry_after} seconds")
        self.retry_after = retry_after


class PasskeyRequired(AuthenticationRequired):
    """The account holds a privileged role: only a passkey completes its login."""


class AccountSetupRequired(StepUpRequired):
    """A handed-over account's session asked for something before its owner replaced the
    password and second factor the administrator saw (carnet.identity.handover)."""


@dataclass(frozen=True)
class RequestContext:
    address: str | None
    user_agent: str | None
    path: str | None = None  # what was asked (no query string): named when a request is refused


@dataclass(frozen=True)
class LoginRequest:
    username: str
    password: str
    otp: str | None = None
    webauthn: dict[str, Any] | None = None
    challenge_id: uuid.UUID | None = None
    # The session the client held before (if any): replaced, never reused.
    previous_token: str | None = None
    context: RequestContext = field(default_factory=lambda: RequestContext(None, None))


@dataclass(frozen=True)
class LoginResult:
    issued: sessions.IssuedSession
    actor: Actor
    setup_required: bool = False  # a handover session: replace the password and factor first


def contained_message(account: Account, contact: str) -> str:
    why = account.status_reason or "unusual activity"
    return f"this account is suspended ({why}). Call {contact} to restore it."


def actor_for(
    account: Account,
    roles: frozenset[Role],
    *,
    row: AuthSession | None,
    context: RequestContext,
) -> Actor:
    return Actor(
        kind=ActorKind.PATIENT if account.kind == "patient" else ActorKind.STAFF,
        username=account.username,
        roles=roles,
        account_id=account.id,
        facility_id=account.facility_id,
        practitioner_id=account.practitioner_id,
        patient_id=account.patient_id,
        session_id=row.id if row else None,
        address=context.address,
        user_agent=context.user_agent,
        second_factor_at=row.second_factor_at if row else None,
    )


def require_fresh_second_factor(actor: Actor) -> None:
    """Sensitive actions need a second factor proven in the last 5 minutes."""
    at = actor.second_factor_at
    if at is None or clock.now() - at > sessions.STEP_UP_FRESHNESS:
        raise StepUpRequired("confirm it is you: present your second factor again (POST /auth/step-up)")


# Built once: constructing the statement cost more than running it on every request. Core
# columns, not ORM entities: the rows become detached instances at a fraction of the ORM's
# loading cost (identity map, events), which every request paid; prepared on PostgreSQL.
_SESSION_COLUMNS = tuple(cast(Table, AuthSession.__table__).columns)
# Only what judging the session and building its Actor read (`_judge`, `actor_for`, the access
# context of carnet.access.context): the password hash and the account's other columns do not
# travel with every request (they were 6 of the statement's 37 columns).
_ACCOUNT_COLUMNS = tuple(
    cast(Table, Account.__table__).columns[name]
    for name in (
        "id",
        "username",
        "kind",
        "status",
        "status_reason",
        "facility_id",
        "practitioner_id",
        "patient_id",
        "must_change_password",
        "must_replace_second_factor",
    )
)
_SESSION_ACCOUNT_GRANTS = PreparedSelect(
    select(*_SESSION_COLUMNS, *_ACCOUNT_COLUMNS, RoleGrant.role)
    .select_from(AuthSession)
    .join(Account, Account.id == AuthSession.account_id)
    .outerjoin(RoleGrant, and_(RoleGrant.account_id == Account.id, RoleGrant.status == "active"))
    .where(AuthSession.token_digest == bindparam("digest", type_=String()))
)
_SESSION_KEYS = tuple(c.key for c in _SESSION_COLUMNS)
_ACCOUNT_KEYS = tuple(c.key for c in _ACCOUNT_COLUMNS)
_ACCOUNT_AT = len(_SESSION_KEYS)  # where a row's account columns start, then its grant's role
_ROLE_AT = _ACCOUNT_AT + len(_ACCOUNT_KEYS)
# `_SESSION_ACCOUNT_GRANTS` with each grant's facility too: what the gate's fast read needs to
# judge both the session (`quiet_resolve`) and the access context (`carnet.access.context`'s
# ACCOUNT_AND_GRANTS) from one statement, read in its first round trip by the token's digest.
SESSION_CONTEXT = _SESSION_ACCOUNT_GRANTS.statement.add_columns(
    RoleGrant.facility_id.label("grant_facility_id")
)

# Where each column of ACCOUNT_AND_GRANTS (carnet.access.context) is in a row of SESSION_CONTEXT.
_CONTEXT_AT = tuple(
    (
        column.name,
        _ROLE_AT
        if column.name == "role"
        else _ROLE_AT + 1
        if column.name == "grant_facility_id"
        else _ACCOUNT_AT + _ACCOUNT_KEYS.index(column.key),
    )
    for column in ACCOUNT_AND_GRANTS.selected_columns
)


def account_and_grant(row: Sequence[Any]) -> dict[str, Any]:
    """A row of SESSION_CONTEXT as the row of ACCOUNT_AND_GRANTS it holds (the account and one
    active grant), which `carnet.access.context.from_rows` judges."""
    return {name: row[at] for name, at in _CONTEXT_AT}


class Authenticator:
    """Logs accounts in and resolves sessions, on a runtime's database, audit and keys."""

    def __init__(self, runtime: Runtime, throttle: LoginThrottle | None = None) -> None:
        self.runtime = runtime
        self.throttle = throttle or LimitsLoginThrottle(runtime.settings.redis_url)
        self.rp = passkeys.RelyingParty.from_origin(runtime.settings.origin)
        self.failure_floor = FAILURE_FLOOR_SECONDS
        self.sleep: Callable[[float], None] = time.sleep
        self.timer: Callable[[], float] = time.perf_counter

    @classmethod
    def of(cls, runtime: Runtime) -> Authenticator:
        """The runtime's one Authenticator (its throttle counters must be shared)."""
        found = runtime.services.get("identity")
        if isinstance(found, Authenticator):  # made already: no lock to take
            return found
        with _SERVICE_LOCK:
            found = runtime.services.get("identity")
            if not isinstance(found, Authenticator):
                found = cls(runtime)
                runtime.services["identity"] = found
            return found

    @property
    def demo(self) -> bool:
        return self.runtime.settings.env == Environment.DEMO

    # -- login ---------------------------------------------------------------------------
    def log_in(self, request: LoginRequest) -> LoginResult:
        ctx = request.context
        username = request.username.strip()[:150]
        wait = self.throttle.blocked(username=username, address=ctx.address)
        if wait is not None:
            self._fail(username, None, ctx, reason="throttled")
            raise LoginThrottled(wait)
        started = self.timer()
        failure: str | None
        with self.runtime.session_factory.begin() as session:
            account = session.scalar(select(Account).where(Account.username == username))
            ok = passwords.verify_password(account.password_hash if account else None, request.password)
            if account is None or not ok:
                failure = "unknown account" if account is None else "wrong password"
            else:
                failure, method, enrollment_only = self._second_factor(session, account, request)
                if failure is None:
                    return self._succeed(session, account, request, method, enrollment_only)
        self.throttle.failed(username=username, address=ctx.address)
        self._fail(username, account, ctx, reason=failure or "refused")
        self._pad(started)
        if failure == "passkey required":
            raise PasskeyRequired("this account must sign in with its passkey")
        raise AuthenticationRequired(GENERIC_FAILURE)

    def _pad(self, started: float) -> None:
        """Answer every failure no sooner than `failure_floor` after it began.

        An unknown user, a wrong password and a wrong code do different work (a wrong code also
        decrypts a TOTP secret and reads roles); the floor hides the difference.
        """
        remaining = self.failure_floor - (self.timer() - started)
        if remaining > 0:
            self.sleep(remaining)

    def _second_factor(
        self, session: Session, account: Account, request: LoginRequest
    ) -> tuple[str | None, str | None, bool]:
        """(failure reason or None, method used, enrollment_only)."""
        roles = service.roles_of(session, account=account)
        privileged = bool(roles & PRIVILEGED_ROLES)
        method: str | None = None
        if request.webauthn is not None and request.challenge_id is not None:
            if not passkeys.authenticate(
                session,
                account_id=account.id,
                challenge_id=request.challenge_id,
                credential=request.webauthn,
                rp=self.rp,
            ):
                return "wrong passkey", None, False
            method = "webauthn"
        elif request.otp:
            if service.verify_totp(session, account_id=account.id, code=request.otp):
                method = "totp"
            elif service.looks_like_recovery_code(request.otp) and service.use_recovery_code(
                session, account_id=account.id, code=request.otp
            ):
                method = "recovery"
            else:
                return "wrong code", None, False
        if method is None:
            # A password alone opens no staff session; a patient without a factor is AAL1.
            enrolled = service.has_totp(session, account_id=account.id) or passkeys.has_passkey(
                session, account_id=account.id
            )
            if account.kind == "staff" or enrolled:
                return "second factor missing", None, False
            return None, None, False
        if privileged and method != "webauthn" and not self.demo:
            if passkeys.has_passkey(session, account_id=account.id):
                return "passkey required", None, False
            # First login of a privileged account: its session may only enrol a passkey.
            return None, method, True
        return None, method, False

    def _succeed(
        self,
        session: Session,
        account: Account,
        request: LoginRequest,
        method: str | None,
        enrollment_only: bool,
    ) -> LoginResult:
        ctx = request.context
        if account.status != "active":
            # Only now, with every factor proven, does the answer say the account is held.
            self._audit_failure(session, account.username, account, ctx, reason=f"account {account.status}")
            session.commit()
            if account.status == "suspended":
                raise AccountContained(contained_message(account, self.runtime.settings.security_contact))
            raise AuthenticationRequired("this account is disabled")
        if passwords.needs_rehash(account.password_hash):
            account.password_hash = passwords.hash_password(request.password)
        setup_required = handover.pending(account)
        # The administrator who opened the account knows these credentials: the session they
        # open may only replace them (fail closed until the owner has).
        enrollment_only = enrollment_only or setup_required
        roles = service.roles_of(session, account=account)
        if request.previous_token:
            previous = session.scalar(
                select(AuthSession).where(AuthSession.token_digest == sessions.digest(request.previous_token))
            )
            if previous is not None and previous.revoked_at is None:
                previous.revoked_at = clock.now()
                previous.revoked_reason = "replaced by a new login"
        issued = sessions.open_session(
            session,
            account_id=account.id,
            privileged=bool(roles & PRIVILEGED_ROLES),
            second_factor_method=method,
            enrollment_only=enrollment_only,
            roles=frozenset(r.value for r in roles),
            address=ctx.address,
            user_agent=ctx.user_agent,
        )
        row = session.get_one(AuthSession, issued.session_id)
        actor = actor_for(account, roles, row=row, context=ctx)
        detail = {"method": method or "password"}
        if setup_required:
            detail["session"] = "account setup only"
        elif enrollment_only:
            detail["session"] = "passkey enrolment only"
        self.runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.LOGIN_SUCCESS,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="Account",
                resource_ids=(str(account.id),),
                detail=detail,
            ),
        )
        service.record_event(
            session,
            account_id=account.id,
            kind=AuditKind.LOGIN_SUCCESS,
            address=ctx.address,
            user_agent=ctx.user_agent,
            detail=", ".join(f"{k}: {v}" for k, v in detail.items()),
        )
        return LoginResult(issued=issued, actor=actor, setup_required=setup_required)

    def _fail(self, username: str, account: Account | None, ctx: RequestContext, *, reason: str) -> None:
        with self.runtime.session_factory.begin() as session:
            self._audit_failure(session, username, account, ctx, reason=reason)

    def _audit_failure(
        self, session: Session, username: str, account: Account | None, ctx: RequestContext, *, reason: str
    ) -> None:
        actor = Actor(
            kind=ActorKind.PATIENT if account is not None and account.kind == "patient" else ActorKind.STAFF,
            username=username,
            roles=frozenset(),
            account_id=account.id if account else None,
            address=ctx.address,
            user_agent=ctx.user_agent,
        )
        self.runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.LOGIN_FAILURE,
                outcome=Outcome.DENIED,
                actor=actor,
                resource_type="Account",
                resource_ids=(str(account.id),) if account else (),
                detail={"reason": reason},
            ),
        )
        if account is not None:
            service.record_event(
                session,
                account_id=account.id,
                kind=AuditKind.LOGIN_FAILURE,
                outcome=Outcome.DENIED,
                address=ctx.address,
                user_agent=ctx.user_agent,
                detail=reason,
            )

    # -- sessions ------------------------------------------------------------------------
    def resolve(
        self, *, token: str, context: RequestContext, allow_enrollment_only: bool = False
    ) -> tuple[Actor, AuthSession]:
        """The Actor of a session cookie; raises AuthenticationRequired / AccountContained."""
        with self.runtime.engine.connect() as connection:
            # Every request runs this. The session, its account and the account's active grants
            # are one statement, read outside a transaction (no BEGIN, no COMMIT round trips);
            # the rare writes below (a revocation, a refusal, the minutely touch) get their own.
            connection.execution_options(isolation_level="AUTOCOMMIT")
            found = _SESSION_ACCOUNT_GRANTS.all(connection, {"digest": sessions.digest(token)})
        judged = self._judge(found, context=context, allow_enrollment_only=allow_enrollment_only, quiet=False)
        assert judged is not None  # only a quiet judgment answers None
        return judged

    def quiet_resolve(
        self, found: Sequence[Sequence[Any]], *, context: RequestContext
    ) -> tuple[Actor, AuthSession] | None:
        """`resolve`'s answer from the rows of `SESSION_CONTEXT` a caller read itself (the gate's
        fast read, in its first round trip), when the session is in use and nothing is to be
        written: None wherever `resolve` would refuse or write (an unknown, ended or contained
        session, roles changed, an account being set up, the minutely touch), and the caller
        then asks `resolve` itself, which answers that case as always."""
        try:
            return self._judge(found, context=context, allow_enrollment_only=False, quiet=True)
        except CarnetError:
            return None

    def _judge(
        self,
        found: Sequence[Sequence[Any]],
        *,
        context: RequestContext,
        allow_enrollment_only: bool,
        quiet: bool,
    ) -> tuple[Actor, AuthSession] | None:
        """The decision on a session's rows (session, account, one active grant's role per row);
        `quiet`: nothing written, None where the minutely touch is due."""
        if not found:
            raise AuthenticationRequired("sign in first (POST /auth/login)")
        first = found[0]
        session_values = dict(zip(_SESSION_KEYS, first[:_ACCOUNT_AT], strict=True))
        account_values = dict(zip(_ACCOUNT_KEYS, first[_ACCOUNT_AT:_ROLE_AT], strict=True))
        if quiet:
            # Nothing is written from them: the row's values as plain attributes (read without the
            # ORM's descriptors) where `resolve` has detached instances for its writes.
            live = cast(AuthSession, SimpleNamespace(**session_values))
            account = cast(Account, SimpleNamespace(**account_values))
        else:
            live = detached(AuthSession, session_values)
            account = detached(Account, account_values)
        # A contained account's revoked session is told why and whom to call, not just "ended".
        if account.status == "suspended":
            raise AccountContained(contained_message(account, self.runtime.settings.security_contact))
        roles = service.roles_named(account, [row[_ROLE_AT] for row in found if row[_ROLE_AT] is not None])
        if not sessions.is_live(live, privileged=bool(roles & PRIVILEGED_ROLES)):
            raise AuthenticationRequired("the session has ended (expired or revoked); sign in again")
        if account.status != "active":
            raise AuthenticationRequired("this account is disabled")
        actor = actor_for(account, roles, row=live, context=context)
        # A Role is a StrEnum: its text is its value, as the fingerprint at login was made of.
        if live.roles_at_login != sessions.roles_fingerprint(roles):
            # Privileges changed: this session id ends; the next login gets a new one, with
            # the factors and timeouts the new roles require.
            if not quiet:
                with self.runtime.session_factory.begin() as session:
                    sessions.revoke(
                        session,
                        account_id=account.id,
                        session_id=live.id,
                        reason="roles changed",
                        actor=actor,
                        audit=self.runtime.audit,
                    )
            raise AuthenticationRequired("your roles have changed; sign in again")
        setting_up = handover.pending(account)
        if (live.enrollment_only or setting_up) and not allow_enrollment_only:
            if setting_up:
                if not quiet:
                    with self.runtime.session_factory.begin() as session:
                        handover.refused(
                            session, account=account, actor=actor, audit=self.runtime.audit, path=context.path
                        )
                raise AccountSetupRequired(handover.SETUP_MESSAGE)
            raise StepUpRequired("register a passkey first: this account must sign in with one")
        if sessions.touch_due(live):
            if quiet:
                return None
            with self.runtime.session_factory.begin() as session:
                sessions.touch(session, live)
        return actor, live

    def log_out(self, *, actor: Actor) -> None:
        if actor.account_id is None or actor.session_id is None:
            return
        with self.runtime.session_factory.begin() as session:
            sessions.revoke(
                session,
                account_id=actor.account_id,
                session_id=actor.session_id,
                reason="signed out",
                actor=actor,
                audit=self.runtime.audit,
            )
            self.runtime.audit.append(
                session, AuditRecord(kind=AuditKind.LOGOUT, outcome=Outcome.SUCCESS, actor=actor)
            )

    def step_up(
        self,
        *,
        actor: Actor,
        otp: str | None,
        webauthn: dict[str, Any] | None,
        challenge_id: uuid.UUID | None,
    ) -> dt.datetime:
        """Prove the second factor again; privileged roles must use their passkey."""
        if actor.account_id is None or actor.session_id is None:
            raise AuthenticationRequired("sign in first (POST /auth/login)")
        with self.runtime.session_factory.begin() as session:
            method: str | None = None
            if webauthn is not None and challenge_id is not None:
                if passkeys.authenticate(
                    session,
                    account_id=actor.account_id,
                    challenge_id=challenge_id,
                    credential=webauthn,
                    rp=self.rp,
                ):
                    method = "webauthn"
            elif otp and (not actor.is_privileged or self.demo):
                if service.verify_totp(session, account_id=actor.account_id, code=otp):
                    method = "totp"
            elif otp:
                raise InvalidInput("this account must confirm with its passkey")
            outcome = Outcome.SUCCESS if method else Outcome.DENIED
            self.runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.STEP_UP, outcome=outcome, actor=actor, detail={"method": method or "none"}
                ),
            )
            service.record_event(
                session,
                account_id=actor.account_id,
                kind=AuditKind.STEP_UP,
                outcome=outcome,
                address=actor.address,
                user_agent=actor.user_agent,
                detail=method,
            )
            if method is None:
                session.commit()
                raise StepUpRequired("the second factor was not accepted")
            return sessions.mark_second_factor(session, session_id=actor.session_id, method=method)
