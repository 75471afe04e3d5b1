"""An account whose first credentials someone else saw: its sessions can only replace them
(carnet.identity.handover), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pyotp
import pytest
from sqlalchemy import select

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.identity import handover, service, totp
from carnet.identity.authenticate import (
    AccountSetupRequired,
    Authenticator,
    LoginRequest,
    RequestContext,
)
from carnet.identity.models import Account, AccountEvent, AuthSession, TotpDevice
from carnet.kernel import clock
from carnet.kernel.errors import AuthenticationRequired, InvalidInput
from carnet.runtime import Runtime

HANDED = "ochre-lantern-quilts-maple-drifts"
OWN = "granite ferry whistles at dawn"
CONTEXT = RequestContext(address="10.0.0.9", user_agent="pytest", path="/fhir/Patient")


def _handed_over(runtime: Runtime) -> tuple[uuid.UUID, str]:
    secret = totp.new_secret()
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username="nurse.new",
            display_name="New Nurse",
            kind="staff",
            password=HANDED,
            totp_secret=secret,
            handover=True,
        )
        session.add(
            RoleGrant(
                account_id=account_id,
                role=Role.NURSE.value,
                status="active",
                requested_at=clock.now(),
                decided_at=clock.now(),
            )
        )
    return account_id, secret


def _log_in(auth: Authenticator, password: str, secret: str) -> tuple[str, bool]:
    result = auth.log_in(
        LoginRequest(
            username="nurse.new", password=password, otp=pyotp.TOTP(secret).at(clock.now()), context=CONTEXT
        )
    )
    return result.issued.token, result.setup_required


def _kinds(runtime: Runtime, kind: AuditKind) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind.value)))


def test_a_handover_session_is_refused_everything_and_each_refusal_is_audited(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    account_id, secret = _handed_over(runtime)
    auth = Authenticator(runtime)
    auth.failure_floor = 0
    token, setup_required = _log_in(auth, HANDED, secret)
    assert setup_required
    with runtime.session_factory() as session:
        row = session.scalar(select(AuthSession).where(AuthSession.account_id == account_id))
        assert row is not None and row.enrollment_only
    with pytest.raises(AccountSetupRequired, match="finish setting up your account"):
        auth.resolve(token=token, context=CONTEXT)
    refused = _kinds(runtime, AuditKind.ACCOUNT_SETUP_REFUSED)
    assert [e.outcome for e in refused] == ["denied"]
    assert refused[0].account_id == account_id and "/fhir/Patient" in refused[0].detail
    # Who am I, register a factor, sign out: allowed.
    actor, _row = auth.resolve(token=token, context=CONTEXT, allow_enrollment_only=True)
    assert actor.account_id == account_id and Role.NURSE in actor.roles


def test_replacing_both_ends_every_session_and_the_handed_over_copies_stop_working(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    account_id, secret = _handed_over(runtime)
    auth = Authenticator(runtime)
    auth.failure_floor = 0
    owners, _ = _log_in(auth, HANDED, secret)
    movable_clock.advance(dt.timedelta(seconds=31))
    administrators, _ = _log_in(auth, HANDED, secret)  # whoever else holds the copy
    actor, _row = auth.resolve(token=owners, context=CONTEXT, allow_enrollment_only=True)
    with runtime.session_factory.begin() as session:
        account = session.get_one(Account, account_id)
        with pytest.raises(InvalidInput, match="not right"):
            handover.change_password(
                session,
                account=account,
                current="not the password",
                new=OWN,
                actor=actor,
                audit=runtime.audit,
            )
        with pytest.raises(InvalidInput, match="other than the one you were handed"):
            handover.change_password(
                session, account=account, current=HANDED, new=HANDED, actor=actor, audit=runtime.audit
            )
        with pytest.raises(InvalidInput, match="breached"):
            handover.change_password(
                session, account=account, current=HANDED, new="password1234", actor=actor, audit=runtime.audit
            )
        assert account.must_change_password
        handover.change_password(
            session, account=account, current=HANDED, new=OWN, actor=actor, audit=runtime.audit
        )
        assert not handover.finish_if_done(session, account=account, actor=actor, audit=runtime.audit)
        device_id, new_secret = service.start_totp_enrolment(session, account_id=account_id)
        assert service.confirm_totp(
            session, account_id=account_id, device_id=device_id, code=pyotp.TOTP(new_secret).at(clock.now())
        )
        handover.second_factor_replaced(
            session, account=account, kept_totp=device_id, actor=actor, audit=runtime.audit
        )
        assert handover.finish_if_done(session, account=account, actor=actor, audit=runtime.audit)
    with runtime.session_factory() as session:
        assert [
            d.id for d in session.scalars(select(TotpDevice).where(TotpDevice.account_id == account_id))
        ] == [device_id]
        history = [
            e.kind for e in session.scalars(select(AccountEvent).where(AccountEvent.account_id == account_id))
        ]
    assert AuditKind.ACCOUNT_SETUP_COMPLETED.value in history and AuditKind.PASSWORD_CHANGED.value in history
    for token in (owners, administrators):
        with pytest.raises(AuthenticationRequired, match="ended"):
            auth.resolve(token=token, context=CONTEXT, allow_enrollment_only=True)
    movable_clock.advance(dt.timedelta(seconds=31))
    for password, key in ((HANDED, secret), (HANDED, new_secret), (OWN, secret)):
        with pytest.raises(AuthenticationRequired):
            _log_in(auth, password, key)
    token, setup_required = _log_in(auth, OWN, new_secret)
    assert not setup_required
    actor, row = auth.resolve(token=token, context=CONTEXT)
    assert not row.enrollment_only and Role.NURSE in actor.roles
    assert [e.outcome for e in _kinds(runtime, AuditKind.ACCOUNT_SETUP_COMPLETED)] == ["success"]


def test_accounts_created_by_the_system_are_not_handed_over(runtime: Runtime) -> None:
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session, username="seeded.one", display_name="Seeded One", kind="staff", password=OWN
        )
        account = session.get_one(Account, account_id)
        assert not handover.pending(account)
        assert not handover.state(session, account_id=account_id).pending
