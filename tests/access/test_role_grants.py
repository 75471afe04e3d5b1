"""Role grants under the two-person rule: a grant without a second approver does nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from carnet.access.grants import approve_role_grant, reject_role_grant, request_role_grant, revoke_role_grant
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f


def _kinds(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(AuditEvent.kind, AuditEvent.outcome)
            .where(AuditEvent.kind.like("access:role%"))
            .order_by(AuditEvent.seq)
        ).all()
    return [(k, o) for k, o in rows]


def test_a_grant_without_a_second_approver_does_nothing(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    alice = f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    bob = f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    practitioner = f.make_practitioner(runtime, facility)
    # A new physician account whose session already claims the role: it is not granted yet.
    newcomer = f.make_account(
        runtime, roles=[Role.PHYSICIAN], facility_id=facility, practitioner_id=practitioner, grant=False
    )
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=practitioner, facility_id=facility)

    grant = request_role_grant(
        runtime,
        actor=alice,
        account_id=str(newcomer.account_id),
        role=Role.PHYSICIAN,
        facility_id=str(facility),
        reason="arrivée en cardiologie",
    )
    assert grant.status == "pending"
    with pytest.raises(NotFound):
        Gate(runtime, newcomer).read_patient(patient_id=patient.id)
    # Nobody approves their own request, nor a grant made out to themselves.
    with pytest.raises(Forbidden):
        approve_role_grant(runtime, actor=alice, grant_id=grant.id)
    with pytest.raises(Forbidden):  # not an administrator at all
        approve_role_grant(runtime, actor=newcomer, grant_id=grant.id)
    with pytest.raises(NotFound):
        Gate(runtime, newcomer).read_patient(patient_id=patient.id)

    approved = approve_role_grant(runtime, actor=bob, grant_id=grant.id)
    assert approved.status == "active" and approved.approved_by == str(bob.account_id)
    assert Gate(runtime, newcomer).read_patient(patient_id=patient.id).family == "Martin"
    with pytest.raises(Conflict):
        approve_role_grant(runtime, actor=bob, grant_id=grant.id)

    revoke_role_grant(runtime, actor=bob, grant_id=grant.id, reason="départ")
    with pytest.raises(NotFound):
        Gate(runtime, newcomer).read_patient(patient_id=patient.id)
    assert _kinds(runtime) == [
        ("access:role-grant:requested", "success"),
        ("access:role-grant:approved", "denied"),
        ("access:role-grant:approved", "denied"),
        ("access:role-grant:approved", "success"),
        ("access:role-grant:approved", "error"),
        ("access:role:revoked", "success"),
    ]


def test_self_grant_and_rejection(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    alice = f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    bob = f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    # Alice asks a clinical role for herself; Bob requests it for her: she cannot approve either.
    own = request_role_grant(
        runtime,
        actor=bob,
        account_id=str(alice.account_id),
        role="physician",
        facility_id=str(facility),
        reason="remplacement",
    )
    with pytest.raises(Forbidden):
        approve_role_grant(runtime, actor=alice, grant_id=own.id)
    rejected = reject_role_grant(
        runtime,
        actor=f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility),
        grant_id=own.id,
        reason="non justifié",
    )
    assert rejected.status == "rejected"
    with pytest.raises(InvalidInput):
        request_role_grant(
            runtime,
            actor=bob,
            account_id=str(alice.account_id),
            role="root",
            facility_id=str(facility),
            reason="x" * 10,
        )
    with pytest.raises(Forbidden):
        request_role_grant(
            runtime,
            actor=f.make_physician(runtime, facility),
            account_id=str(alice.account_id),
            role="physician",
            facility_id=str(facility),
            reason="moi aussi",
        )
