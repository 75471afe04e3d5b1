"""On PostgreSQL the application role can append audit events but never change or remove one."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.runtime import Runtime
from tests.audit.helpers import DOCTOR


def test_the_application_role_appends_but_cannot_edit_or_delete(runtime: Runtime) -> None:
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    with runtime.session_factory.begin() as session:
        session.execute(sa.text("SET LOCAL ROLE carnet_app"))
        seq = runtime.audit.append(
            session, AuditRecord(kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=DOCTOR)
        )
    assert seq == 1
    for statement in (
        "UPDATE audit_events SET username = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events CASCADE",
        "DELETE FROM audit_chain_head",
    ):
        with (
            pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
            runtime.engine.begin() as conn,
        ):
            conn.execute(sa.text("SET LOCAL ROLE carnet_app"))
            conn.execute(sa.text(statement))
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT username FROM audit_events")).scalar_one() == DOCTOR.username
