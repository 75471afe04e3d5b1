"""The chart's results: vital signs and lab results as tables with units, reference ranges and
flags, a trend drawn as an SVG by the server (no script), lab reports with their results; the
patient banner (age, allergies) and the section links. Each read is an audited gate read; the
front desk asking for results is refused by the policy and the refusal is audited."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.phi.system import system_access
from carnet.records.models import Observation
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, login

HX = {"HX-Request": "true"}


def _vitals(runtime: Runtime, hospital: Hospital, pulses: list[float]) -> None:
    now = clock.now()
    with system_access(runtime, reason="test fixture: vital signs") as door:
        for i, value in enumerate(pulses):
            at = now - dt.timedelta(hours=len(pulses) - i)
            door.session.add(
                Observation(
                    facility_id=hospital.facility_id,
                    patient_id=uuid.UUID(hospital.my_patient),
                    category="vital-signs",
                    code="8867-4",
                    display="Fréquence cardiaque",
                    value_number=value,
                    unit="/min",
                    effective_at=at,
                    status="final",
                    version_id=1,
                    created_at=now,
                    updated_at=now,
                )
            )


def _audited(runtime: Runtime, account: uuid.UUID, resource_type: str, outcome: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.resource_type == resource_type,
                    AuditEvent.kind == "phi:resource:read",
                    AuditEvent.outcome == outcome,
                )
            )
            or 0
        )


def _hospital_with_results(runtime: Runtime, hospital: Hospital) -> None:
    _vitals(runtime, hospital, [72.0, 88.0, 121.0])
    factories.make_lab_report(
        runtime,
        patient_id=hospital.my_patient,
        facility_id=hospital.facility_id,
        conclusion="Hyperkaliémie à contrôler.",
        results=(("2823-3", "Potassium", 6.1, "mmol/L"), ("2951-2", "Sodium", 140.0, "mmol/L")),
    )


def test_physician_reads_results_with_ranges_flags_and_trend(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    _hospital_with_results(sqlite_runtime, hospital)
    login(client, hospital.physician)
    url = f"/patients/{hospital.my_patient}/sections/results"
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200 and f'hx-get="{url}"' in chart.text
    # The banner: age on the clock's day, and the section links.
    born = dt.date(1980, 2, 29)
    today = clock.now().date()
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    assert 'class="banner"' in chart.text and f"{age} years" in chart.text
    assert '<a href="#results">Results</a>' in chart.text and '<a href="#allergies">' in chart.text

    section = client.get(url, headers=HX)
    assert section.status_code == 200
    text = section.text
    # Heart rate: latest 121/min, above 60–100, three values drawn as a line.
    assert "Fréquence cardiaque" in text and ">121<" in text and "60–100" in text and "/min" in text
    assert '<span class="flag flag-high">high</span>' in text
    assert "<svg" in text and "<polyline" in text and text.count('class="dot') == 3
    assert "<script" not in text.lower()
    # The lab report with its results attached, potassium flagged high, sodium normal.
    assert "Bilan métabolique" in text and "Hyperkaliémie à contrôler." in text
    assert "3.5–5" in text and "135–145" in text and "flag-normal" in text
    assert "2 tests out of range" in text
    # Two audited list reads: observations and lab reports.
    assert _audited(sqlite_runtime, hospital.physician.account_id, "Observation", "success") == 1
    assert _audited(sqlite_runtime, hospital.physician.account_id, "DiagnosticReport", "success") == 1
    # Without scripts, the section's own page shows the same.
    page = client.get(url)
    assert page.status_code == 200 and "<polyline" in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # ... under the patient's banner: who this is, without going back to the chart.
    assert 'class="banner"' in page.text and f"{age} years" in page.text
    assert "Zoé" in page.text and "Back to the chart" in page.text
    orders = client.get(f"/patients/{hospital.my_patient}/sections/orders")
    assert orders.status_code == 200 and 'class="banner"' in orders.text and "Zoé" in orders.text


def test_in_french(client: TestClient, hospital: Hospital, sqlite_runtime: Runtime) -> None:
    _hospital_with_results(sqlite_runtime, hospital)
    login(client, hospital.physician)
    client.cookies.set("carnet_lang", "fr")
    text = client.get(f"/patients/{hospital.my_patient}/sections/results", headers=HX).text
    for french in ("Résultats", "Constantes", "Valeurs de référence", "élevé", "normal", "Tendance"):
        assert french in text, french
    for english in ("Vital signs", "Reference range", "Latest value", "tests out of range"):
        assert english not in text, english
    chart = client.get(f"/patients/{hospital.my_patient}").text
    assert "Sections du dossier" in chart and " ans" in chart


def test_values_ranges_and_units_as_a_clinician_writes_them(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    """The decimal comma in French (39,1; 36,1–37,8), units as written (°C, not UCUM's Cel),
    and each point of the trend dated on the hospital's clock, not in ISO."""
    _hospital_with_results(sqlite_runtime, hospital)
    now = clock.now()
    with system_access(sqlite_runtime, reason="test fixture: temperatures") as door:
        for hours, value in ((5, 37.2), (1, 39.1)):
            door.session.add(
                Observation(
                    facility_id=hospital.facility_id,
                    patient_id=uuid.UUID(hospital.my_patient),
                    category="vital-signs",
                    code="8310-5",
                    display="Température corporelle",
                    value_number=value,
                    unit="Cel",
                    effective_at=now - dt.timedelta(hours=hours),
                    status="final",
                    version_id=1,
                    created_at=now,
                    updated_at=now,
                )
            )
    login(client, hospital.physician)
    url = f"/patients/{hospital.my_patient}/sections/results"
    english = client.get(url, headers=HX).text
    assert ">39.1<" in english and "36.1–37.8" in english and "<td>°C</td>" in english
    assert "Cel<" not in english and "6.1" in english
    client.cookies.set("carnet_lang", "fr")
    french = client.get(url, headers=HX).text
    assert ">39,1<" in french and "36,1–37,8" in french and "3,5–5" in french and ">6,1<" in french
    assert "39.1" not in french and "<td>°C</td>" in french
    assert "(" + now.strftime("%Y-%m-%d") not in french  # the trend's points are not ISO dates


def test_front_desk_is_refused_results_and_the_refusal_is_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    _hospital_with_results(sqlite_runtime, hospital)
    login(client, hospital.front_desk)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200 and "sections/results" not in chart.text
    refused = client.get(f"/patients/{hospital.my_patient}/sections/results", headers=HX)
    assert refused.status_code == 404
    assert "Potassium" not in refused.text and "121" not in refused.text
    assert _audited(sqlite_runtime, hospital.front_desk.account_id, "Observation", "denied") == 1


def test_physician_out_of_care_is_refused_and_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    factories.make_lab_report(
        sqlite_runtime, patient_id=hospital.their_patient, facility_id=hospital.facility_id
    )
    login(client, hospital.physician)
    refused = client.get(f"/patients/{hospital.their_patient}/sections/results", headers=HX)
    assert refused.status_code == 404 and "Glucose" not in refused.text
    assert _audited(sqlite_runtime, hospital.physician.account_id, "Observation", "denied") == 1


def test_banner_shows_the_ward_of_the_stay_in_progress(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    ward = factories.make_location(sqlite_runtime, hospital.facility_id)
    factories.admit(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id, location_id=ward
    )
    login(client, hospital.physician)
    chart = client.get(f"/patients/{hospital.my_patient}").text
    banner = chart.split('class="banner"')[1].split("</div>")[0]
    assert "<dt>Stay</dt>" in banner and "Ward " in banner
    # Read through the gate: the stays list is audited.
    with sqlite_runtime.session_factory() as session:
        audited = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.account_id == hospital.physician.account_id,
                AuditEvent.resource_type == "Encounter",
                AuditEvent.outcome == "success",
            )
        )
    assert audited == 1
