"""Lab orders in the chart: a physician orders a test (French and English), the order's status
and the results that answer it are shown with the laboratory's range and flag; a nurse reads
without the form and is refused a write; the front desk never sees the section; every refusal
is audited and a bad form writes nothing."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import DiagnosticReportInput, ObservationInput
from carnet.records.models import ServiceRequest
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, login, make_person

HX = {"HX-Request": "true"}


def _audited(runtime: Runtime, account: uuid.UUID, kind: str, outcome: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.resource_type == "ServiceRequest",
                    AuditEvent.kind == kind,
                    AuditEvent.outcome == outcome,
                )
            )
            or 0
        )


def _orders(runtime: Runtime, patient_id: str) -> list[tuple[str, str, str, int]]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(ServiceRequest).where(ServiceRequest.patient_id == uuid.UUID(patient_id))
        ).all()
        return [(r.code, r.priority, r.status, r.version_id) for r in rows]


def _nurse_in_care(runtime: Runtime, hospital: Hospital) -> Person:
    practitioner = factories.make_practitioner(runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        runtime,
        "nurse.lea",
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


def _results_arrive(runtime: Runtime, hospital: Hospital, order_id: str) -> None:
    """The laboratory's results answering the order (as its interface files them)."""
    doctor = factories.make_physician(runtime, hospital.facility_id)
    assert doctor.practitioner_id is not None
    factories.link_care(
        runtime,
        patient_id=hospital.my_patient,
        practitioner_id=doctor.practitioner_id,
        facility_id=hospital.facility_id,
    )
    at = clock.now() - dt.timedelta(hours=1)
    potassium = ObservationInput(
        patient_id=hospital.my_patient,
        category="laboratory",
        code="2823-3",
        display="Potassium",
        value_number=6.4,
        unit="mmol/L",
        effective_at=at,
        order_id=order_id,
        reference_range="3.5-5.0",
        interpretation="HH",
    )
    report = DiagnosticReportInput(
        patient_id=hospital.my_patient, code="24326-1", display="Ionogramme", issued_at=at, order_id=order_id
    )
    Gate(runtime, doctor).record_observations(results=[potassium], report=report)


def test_a_physician_orders_a_test_and_sees_its_results_arrive(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    chart = client.get(f"/patients/{hospital.my_patient}")
    url = f"/patients/{hospital.my_patient}/sections/orders"
    assert chart.status_code == 200 and f'hx-get="{url}"' in chart.text and ">Lab orders</a>" in chart.text
    empty = client.get(url, headers=HX)
    assert empty.status_code == 200 and "No lab order." in empty.text and "Order a lab test" in empty.text

    made = client.post(
        f"/patients/{hospital.my_patient}/orders",
        data={"csrf_token": csrf, "code": "2823-3", "priority": "urgent", "note": "Sous diurétique."},
    )
    assert made.status_code == 303 and made.headers["location"].endswith("#orders")
    assert _orders(sqlite_runtime, hospital.my_patient) == [("2823-3", "urgent", "active", 1)]
    assert _audited(sqlite_runtime, hospital.physician.account_id, "phi:resource:create", "success") == 1
    section = client.get(url, headers=HX).text
    assert "Potassium" in section and "ordered, results awaited" in section and "no result yet" in section
    assert "Sous diurétique." in section and ">urgent<" in section and "Cancel the order" in section

    with sqlite_runtime.session_factory() as session:
        order_id = str(session.scalar(select(ServiceRequest.id)))
    _results_arrive(sqlite_runtime, hospital, order_id)
    section = client.get(url, headers=HX).text
    assert "results complete" in section and "final results" in section
    assert (
        ">6.4<" in section and "3.5-5.0" in section and '<span class="flag flag-high">high</span>' in section
    )
    assert "Cancel the order" not in section
    assert _orders(sqlite_runtime, hospital.my_patient) == [("2823-3", "urgent", "completed", 2)]
    # Without scripts, the section's own page shows the same.
    page = client.get(url)
    assert page.status_code == 200 and "results complete" in page.text


def test_in_french(client: TestClient, hospital: Hospital, sqlite_runtime: Runtime) -> None:
    csrf = login(client, hospital.physician)
    client.cookies.set("carnet_lang", "fr")
    client.post(
        f"/patients/{hospital.my_patient}/orders",
        data={"csrf_token": csrf, "code": "58410-2", "priority": "routine"},
    )
    text = client.get(f"/patients/{hospital.my_patient}/sections/orders", headers=HX).text
    for french in (
        "Examens de biologie prescrits",
        "Numération formule sanguine (NFS)",
        "prescrit, résultats attendus",
        "pas encore de résultat",
        "Prescrire un examen de biologie",
        "Ionogramme sanguin",
        "Annuler la demande",
        "Priorité",
    ):
        assert french in text, french
    for english in ("Lab orders", "results awaited", "no result yet", "Order the test", "Priority"):
        assert english not in text, english


def test_a_bad_form_writes_nothing_and_a_cancelled_order_is_kept(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    base = f"/patients/{hospital.my_patient}/orders"
    for change in ({"code": "0000-0"}, {"code": ""}, {"code": "2823-3", "priority": "whenever"}):
        refused = client.post(base, data={"csrf_token": csrf, "priority": "routine"} | change)
        assert refused.status_code == 400 and "Nothing was changed:" in refused.text
    assert _orders(sqlite_runtime, hospital.my_patient) == []
    assert client.post(base, data={"csrf_token": csrf, "code": "1988-5"}).status_code == 303
    with sqlite_runtime.session_factory() as session:
        order_id = str(session.scalar(select(ServiceRequest.id)))
    stale = client.post(f"{base}/{order_id}/cancel", data={"csrf_token": csrf, "expected_version": "4"})
    assert stale.status_code == 409
    cancelled = client.post(f"{base}/{order_id}/cancel", data={"csrf_token": csrf, "expected_version": "1"})
    assert cancelled.status_code == 303
    assert _orders(sqlite_runtime, hospital.my_patient) == [("1988-5", "routine", "revoked", 2)]
    assert "cancelled" in client.get(f"/patients/{hospital.my_patient}/sections/orders", headers=HX).text
    # Without the CSRF token: refused, nothing written.
    assert client.post(base, data={"code": "1988-5"}).status_code == 403
    assert len(_orders(sqlite_runtime, hospital.my_patient)) == 1


def test_a_nurse_reads_without_the_form_and_is_refused_an_order(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    assert client.post(f"/patients/{hospital.my_patient}/orders", data={"csrf_token": csrf, "code": "2160-0"})
    nurse = _nurse_in_care(sqlite_runtime, hospital)
    csrf = login(client, nurse)
    section = client.get(f"/patients/{hospital.my_patient}/sections/orders", headers=HX)
    assert section.status_code == 200 and "Creatinine" in section.text
    assert "Order a lab test" not in section.text and "Cancel the order" not in section.text
    assert _audited(sqlite_runtime, nurse.account_id, "phi:resource:read", "success") == 1
    refused = client.post(
        f"/patients/{hospital.my_patient}/orders", data={"csrf_token": csrf, "code": "2823-3"}
    )
    assert refused.status_code == 404
    assert _audited(sqlite_runtime, nurse.account_id, "phi:resource:create", "denied") == 1
    assert len(_orders(sqlite_runtime, hospital.my_patient)) == 1


def test_the_front_desk_and_a_physician_out_of_care_are_refused_and_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    client.post(f"/patients/{hospital.my_patient}/orders", data={"csrf_token": csrf, "code": "2160-0"})
    for person in (hospital.front_desk, hospital.other_physician):
        csrf = login(client, person)
        chart = client.get(f"/patients/{hospital.my_patient}")
        assert "Creatinine" not in chart.text
        section = client.get(f"/patients/{hospital.my_patient}/sections/orders", headers=HX)
        assert section.status_code == 404 and "Creatinine" not in section.text
        assert _audited(sqlite_runtime, person.account_id, "phi:resource:read", "denied") == 1
        refused = client.post(
            f"/patients/{hospital.my_patient}/orders", data={"csrf_token": csrf, "code": "2823-3"}
        )
        assert refused.status_code == 404
        assert _audited(sqlite_runtime, person.account_id, "phi:resource:create", "denied") == 1
    assert len(_orders(sqlite_runtime, hospital.my_patient)) == 1
