"""schemathesis against the app's own OpenAPI description: generated requests, signed in as a
physician with a patient in care, never get a 500, and every answered FHIR access is audited."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select

from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import sessions
from carnet.runtime import Runtime
from tests.factories import link_care, make_facility, make_physician, register_patient


@pytest.fixture
def signed_in(sqlite_runtime: Runtime) -> dict[str, str]:
    facility = make_facility(sqlite_runtime)
    doctor = make_physician(sqlite_runtime, facility)
    patient = register_patient(sqlite_runtime, facility, family="Fuzz")
    assert doctor.practitioner_id is not None and doctor.account_id is not None
    link_care(
        sqlite_runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    with sqlite_runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=doctor.account_id,
            privileged=False,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent="schemathesis",
        )
    return {"Cookie": f"carnet_session={issued.token}", "X-CSRF-Token": issued.csrf_token}


def _audit_count(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


@pytest.mark.slow
def test_no_500_and_no_unaudited_access(signed_in: dict[str, str], sqlite_runtime: Runtime) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(sqlite_runtime))
    operations = [r.ok() for r in schema.include(path_regex="^/fhir").get_all_operations()]
    assert len(operations) > 30
    statuses: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def exercise(case: Any) -> None:
            before = _audit_count(sqlite_runtime)
            response = case.call(headers=signed_in)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:300]}"
            public = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")  # discovery, no data
            if case.path not in public and response.status_code < 300:
                assert _audit_count(sqlite_runtime) > before, f"unaudited access: {where}"

        exercise()
    # Signed in for real: the requests reached the gate (not all stopped at 401).
    assert statuses.get(401, 0) < sum(statuses.values()) / 2, statuses
