"""The bed board and the chart's bed forms: a physician admits to a free bed of the ward
(offered on the chart), transfers to another and discharges; the banner says ward, room and
bed; the nurse's board at /ward lays out her ward's rooms and beds, each free or who is in it
(the same patients as before, counted as one list); other roles are refused and audited; a
taken bed is refused in French on a French page and changes nothing."""

from __future__ import annotations

import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.audit.interfaces import AuditKind
from carnet.records import beds
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from carnet.web.messages import french
from tests import factories
from tests.web.conftest import Hospital, login
from tests.web.test_french_pages import FRENCH
from tests.web.test_workspace_views import Work, _exposed, _refused, work  # noqa: F401 (the fixture)


def _stay(runtime: Runtime, patient: str) -> Encounter:
    with runtime.session_factory() as session:
        return session.scalars(
            select(Encounter).where(
                Encounter.patient_id == uuid.UUID(patient), Encounter.status == "in-progress"
            )
        ).one()


def _row(page: str, bed: str) -> str:
    """The board's row of one bed (its header cell, to the end of the row)."""
    found = re.search(rf'<th scope="row">{bed}</th>(.*?)</tr>', page, re.S)
    assert found is not None, f"no row for bed {bed}"
    return found.group(1)


def test_admit_to_a_bed_transfer_discharge_and_the_board(
    client: TestClient,
    hospital: Hospital,
    work: Work,  # noqa: F811 (the fixture imported)
    sqlite_runtime: Runtime,
) -> None:
    runtime = sqlite_runtime
    placed = factories.make_beds(runtime, hospital.facility_id, work.ward, {"Chambre 12": ["Lit A", "Lit B"]})
    a, b = str(placed["Chambre 12/Lit A"]), str(placed["Chambre 12/Lit B"])
    csrf = login(client, hospital.physician)

    # The chart's admit form offers the ward's free beds.
    section = client.get(f"/patients/{hospital.my_patient}/sections/stays", headers={"HX-Request": "true"})
    assert f'<option value="{a}">Chambre 12 · Lit A</option>' in section.text
    admitted = client.post(
        f"/patients/{hospital.my_patient}/stays", data={"csrf_token": csrf, "kind": "inpatient", "bed_id": a}
    )
    assert admitted.status_code == 303, admitted.text
    stay = _stay(runtime, hospital.my_patient)
    assert (stay.location_id, str(stay.bed_id)) == (work.ward, a)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert "Chambre 12 · Lit A" in chart.text  # the banner: ward · room · bed
    assert f'<option value="{a}">' not in chart.text  # no longer offered: taken

    # The nurse's board: her ward's room and beds, who lies where; the stay without a bed waits.
    nurse = TestClient(client.app)
    login(nurse, work.nurse)
    board = nurse.get("/ward")
    assert board.status_code == 200, board.text
    assert "Lit A" in board.text and f'href="/patients/{hospital.my_patient}"' in _row(board.text, "Lit A")
    assert "Free" in _row(board.text, "Lit B")
    assert "Waiting for a bed" in board.text and "Lefebvre" in board.text and "Garnier" not in board.text
    assert _exposed(runtime, work.nurse) == {work.inpatient, hospital.my_patient}

    # Transfer to the other bed; then discharge: both beds free on the board.
    moved = client.post(
        f"/patients/{hospital.my_patient}/stays/{stay.id}/transfer",
        data={"csrf_token": csrf, "expected_version": stay.version_id, "bed_id": b},
    )
    assert moved.status_code == 303, moved.text
    stay = _stay(runtime, hospital.my_patient)
    assert str(stay.bed_id) == b and beds.history_of(stay.bed_history)[0].end is not None
    assert "Free" in _row(nurse.get("/ward").text, "Lit A")
    out = client.post(
        f"/patients/{hospital.my_patient}/stays/{stay.id}/discharge",
        data={"csrf_token": csrf, "expected_version": stay.version_id},
    )
    assert out.status_code == 303, out.text
    after = nurse.get("/ward").text
    assert "Free" in _row(after, "Lit A") and "Free" in _row(after, "Lit B")


def test_a_taken_bed_is_refused_in_french_and_changes_nothing(
    client: TestClient,
    hospital: Hospital,
    work: Work,  # noqa: F811 (the fixture imported)
    sqlite_runtime: Runtime,
) -> None:
    runtime = sqlite_runtime
    placed = factories.make_beds(runtime, hospital.facility_id, work.ward, {"Chambre 3": ["Lit A"]})
    bed = str(placed["Chambre 3/Lit A"])
    csrf = login(client, hospital.physician)
    stay = _stay(runtime, work.inpatient)
    factories.link_care(
        runtime,
        patient_id=work.inpatient,
        practitioner_id=hospital.physician.practitioner_id,  # type: ignore[arg-type]
        facility_id=hospital.facility_id,
    )
    took = client.post(
        f"/patients/{work.inpatient}/stays/{stay.id}/transfer",
        data={"csrf_token": csrf, "expected_version": stay.version_id, "bed_id": bed},
    )
    assert took.status_code == 303, took.text
    refused = client.post(
        f"/patients/{hospital.my_patient}/stays",
        data={"csrf_token": csrf, "kind": "inpatient", "bed_id": bed},
        headers=FRENCH,
    )
    assert refused.status_code == 409
    taken = "this bed is taken by another stay in progress: choose a free bed"
    assert french(taken) in refused.text.replace("&#39;", "'")
    assert _stay(runtime, work.inpatient).bed_id == uuid.UUID(bed)
    with runtime.session_factory() as session:
        assert (
            session.scalars(
                select(Encounter).where(Encounter.patient_id == uuid.UUID(hospital.my_patient))
            ).all()
            == []
        )


def test_the_board_is_refused_to_other_roles_and_audited(
    client: TestClient,
    hospital: Hospital,
    work: Work,  # noqa: F811 (the fixture imported)
    sqlite_runtime: Runtime,
) -> None:
    login(client, hospital.physician)
    _refused(client, sqlite_runtime, "/ward", AuditKind.PHI_LIST)
    login(client, hospital.front_desk)
    _refused(client, sqlite_runtime, "/ward", AuditKind.PHI_LIST)
    assert _exposed(sqlite_runtime, hospital.front_desk) == set()
