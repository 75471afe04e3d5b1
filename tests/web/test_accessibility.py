"""axe-core in Debian's Chromium on every page of the tour, in French and in English: no serious or
critical accessibility violation (labels, contrast, landmarks, the lang attribute, headings...).

The pages are data (TOUR below): a new page of the tour is one more line. axe-core is vendored
(tests/web/vendor/axe-core, MPL-2.0, its licence beside it) and run in the page through the
DevTools protocol, so the strict Content-Security-Policy of the pages stays as it is served.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.identity import sessions
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, AppointmentInput, EncounterInput, PaymentInput, PrescriptionInput
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, make_person
from tests.web.test_browser import staff_actor
from tests.web.test_browser_journeys import serve

pytestmark = pytest.mark.browser

PORTS = range(8870, 8880)  # not the ranges of the other browser suites
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
LANGUAGES = ("fr", "en")


@dataclass(frozen=True)
class Page:
    """One page of the tour: who looks at it (None: nobody signed in) and where ({patient},
    {other}, {invoice} are filled in from the seeded hospital)."""

    who: str | None
    path: str


TOUR: tuple[Page, ...] = (
    Page(None, "/login"),
    Page("physician", "/day"),
    Page("physician", "/patients"),
    Page("physician", "/patients/{patient}"),
    Page("physician", "/patients/{patient}/sections/prescriptions"),
    Page("physician", "/patients/{patient}/sections/results"),
    Page("physician", "/patients/{patient}/sections/notes"),
    Page("physician", "/patients/{patient}/sections/stays"),
    Page("physician", "/patients/{patient}/sections/orders"),
    Page("physician", "/patients/{patient}/sections/allergies"),
    Page("physician", "/patients/{patient}/sections/conditions"),
    Page("physician", "/patients/{patient}/sections/appointments"),
    Page("physician", "/patients/{patient}/sections/care_team"),
    Page("physician", "/desk/calendar"),
    Page("physician", "/patients/{other}"),  # not in their care: the refusal page
    Page("physician", "/patients/{other}/break-glass"),  # the break-the-glass dialog
    Page("physician", "/account"),
    Page("front_desk", "/desk"),
    Page("front_desk", "/desk/schedule"),
    Page("front_desk", "/desk/arrivals"),
    Page("front_desk", "/desk/calendar"),
    Page("front_desk", "/desk/calendar?patient={patient}"),  # booking for a patient: the slots
    Page("front_desk", "/patients/{patient}"),
    Page("billing", "/billing"),
    Page("billing", "/billing/worklist"),
    Page("billing", "/patients/{patient}"),
    Page("billing", "/patients/{patient}/sections/invoices"),
    Page("billing", "/patients/{patient}/sections/coverage"),
    Page("nurse", "/day"),
    Page("nurse", "/ward"),
    Page("officer", "/security"),
    Page("officer", "/security/audit"),
    Page("officer", "/security/exports"),
    Page("officer", "/security/incident"),
    Page("integration", "/integration"),
    Page("admin", "/admin"),
    Page("patient", "/portal"),
    Page("patient", "/portal/access-log"),
)


@dataclass
class Tour:
    origin: str
    people: dict[str, Person]
    values: dict[str, str]


def _seed(runtime: Runtime, hospital: Hospital) -> dict[str, str]:
    """What the pages show: an allergy, prescriptions, results, an appointment, an invoice."""
    doctor = Gate(runtime, staff_actor(hospital.physician, Role.PHYSICIAN))
    pid = hospital.my_patient
    doctor.record_allergy(
        data=AllergyInput(
            patient_id=pid, substance_code="J01C", substance_display="Pénicillines", criticality="high"
        )
    )
    statin = doctor.prescribe(
        data=PrescriptionInput(
            patient_id=pid,
            medication_code="C10AA05",
            medication_display="Atorvastatine 20 mg",
            substance_code="C10AA05",
            dosage_text="1 comprimé le soir",
        )
    )
    # Doses recorded under it: the administration record's list and form are on the page.
    doctor.administer_prescription(prescription_id=statin.id or "", given=True, dose="20 mg")
    doctor.administer_prescription(prescription_id=statin.id or "", given=False, reason="asleep")
    doctor.write_note(patient_id=pid, kind="11506-3", title="Suivi", text="Va bien.\nRevoir dans 3 mois.")
    factories.make_lab_report(runtime, patient_id=pid, facility_id=hospital.facility_id)
    assert hospital.physician.practitioner_id is not None
    start = (clock.now() + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    Gate(runtime, staff_actor(hospital.front_desk, Role.FRONT_DESK)).book_appointment(
        data=AppointmentInput(
            patient_id=pid,
            practitioner_id=str(hospital.physician.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
            reason="Suivi",
        )
    )
    invoice = factories.make_invoice(runtime, patient_id=pid, facility_id=hospital.facility_id)
    return {"patient": pid, "other": hospital.their_patient, "invoice": str(invoice)}


@pytest.fixture
def tour(sqlite_runtime: Runtime, hospital: Hospital, movable_clock: clock.MovableClock) -> Iterator[Tour]:
    runtime = sqlite_runtime
    movable_clock.set(dt.datetime(2026, 12, 8, 9, 30, tzinfo=dt.UTC))  # a weekday morning
    facility = hospital.facility_id
    people = {
        "physician": hospital.physician,
        "front_desk": hospital.front_desk,
        "patient": hospital.patient_person,
        "billing": make_person(runtime, "bill.axe", roles=(Role.BILLING,), facility_id=facility),
        "nurse": make_person(
            runtime,
            "nurse.axe",
            roles=(Role.NURSE,),
            facility_id=facility,
            practitioner_id=factories.make_practitioner(runtime, facility, "nurse"),
        ),
        "officer": make_person(runtime, "sec.axe", roles=(Role.SECURITY_OFFICER,), facility_id=facility),
        "integration": make_person(runtime, "int.axe", roles=(Role.INTEGRATION,), facility_id=facility),
        "admin": make_person(runtime, "adm.axe", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=facility),
    }
    values = _seed(runtime, hospital)
    # The nurse's bed board: her ward's rooms and beds, the patient in one, the others free.
    ward = factories.make_location(runtime, facility)
    placed = factories.make_beds(
        runtime, facility, ward, {"Chambre 1": ["Lit A", "Lit B"], "Chambre 2": ["Lit A"]}
    )
    nurse_practitioner = people["nurse"].practitioner_id
    assert nurse_practitioner is not None
    factories.assign_ward(runtime, practitioner_id=nurse_practitioner, location_id=ward, facility_id=facility)
    Gate(runtime, staff_actor(hospital.physician, Role.PHYSICIAN)).admit_patient(
        data=EncounterInput(
            patient_id=hospital.my_patient, kind="inpatient", bed_id=str(placed["Chambre 1/Lit A"])
        )
    )
    clerk = staff_actor(people["billing"], Role.BILLING)
    Gate(runtime, clerk).record_payment(
        data=PaymentInput(invoice_id=values["invoice"], expected_version=1, amount_cents=1000, method="card")
    )
    for origin in serve(runtime, PORTS):
        yield Tour(origin, people, values)


def _session_cookies(runtime: Runtime, person: Person, origin: str, language: str) -> list[dict[str, Any]]:
    """The cookies a sign-in leaves (the sign-in page itself is a page of the tour)."""
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=person.account_id,
            privileged=True,
            second_factor_method="webauthn",
            address="127.0.0.1",
            user_agent="axe",
        )
    return [
        {"name": "carnet_session", "value": issued.token, "url": origin},
        {"name": "carnet_csrf", "value": issued.csrf_token, "url": origin},
        {"name": "carnet_lang", "value": language, "url": origin},
    ]


def violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page as it stands."""
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' :: ' + n.failureSummary)
            }));
        }"""
    )
    return [v for v in result if v["impact"] in BLOCKING]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_of_the_tour_has_no_serious_accessibility_violation(
    sqlite_runtime: Runtime, tour: Tour, browser: Any, language: str
) -> None:
    found: list[str] = []
    signed_in: str | None = "?"
    page = browser.new_page()
    for step in TOUR:
        if step.who != signed_in:
            browser.clear_cookies()
            if step.who is None:
                browser.add_cookies([{"name": "carnet_lang", "value": language, "url": tour.origin}])
            else:
                browser.add_cookies(
                    _session_cookies(sqlite_runtime, tour.people[step.who], tour.origin, language)
                )
            signed_in = step.who
        path = step.path.format(**tour.values)
        response = page.goto(tour.origin + path)
        assert response is not None and response.status < 500, (path, response and response.status)
        page.wait_for_load_state("networkidle")
        assert page.url == tour.origin + path, (path, page.url)  # the page itself, not a sign-in
        assert page.evaluate("document.documentElement.lang") == language, path
        for v in violations(page):
            found.append(
                f"{language} {step.who} {path}: [{v['impact']}] {v['id']} {v['help']}\n    "
                + "\n    ".join(v["nodes"])
            )
    page.close()
    assert found == [], "\n".join(found)


def test_the_checker_finds_a_violation(tour: Tour, browser: Any) -> None:
    """axe really runs: an image without a text alternative on a page is reported."""
    page = browser.new_page()
    page.goto(tour.origin + "/login")
    page.evaluate(
        "document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\"/favicon.ico\">')"
    )
    assert "image-alt" in {v["id"] for v in violations(page)}
    page.close()


def test_the_tour_names_a_page_of_every_role() -> None:
    assert {p.who for p in TOUR} >= {
        None,
        "physician",
        "nurse",
        "front_desk",
        "billing",
        "officer",
        "integration",
        "patient",
    }
    assert len({(p.who, p.path) for p in TOUR}) == len(TOUR)
    assert uuid.UUID  # the tour's values are ids, never identifiers (no INS, no name in a URL)
