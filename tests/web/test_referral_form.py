"""A physician refers a patient to a colleague from the chart ("Refer to a colleague"): the
colleague, chosen from the facility's directory, opens the chart until the end date; ending it
closes it at once. Bad input is a message in the form that keeps what was typed and changes
nothing; a post without the CSRF token is refused; the front desk is refused and audited."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.patients.models import CareRelationship
from carnet.runtime import Runtime
from tests.web.conftest import ORIGIN, Hospital, login


def _relationships(runtime: Runtime, patient: str) -> list[tuple[uuid.UUID, dt.datetime | None]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(CareRelationship.practitioner_id, CareRelationship.end_at).where(
                CareRelationship.patient_id == uuid.UUID(patient), CareRelationship.kind == "referral"
            )
        ).all()
        return [(p, e) for p, e in rows]


def _audited(runtime: Runtime, account: uuid.UUID, outcome: str) -> int:
    """The account's attempts to make a care relationship, with that outcome."""
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.resource_type == "CareTeam",
                    AuditEvent.kind == "phi:resource:create",
                    AuditEvent.outcome == outcome,
                )
            )
            or 0
        )


@pytest.fixture
def colleague_client(sqlite_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_runtime), base_url=ORIGIN, follow_redirects=False) as c:
        yield c


def _until(days: int) -> str:
    return (clock.now() + dt.timedelta(days=days)).date().isoformat()


def test_refer_to_a_colleague_from_the_chart_then_end_it(
    client: TestClient, colleague_client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    colleague = hospital.other_physician
    assert colleague.practitioner_id is not None
    login(colleague_client, colleague)
    assert colleague_client.get(f"/patients/{hospital.my_patient}").status_code == 404

    csrf = login(client, hospital.physician)
    section = client.get(
        f"/patients/{hospital.my_patient}/sections/care_team", headers={"HX-Request": "true"}
    )
    assert section.status_code == 200
    assert "Refer to a colleague" in section.text
    assert f'<option value="{colleague.practitioner_id}"' in section.text
    assert f'<option value="{hospital.physician.practitioner_id}"' not in section.text  # never oneself
    url = f"/patients/{hospital.my_patient}/care-team"
    form = {
        "csrf_token": csrf,
        "practitioner_id": str(colleague.practitioner_id),
        "kind": "referral",
        "reason": "avis cardiologique",
        "until": _until(30),
    }
    made = client.post(url, data=form)
    assert made.status_code == 303 and made.headers["location"].endswith("#care_team")
    assert [p for p, _end in _relationships(sqlite_runtime, hospital.my_patient)] == [
        colleague.practitioner_id
    ]
    assert _audited(sqlite_runtime, hospital.physician.account_id, "success") == 1

    # The colleague opens the chart and sees why; the referrer sees it listed, with "End now".
    assert colleague_client.get(f"/patients/{hospital.my_patient}").status_code == 200
    listed = client.get(f"/patients/{hospital.my_patient}/sections/care_team", headers={"HX-Request": "true"})
    assert "avis cardiologique" in listed.text and "End now" in listed.text

    # A second referral to the same colleague: a message in the form, nothing written.
    again = client.post(url, data=form)
    assert again.status_code == 400 and "Nothing was changed" in again.text
    assert len(_relationships(sqlite_runtime, hospital.my_patient)) == 1

    with sqlite_runtime.session_factory() as session:
        referral_id = session.scalar(
            select(CareRelationship.id).where(
                CareRelationship.patient_id == uuid.UUID(hospital.my_patient),
                CareRelationship.kind == "referral",
            )
        )
    end_url = f"/patients/{hospital.my_patient}/care-team/{referral_id}/end"
    assert f'action="{end_url}"' in listed.text
    ended = client.post(end_url, data={"csrf_token": csrf, "expected_version": "1"})
    assert ended.status_code == 303
    [(_p, end)] = _relationships(sqlite_runtime, hospital.my_patient)
    assert end is not None
    assert colleague_client.get(f"/patients/{hospital.my_patient}").status_code == 404
    # Ending it again at the version read: stale (it is version 2 now), nothing changes.
    assert client.post(end_url, data={"csrf_token": csrf, "expected_version": "1"}).status_code == 409


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"until": "31"}, "the end date must be a date"),
        ({"until": "later"}, "the end date must be a date"),
        ({"until": "+120"}, "lasts at most 90 days"),
        ({"until": "-2"}, "the end date must be in the future"),
        ({"practitioner_id": "self"}, "cannot name themself"),
        ({"practitioner_id": str(uuid.uuid4())}, "active practitioner of the patient"),
        ({"reason": "  "}, "reason of 3 to 500 characters"),
        ({"kind": "friend"}, "choose a referral or a care-team membership"),
    ],
)
def test_bad_input_is_shown_in_the_form_and_changes_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, change: dict[str, str], message: str
) -> None:
    csrf = login(client, hospital.physician)
    form = {
        "csrf_token": csrf,
        "practitioner_id": str(hospital.other_physician.practitioner_id),
        "kind": "referral",
        "reason": "avis cardiologique",
        "until": _until(30),
    }
    for key, value in change.items():
        if key == "until" and value.lstrip("+-").isdigit() and value[0] in "+-":
            value = _until(int(value))
        elif key == "practitioner_id" and value == "self":
            value = str(hospital.physician.practitioner_id)
        form[key] = value
    answer = client.post(f"/patients/{hospital.my_patient}/care-team", data=form)
    assert answer.status_code == 400, answer.text
    assert "Nothing was changed" in answer.text and message in answer.text
    if form["reason"].strip():
        assert 'value="avis cardiologique"' in answer.text  # what was typed is kept
    assert _relationships(sqlite_runtime, hospital.my_patient) == []


def test_front_desk_and_missing_csrf_are_refused(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    url = f"/patients/{hospital.my_patient}/care-team"
    form = {
        "practitioner_id": str(hospital.other_physician.practitioner_id),
        "kind": "referral",
        "reason": "avis cardiologique",
        "until": _until(30),
    }
    csrf = login(client, hospital.physician)
    assert client.post(url, data=form).status_code == 403  # no CSRF token
    assert _relationships(sqlite_runtime, hospital.my_patient) == []

    csrf = login(client, hospital.front_desk)
    refused = client.post(url, data=dict(form, csrf_token=csrf))
    assert refused.status_code == 404  # refused like a missing patient
    assert _audited(sqlite_runtime, hospital.front_desk.account_id, "denied") == 1
    assert _relationships(sqlite_runtime, hospital.my_patient) == []
