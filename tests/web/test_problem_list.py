"""A physician keeps the problem list from the chart ("Problems and diagnoses"): record a
problem (ICD-10), update its clinical or verification status at the version shown, mark it
entered in error (kept, struck and labelled). Bad input is a message in the form that keeps what
was typed and writes nothing; a stale version is 409 and writes nothing; a nurse reads the list
without the forms and is refused a write; the front desk never sees it; no CSRF token, refused."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.records.models import Condition
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, login, make_person

HX = {"HX-Request": "true"}


def _conditions(runtime: Runtime, patient: str) -> list[tuple[str, str, str, str, int]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(
                Condition.code,
                Condition.display,
                Condition.clinical_status,
                Condition.verification_status,
                Condition.version_id,
            )
            .where(Condition.patient_id == uuid.UUID(patient))
            .order_by(Condition.created_at)
        ).all()
        return [(a, b, c, d, e) for a, b, c, d, e in rows]


def _condition_id(runtime: Runtime, patient: str) -> str:
    with runtime.session_factory() as session:
        found = session.scalar(select(Condition.id).where(Condition.patient_id == uuid.UUID(patient)))
        assert found is not None
        return str(found)


def _audited(runtime: Runtime, account: uuid.UUID, kind: str, outcome: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.resource_type == "Condition",
                    AuditEvent.kind == kind,
                    AuditEvent.outcome == outcome,
                )
            )
            or 0
        )


def _form(csrf: str, **change: str) -> dict[str, str]:
    form = {
        "csrf_token": csrf,
        "code": "I10",
        "display": "Hypertension essentielle",
        "clinical_status": "active",
        "verification_status": "provisional",
        "onset": "2024-03-01",
    }
    return form | change


def _nurse_in_care(runtime: Runtime, hospital: Hospital) -> Person:
    practitioner = factories.make_practitioner(runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        runtime,
        "nurse.ines",
        roles=(Role.NURSE,),
        facility_id=hospital.facility_id,
        practitioner_id=practitioner,
    )
    factories.link_care(
        runtime,
        patient_id=hospital.my_patient,
        practitioner_id=practitioner,
        facility_id=hospital.facility_id,
    )
    return nurse


def test_record_update_then_mark_entered_in_error(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    section_url = f"/patients/{hospital.my_patient}/sections/conditions"
    chart = client.get(f"/patients/{hospital.my_patient}")  # the section, loaded after the page
    assert chart.status_code == 200 and f'hx-get="{section_url}"' in chart.text
    assert "Problems and diagnoses" in chart.text
    empty = client.get(section_url, headers=HX)
    assert empty.status_code == 200
    assert "Record a problem" in empty.text and "No problem recorded." in empty.text

    made = client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf))
    assert made.status_code == 303 and made.headers["location"].endswith("#conditions")
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "active", "provisional", 1)
    ]
    assert _audited(sqlite_runtime, hospital.physician.account_id, "phi:resource:create", "success") == 1
    condition_id = _condition_id(sqlite_runtime, hospital.my_patient)

    listed = client.get(section_url, headers=HX)
    assert "Hypertension essentielle" in listed.text and "provisional" in listed.text
    update_url = f"/patients/{hospital.my_patient}/conditions/{condition_id}/update"
    error_url = f"/patients/{hospital.my_patient}/conditions/{condition_id}/entered-in-error"
    assert f'action="{update_url}"' in listed.text and f'action="{error_url}"' in listed.text

    # Confirmed, then resolved: each at the version shown.
    updated = client.post(
        update_url,
        data={
            "csrf_token": csrf,
            "expected_version": "1",
            "clinical_status": "active",
            "verification_status": "confirmed",
        },
    )
    assert updated.status_code == 303
    resolved = client.post(
        update_url,
        data={
            "csrf_token": csrf,
            "expected_version": "2",
            "clinical_status": "resolved",
            "verification_status": "confirmed",
        },
    )
    assert resolved.status_code == 303
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "resolved", "confirmed", 3)
    ]
    assert _audited(sqlite_runtime, hospital.physician.account_id, "phi:resource:update", "success") == 2

    marked = client.post(error_url, data={"csrf_token": csrf, "expected_version": "3"})
    assert marked.status_code == 303
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "resolved", "entered-in-error", 4)
    ]
    # Kept in the list, struck and labelled, with no form left to change it.
    shown = client.get(section_url, headers=HX)
    assert "<s>Hypertension essentielle</s>" in shown.text and "entered in error" in shown.text
    assert f'action="{update_url}"' not in shown.text and f'action="{error_url}"' not in shown.text
    # The page of its own (no scripts) shows the same list.
    page = client.get(section_url)
    assert page.status_code == 200 and "<s>Hypertension essentielle</s>" in page.text
    # A change of a problem entered in error: the form says so, nothing written.
    again = client.post(
        update_url,
        data={
            "csrf_token": csrf,
            "expected_version": "4",
            "clinical_status": "active",
            "verification_status": "confirmed",
        },
    )
    assert again.status_code == 409 and "Nothing was changed" in again.text
    assert _conditions(sqlite_runtime, hospital.my_patient)[0][4] == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"code": ""}, "the ICD-10 code is required"),
        ({"code": "   "}, "the ICD-10 code is required"),
        ({"code": "hypertension"}, "the code must be an ICD-10 code"),
        ({"code": "1234"}, "the code must be an ICD-10 code"),
        ({"display": "  "}, "describe the problem"),
        ({"clinical_status": "cured"}, "choose a clinical status"),
        ({"verification_status": "refuted"}, "choose a verification status"),
        ({"verification_status": "entered-in-error"}, "choose a verification status"),
        ({"onset": "mars 2024"}, "the onset must be a date"),
        ({"onset": "2999-01-01"}, "not in the future"),
    ],
)
def test_bad_input_is_shown_in_the_form_and_writes_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, change: dict[str, str], message: str
) -> None:
    csrf = login(client, hospital.physician)
    form = _form(csrf, **change)
    answer = client.post(f"/patients/{hospital.my_patient}/conditions", data=form)
    assert answer.status_code == 400, answer.text
    assert "Nothing was changed" in answer.text and message in answer.text
    if form["display"].strip():
        assert 'value="Hypertension essentielle"' in answer.text  # what was typed is kept
    assert "<details open><summary>Record a problem</summary>" in answer.text
    assert _conditions(sqlite_runtime, hospital.my_patient) == []


def test_update_at_a_stale_version_is_409_and_writes_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf)).status_code == 303
    condition_id = _condition_id(sqlite_runtime, hospital.my_patient)
    base = f"/patients/{hospital.my_patient}/conditions/{condition_id}"
    first = {
        "csrf_token": csrf,
        "expected_version": "1",
        "clinical_status": "remission",
        "verification_status": "confirmed",
    }
    assert client.post(f"{base}/update", data=first).status_code == 303
    # A colleague's screen still shows version 1.
    stale = client.post(f"{base}/update", data=dict(first, clinical_status="resolved"))
    assert stale.status_code == 409
    assert "Nothing was changed" in stale.text and "changed by someone else" in stale.text
    stale_error = client.post(f"{base}/entered-in-error", data={"csrf_token": csrf, "expected_version": "1"})
    assert stale_error.status_code == 409
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "remission", "confirmed", 2)
    ]
    # An update that changes nothing, or that tries entered-in-error through the update form.
    same = client.post(f"{base}/update", data=dict(first, expected_version="2"))
    assert same.status_code == 400 and "Nothing was changed" in same.text
    sneaky = client.post(
        f"{base}/update", data=dict(first, expected_version="2", verification_status="entered-in-error")
    )
    assert sneaky.status_code == 400
    assert _conditions(sqlite_runtime, hospital.my_patient)[0][2:] == ("remission", "confirmed", 2)


def test_nurse_reads_without_forms_and_is_refused_a_write(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf)).status_code == 303
    condition_id = _condition_id(sqlite_runtime, hospital.my_patient)
    nurse = _nurse_in_care(sqlite_runtime, hospital)
    csrf = login(client, nurse)
    section = client.get(f"/patients/{hospital.my_patient}/sections/conditions", headers=HX)
    assert section.status_code == 200 and "Hypertension essentielle" in section.text
    assert "Record a problem" not in section.text and "/entered-in-error" not in section.text
    assert (
        _audited(sqlite_runtime, nurse.account_id, "phi:resource:read", "success") == 1
    )  # the read, audited

    refused = client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf, code="E11.9"))
    assert refused.status_code == 404
    assert _audited(sqlite_runtime, nurse.account_id, "phi:resource:create", "denied") == 1
    update = client.post(
        f"/patients/{hospital.my_patient}/conditions/{condition_id}/update",
        data={"csrf_token": csrf, "expected_version": "1", "clinical_status": "resolved"},
    )
    assert update.status_code == 404
    assert _audited(sqlite_runtime, nurse.account_id, "phi:resource:update", "denied") == 1
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "active", "provisional", 1)
    ]


def test_front_desk_never_sees_the_list_and_is_refused(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf)).status_code == 303
    condition_id = _condition_id(sqlite_runtime, hospital.my_patient)

    csrf = login(client, hospital.front_desk)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200
    assert "Hypertension" not in chart.text and "/sections/conditions" not in chart.text
    assert client.get(f"/patients/{hospital.my_patient}/sections/conditions", headers=HX).status_code == 404
    refused = client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf, code="E11.9"))
    assert refused.status_code == 404
    assert _audited(sqlite_runtime, hospital.front_desk.account_id, "phi:resource:create", "denied") == 1
    marked = client.post(
        f"/patients/{hospital.my_patient}/conditions/{condition_id}/entered-in-error",
        data={"csrf_token": csrf, "expected_version": "1"},
    )
    assert marked.status_code == 404
    assert _audited(sqlite_runtime, hospital.front_desk.account_id, "phi:resource:update", "denied") == 1
    assert _conditions(sqlite_runtime, hospital.my_patient) == [
        ("I10", "Hypertension essentielle", "active", "provisional", 1)
    ]


def test_missing_csrf_is_refused(client: TestClient, hospital: Hospital, sqlite_runtime: Runtime) -> None:
    csrf = login(client, hospital.physician)
    form = _form(csrf)
    del form["csrf_token"]
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=form).status_code == 403
    assert _conditions(sqlite_runtime, hospital.my_patient) == []
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf)).status_code == 303
    condition_id = _condition_id(sqlite_runtime, hospital.my_patient)
    base = f"/patients/{hospital.my_patient}/conditions/{condition_id}"
    assert client.post(f"{base}/entered-in-error", data={"expected_version": "1"}).status_code == 403
    assert (
        client.post(
            f"{base}/update", data={"expected_version": "1", "clinical_status": "resolved"}
        ).status_code
        == 403
    )
    assert _conditions(sqlite_runtime, hospital.my_patient)[0][3:] == ("provisional", 1)


def test_markup_in_the_display_is_shown_as_text(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    display = '<img src=x onerror="alert(1)">Asthme'
    assert (
        client.post(
            f"/patients/{hospital.my_patient}/conditions", data=_form(csrf, code="J45.9", display=display)
        ).status_code
        == 303
    )
    shown = client.get(f"/patients/{hospital.my_patient}/sections/conditions", headers=HX)
    assert "<img src=x" not in shown.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;Asthme" in shown.text
    # Kept as typed in the form after a refusal, escaped too.
    refused = client.post(
        f"/patients/{hospital.my_patient}/conditions", data=_form(csrf, code="nope", display=display)
    )
    assert refused.status_code == 400 and "<img src=x" not in refused.text


def test_in_french_and_refused_to_a_physician_out_of_care(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    assert client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf)).status_code == 303
    french = client.get(
        f"/patients/{hospital.my_patient}/sections/conditions", headers=HX | {"Accept-Language": "fr-FR"}
    )
    assert "Problèmes et diagnostics" in french.text and "Enregistrer un problème" in french.text
    assert "provisoire" in french.text and "Saisi par erreur" in french.text

    # A physician of the facility without a care relationship: refused like a missing chart.
    csrf = login(client, hospital.other_physician)
    refused = client.post(f"/patients/{hospital.my_patient}/conditions", data=_form(csrf, code="E11.9"))
    assert refused.status_code == 404
    assert _audited(sqlite_runtime, hospital.other_physician.account_id, "phi:resource:create", "denied") == 1
    assert len(_conditions(sqlite_runtime, hospital.my_patient)) == 1
