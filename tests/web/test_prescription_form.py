"""The chart's prescription form: drugs from the catalogue, warnings naming the allergen and
the reason, an override that needs a reason (kept, audited), stop/hold/resume/renew."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, login
from tests.web.test_browser import staff_actor

FRENCH = {"Accept-Language": "fr-FR"}


@pytest.fixture
def allergic(sqlite_runtime: Runtime, hospital: Hospital, movable_clock: clock.MovableClock) -> str:
    Gate(sqlite_runtime, staff_actor(hospital.physician, Role.PHYSICIAN)).record_allergy(
        data=AllergyInput(
            patient_id=hospital.my_patient,
            substance_code="J01C",
            substance_display="Pénicillines",
            criticality="high",
        )
    )
    return hospital.my_patient


def _prescriptions(client: TestClient, patient: str) -> str:
    return client.get(
        f"/patients/{patient}/sections/prescriptions", headers={"HX-Request": "true", **FRENCH}
    ).text


def _versions(page: str) -> dict[str, str]:
    """prescription id -> the version its forms send."""
    found = re.findall(
        r'/prescriptions/([0-9a-f-]{36})/\w+">\s*<input[^>]+>\s*'
        r'<input type="hidden" name="expected_version" value="(\d+)"',
        page,
    )
    return dict(found)


def test_class_allergy_warning_then_override_with_a_reason(
    client: TestClient, hospital: Hospital, allergic: str, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    chart = client.get(f"/patients/{allergic}/sections/prescriptions", headers=FRENCH)
    assert '<option value="amoxicilline (Clamoxyl) — J01CA04">' in chart.text  # the catalogue, in French
    form = {
        "csrf_token": csrf,
        "medication": "amoxicilline (Clamoxyl) — J01CA04",
        "dosage_text": "1 g x 3 / jour",
    }
    warned = client.post(f"/patients/{allergic}/prescriptions", data=form, headers=FRENCH)
    assert warned.status_code == 409
    assert "Alerte allergie" in warned.text and "Pénicillines (J01C)" in warned.text
    assert "appartient à la classe pénicillines (J01C)" in warned.text
    assert 'name="allergy_override_reason" required' in warned.text
    assert "Amoxicilline" not in _prescriptions(client, allergic).split("<tbody>")[1].split("</tbody>")[0]
    done = client.post(
        f"/patients/{allergic}/prescriptions",
        data=form | {"allergy_override_reason": "Tolérée en 2023, avis allergologue"},
        headers=FRENCH,
    )
    assert done.status_code == 303
    listed = _prescriptions(client, allergic)
    assert "Amoxicilline" in listed and "prescrit malgré une alerte" in listed
    assert "Tolérée en 2023, avis allergologue" in listed
    with sqlite_runtime.session_factory() as session:
        kinds = [
            (e.kind, e.outcome)
            for e in session.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.account_id == hospital.physician.account_id,
                    AuditEvent.resource_type == "MedicationRequest",
                )
                .order_by(AuditEvent.seq)
            )
            if e.kind == "phi:resource:create"
        ]
    assert kinds == [("phi:resource:create", "error"), ("phi:resource:create", "success")]


def test_a_drug_not_in_the_catalogue_or_no_dosage_changes_nothing(
    client: TestClient, hospital: Hospital, allergic: str
) -> None:
    csrf = login(client, hospital.physician)
    for medication, dosage, message in (
        ("Potion magique", "1 cuillère", "choisissez le médicament dans la liste"),
        ("paracétamol", " ", "indiquez la posologie"),
    ):
        page = client.post(
            f"/patients/{allergic}/prescriptions",
            data={"csrf_token": csrf, "medication": medication, "dosage_text": dosage},
            headers=FRENCH,
        )
        assert page.status_code == 400 and message in page.text
    assert "Aucun" in _prescriptions(client, allergic) or "None" in _prescriptions(client, allergic)


def test_stop_hold_resume_renew_from_the_chart(client: TestClient, hospital: Hospital, allergic: str) -> None:
    csrf = login(client, hospital.physician)
    base = f"/patients/{allergic}/prescriptions"
    made = client.post(
        base, data={"csrf_token": csrf, "medication": "ramipril", "dosage_text": "5 mg le matin"}
    )
    assert made.status_code == 303
    [(rid, version)] = _versions(_prescriptions(client, allergic)).items()
    assert version == "1"
    held = client.post(
        f"{base}/{rid}/hold", data={"csrf_token": csrf, "expected_version": "1", "reason": "Bloc demain"}
    )
    assert held.status_code == 303
    page = _prescriptions(client, allergic)
    assert "suspendue" in page and "Bloc demain" in page and "Reprendre" in page
    stale = client.post(f"{base}/{rid}/resume", data={"csrf_token": csrf, "expected_version": "1"})
    assert stale.status_code == 409
    assert (
        client.post(f"{base}/{rid}/resume", data={"csrf_token": csrf, "expected_version": "2"}).status_code
        == 303
    )
    no_reason = client.post(
        f"{base}/{rid}/stop", data={"csrf_token": csrf, "expected_version": "3", "reason": ""}
    )
    assert no_reason.status_code == 400
    assert (
        client.post(f"{base}/{rid}/renew", data={"csrf_token": csrf, "expected_version": "3"}).status_code
        == 303
    )
    versions = _versions(_prescriptions(client, allergic))
    assert len(versions) == 2 and versions[rid] == "4"  # the renewed one completed, renewable again
    [new] = [k for k in versions if k != rid]
    stopped = client.post(
        f"{base}/{new}/stop", data={"csrf_token": csrf, "expected_version": "1", "reason": "Toux"}
    )
    assert stopped.status_code == 303 and "arrêtée" in _prescriptions(client, allergic)
    assert (
        client.post(f"{base}/{new}/explode", data={"csrf_token": csrf, "expected_version": "2"}).status_code
        == 404
    )


def test_nurse_and_desk_cannot_prescribe_or_change_and_are_audited(
    client: TestClient,
    hospital: Hospital,
    allergic: str,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    csrf = login(client, hospital.physician)
    client.post(
        f"/patients/{allergic}/prescriptions",
        data={"csrf_token": csrf, "medication": "ramipril", "dosage_text": "5 mg"},
    )
    [(rid, _v)] = _versions(_prescriptions(client, allergic)).items()
    client.cookies.clear()
    csrf = login(client, hospital.front_desk)
    page = client.get(f"/patients/{allergic}", headers=FRENCH)
    assert 'name="medication"' not in page.text
    refused = client.post(
        f"/patients/{allergic}/prescriptions",
        data={"csrf_token": csrf, "medication": "ramipril", "dosage_text": "5 mg"},
    )
    assert refused.status_code in (403, 404)
    refused = client.post(
        f"/patients/{allergic}/prescriptions/{rid}/stop",
        data={"csrf_token": csrf, "expected_version": "1", "reason": "x"},
    )
    assert refused.status_code in (403, 404)
    with sqlite_runtime.session_factory() as session:
        outcomes = [
            e.outcome
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.account_id == hospital.front_desk.account_id)
            )
            if e.kind in ("phi:resource:create", "phi:resource:update")
        ]
    assert outcomes == ["denied", "denied"]
    # A forged post without the CSRF token: refused before anything runs.
    assert (
        client.post(
            f"/patients/{allergic}/prescriptions/{rid}/stop", data={"expected_version": "1", "reason": "x"}
        ).status_code
        == 403
    )
