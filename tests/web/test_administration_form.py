"""The nurse's administration record from the chart: under each active prescription, a dose
given or not given (with a reason from the list), then listed under it in the reader's language;
a bad post changes nothing and says why in French; the front desk is refused and audited."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import PrescriptionInput
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, login, make_person
from tests.web.test_browser import staff_actor

FRENCH = {"Accept-Language": "fr-FR"}


def _prescribe(runtime: Runtime, hospital: Hospital) -> str:
    rx = Gate(runtime, staff_actor(hospital.physician, Role.PHYSICIAN)).prescribe(
        data=PrescriptionInput(
            patient_id=hospital.my_patient,
            medication_code="N02BE01",
            medication_display="Paracétamol 1 g",
            substance_code="N02BE01",
            dosage_text="1 g x 3 / jour",
        )
    )
    return rx.id or ""


def _section(client: TestClient, patient: str) -> str:
    return client.get(f"/patients/{patient}/sections/prescriptions", headers=FRENCH).text


def test_a_nurse_records_doses_given_and_not_given_and_sees_them_listed(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(dt.datetime(2026, 12, 8, 7, 5, tzinfo=dt.UTC))  # 08:05 in Paris
    rid = _prescribe(sqlite_runtime, hospital)
    practitioner = factories.make_practitioner(sqlite_runtime, hospital.facility_id, profession="nurse")
    nurse = make_person(
        sqlite_runtime,
        "ide.claire",
        roles=(Role.NURSE,),
        facility_id=hospital.facility_id,
        practitioner_id=practitioner,
    )
    factories.link_care(
        sqlite_runtime,
        patient_id=hospital.my_patient,
        practitioner_id=practitioner,
        facility_id=hospital.facility_id,
    )
    csrf = login(client, nurse)
    page = _section(client, hospital.my_patient)
    action = f"/patients/{hospital.my_patient}/prescriptions/{rid}/administrations"
    assert f'action="{action}"' in page and "Enregistrer une dose" in page
    assert '<option value="vomited">vomissements</option>' in page

    given = client.post(
        action, data={"csrf_token": csrf, "outcome": "given", "dose": "1 g", "note": "per os"}
    )
    assert given.status_code == 303
    movable_clock.set(dt.datetime(2026, 12, 8, 7, 14, tzinfo=dt.UTC))  # within the session's idle time
    missed = client.post(action, data={"csrf_token": csrf, "outcome": "not-given", "reason": "vomited"})
    assert missed.status_code == 303

    listed = _section(client, hospital.my_patient)
    doses = listed.split('<ul class="doses">')[1].split("</ul>")[0]
    # Newest first, Paris time, French words.
    assert doses.index("08:14") < doses.index("08:05")
    assert "non administrée</strong>: vomissements" in doses and "administrée (1 g)" in doses
    assert "per os" in doses

    # Not given without a reason: nothing recorded, said in French.
    refused = client.post(action, data={"csrf_token": csrf, "outcome": "not-given"}, headers=FRENCH)
    assert refused.status_code == 400
    assert "une dose non administrée demande un motif choisi dans la liste" in refused.text
    both = client.post(
        action, data={"csrf_token": csrf, "outcome": "given", "reason": "asleep"}, headers=FRENCH
    )
    assert both.status_code == 400
    assert "un motif ne se donne que pour une dose non administrée" in both.text
    assert _section(client, hospital.my_patient).count("<li>") == listed.count("<li>")


def test_a_held_prescription_offers_no_form_and_the_front_desk_is_refused_and_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    rid = _prescribe(sqlite_runtime, hospital)
    action = f"/patients/{hospital.my_patient}/prescriptions/{rid}/administrations"
    csrf = login(client, hospital.physician)
    assert f'action="{action}"' in _section(client, hospital.my_patient)  # a physician may too
    Gate(sqlite_runtime, staff_actor(hospital.physician, Role.PHYSICIAN)).hold_prescription(
        prescription_id=rid, expected_version=1, reason="bloc opératoire"
    )
    assert f'action="{action}"' not in _section(client, hospital.my_patient)
    held = client.post(action, data={"csrf_token": csrf, "outcome": "given"}, headers=FRENCH)
    assert held.status_code == 400 and "cette prescription est suspendue" in held.text

    client.cookies.clear()
    csrf = login(client, hospital.front_desk)
    refused = client.post(action, data={"csrf_token": csrf, "outcome": "given"})
    assert refused.status_code in (403, 404)
    with sqlite_runtime.session_factory() as session:
        outcomes = [
            (e.kind, e.outcome)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.account_id == hospital.front_desk.account_id)
            )
            if e.kind == "phi:resource:create"
        ]
    assert outcomes == [("phi:resource:create", "denied")]
    # A forged post without the CSRF token: refused before anything runs.
    assert client.post(action, data={"outcome": "given"}).status_code == 403
