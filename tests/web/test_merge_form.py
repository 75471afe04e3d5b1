"""The front desk merges a duplicate from the patient chart: compare both records, then confirm at
the versions shown. A physician is refused (audited), a post without the CSRF token is refused,
bad input is a message on the chart and changes nothing, and a record changed meanwhile is not
merged."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.patients.models import Patient
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientChanges
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, login


def _outcomes(runtime: Runtime) -> list[str]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == AuditKind.PHI_MERGE.value).order_by(AuditEvent.seq)
        )
        return [r.outcome for r in rows]


def _state(runtime: Runtime, patient_id: str) -> tuple[int, bool, uuid.UUID | None]:
    with runtime.session_factory() as session:
        row = session.get(Patient, uuid.UUID(patient_id))
        assert row is not None
        return row.version_id, row.active, row.merged_into_id


def _duplicate(runtime: Runtime, hospital: Hospital) -> str:
    """Zoé registered a second time, without her INS (her names typed differently)."""
    return factories.register_patient(
        runtime, hospital.facility_id, family="Zoe", given="Eclair", birth_date=dt.date(1980, 2, 29)
    ).id


def test_front_desk_compares_then_merges_a_duplicate(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    duplicate = _duplicate(sqlite_runtime, hospital)
    csrf = login(client, hospital.front_desk)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200 and f"/patients/{hospital.my_patient}/merge" in chart.text
    compare = client.post(
        f"/patients/{hospital.my_patient}/merge",
        data={"csrf_token": csrf, "duplicate_id": duplicate, "reason": "même personne, nom sans accent"},
    )
    assert compare.status_code == 200
    assert "Eclair" in compare.text and "&lt;script&gt;" in compare.text  # names rendered as text
    assert _state(sqlite_runtime, duplicate) == (1, True, None)  # comparing changes nothing
    versions = dict(re.findall(r'name="(duplicate_version|expected_version)" value="(\d+)"', compare.text))
    assert versions == {"duplicate_version": "1", "expected_version": "1"}
    form = {
        "csrf_token": csrf,
        "duplicate_id": duplicate,
        "duplicate_version": versions["duplicate_version"],
        "expected_version": versions["expected_version"],
        "reason": "même personne, nom sans accent",
    }
    assert client.post(f"/patients/{hospital.my_patient}/merge/confirm", data=form).status_code == 303
    assert _state(sqlite_runtime, duplicate) == (2, False, uuid.UUID(hospital.my_patient))
    kept = client.get(f"/patients/{hospital.my_patient}")
    assert f'href="/patients/{duplicate}"' in kept.text  # the duplicates it replaces
    merged = client.get(f"/patients/{duplicate}")
    assert merged.status_code == 200 and f'href="/patients/{hospital.my_patient}"' in merged.text
    assert f"/patients/{duplicate}/merge" not in merged.text  # no merge form on a merged record
    assert _outcomes(sqlite_runtime) == ["success"]


def test_bad_input_and_a_stale_record_change_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    duplicate = _duplicate(sqlite_runtime, hospital)
    csrf = login(client, hospital.front_desk)
    url = f"/patients/{hospital.my_patient}/merge"
    same = client.post(
        url, data={"csrf_token": csrf, "duplicate_id": hospital.my_patient, "reason": "doublon"}
    )
    assert same.status_code == 400 and "Nothing was merged" in same.text
    unknown = client.post(
        url, data={"csrf_token": csrf, "duplicate_id": str(uuid.uuid4()), "reason": "doublon"}
    )
    assert unknown.status_code == 404 and "Nothing was merged" in unknown.text
    no_reason = client.post(url, data={"csrf_token": csrf, "duplicate_id": duplicate, "reason": " "})
    assert no_reason.status_code == 400
    # The duplicate changed after the clerk compared (version 1 shown, now 2): nothing is merged.
    clerk = factories.make_account(sqlite_runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id)
    Gate(sqlite_runtime, clerk).update_patient(
        patient_id=duplicate, expected_version=1, changes=PatientChanges(phone="06 00 00 00 09")
    )
    stale = client.post(
        f"{url}/confirm",
        data={
            "csrf_token": csrf,
            "duplicate_id": duplicate,
            "duplicate_version": "1",
            "expected_version": "1",
            "reason": "doublon",
        },
    )
    assert stale.status_code == 409 and "changed by someone else" in stale.text
    assert _state(sqlite_runtime, duplicate) == (2, True, None)
    assert _state(sqlite_runtime, hospital.my_patient) == (1, True, None)
    # Without the CSRF token: refused before anything.
    no_token = client.post(url, data={"duplicate_id": duplicate, "reason": "doublon"})
    assert no_token.status_code == 403
    assert _outcomes(sqlite_runtime) == ["error"]


def test_a_physician_cannot_merge_and_is_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    duplicate = _duplicate(sqlite_runtime, hospital)
    csrf = login(client, hospital.physician)
    assert f"/patients/{hospital.my_patient}/merge" not in client.get(f"/patients/{hospital.my_patient}").text
    compare = client.post(
        f"/patients/{hospital.my_patient}/merge",
        data={"csrf_token": csrf, "duplicate_id": duplicate, "reason": "doublon"},
    )
    assert compare.status_code == 403
    confirm = client.post(
        f"/patients/{hospital.my_patient}/merge/confirm",
        data={
            "csrf_token": csrf,
            "duplicate_id": duplicate,
            "duplicate_version": "1",
            "expected_version": "1",
            "reason": "doublon",
        },
    )
    assert confirm.status_code == 404  # refused like missing
    assert _outcomes(sqlite_runtime) == ["denied", "denied"]
    assert _state(sqlite_runtime, duplicate) == (1, True, None)
    assert _state(sqlite_runtime, hospital.my_patient) == (1, True, None)
