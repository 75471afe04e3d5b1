"""Notes in the chart keep their line breaks; a nurse of the care team is offered an addendum,
not the amendment of a physician's note, and a posted amendment is refused (403) and audited;
the author amends; the addendum is a note of its own, with the original kept as written."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, login, make_person

HX = {"HX-Request": "true"}


def _denied_updates(runtime: Runtime, account: uuid.UUID) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.resource_type == "DocumentReference",
                    AuditEvent.kind == "phi:resource:update",
                    AuditEvent.outcome == "denied",
                )
            )
            or 0
        )


def test_nurse_adds_an_addendum_and_cannot_amend(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    made = client.post(
        f"/patients/{hospital.my_patient}/notes",
        data={
            "csrf_token": csrf,
            "kind": "11506-3",
            "title": "Consultation",
            "text": "Toux.\nPas de fièvre.",
        },
    )
    assert made.status_code == 303
    notes_url = f"/patients/{hospital.my_patient}/sections/notes"
    mine = client.get(notes_url, headers=HX).text
    assert '<p class="note-text">Toux.\nPas de fièvre.</p>' in mine  # the line break is kept
    assert "Amend" in mine and "Add an addendum" not in mine
    note_id = mine.split("/notes/")[1].split("/amend")[0]
    client.post("/auth/logout", data={"csrf_token": csrf})
    client.cookies.clear()

    practitioner = factories.make_practitioner(sqlite_runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        sqlite_runtime,
        "nurse.lea",
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
    theirs = client.get(notes_url, headers=HX).text
    assert "Add an addendum" in theirs and f"/notes/{note_id}/amend" not in theirs
    assert 'value="Addendum: Consultation"' in theirs
    refused = client.post(
        f"/patients/{hospital.my_patient}/notes/{note_id}/amend",
        data={"csrf_token": csrf, "expected_version": "1", "text": "Fièvre.", "reason": "erreur"},
    )
    assert refused.status_code == 403
    assert _denied_updates(sqlite_runtime, nurse.account_id) == 1
    added = client.post(
        f"/patients/{hospital.my_patient}/notes",
        data={"csrf_token": csrf, "kind": "11506-3", "title": "Addendum: Consultation", "text": "T 38,2."},
    )
    assert added.status_code == 303
    after = client.get(notes_url, headers=HX).text
    assert "Toux.\nPas de fièvre." in after and "T 38,2." in after and "Addendum: Consultation" in after
