"""The main pages in French, for each role, fail on any string left in English or shown as a code.

A text (or a title, label or placeholder) that is an English message of the catalogue with a
different French translation was not translated; a raw code (front_desk, phi:resource:list) or
an English status word (booked, stopped, male) was shown as it is stored.
"""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

import carnet.web
from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, AppointmentInput, PrescriptionInput
from carnet.runtime import Runtime
from carnet.web.clinician import SECTIONS
from carnet.web.labels import LABELS
from tests.web.conftest import Hospital, Person, login, make_person, open_session_for
from tests.web.test_browser import staff_actor

WEB = Path(carnet.web.__file__).parent
FRENCH = {"Accept-Language": "fr-FR,fr;q=0.9"}

# English words a stored code leaves on a page when it is not translated.
ENGLISH_CODES = re.compile(
    r"\b(male|female|booked|stopped|completed|cancelled|pending|arrived|fulfilled|noshow|draft|issued|"
    r"balanced|physician|nurse|billing|front desk|on-hold|entered-in-error|unable-to-assess|low|high)\b",
    re.IGNORECASE,
)
RAW_CODES = re.compile(r"\b[a-z]+_[a-z_]+\b|\b[a-z]+:[a-z-]+:[a-z-]+\b")
ATTRIBUTES = ("title", "aria-label", "placeholder", "alt", "data-working", "data-failed")


class _Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ATTRIBUTES and value:
                self.texts.append(value)
            if tag == "option" and name == "value":
                pass

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))


def _english_messages() -> set[str]:
    with (WEB / "locale/fr/LC_MESSAGES/messages.po").open("rb") as handle:
        catalog = read_po(handle)
    english = {m.id for m in catalog if isinstance(m.id, str) and m.id and m.string and m.string != m.id}
    return {e for e in english if len(e) > 3}  # "Min" or "Qty" could be data


ENGLISH = _english_messages()


def untranslated(html: str, data: set[str]) -> list[str]:
    parser = _Texts()
    parser.feed(html)
    found = []
    for text in parser.texts:
        if text in data:
            continue
        if text in ENGLISH or text.rstrip(":") in ENGLISH:
            found.append(f"English: {text!r}")
        elif RAW_CODES.search(text):
            found.append(f"code: {text!r}")
        elif ENGLISH_CODES.search(text):
            found.append(f"English word: {text!r}")
    return found


def test_the_checker_catches_what_it_should() -> None:
    assert untranslated("<p>Sign in</p>", set()) == ["English: 'Sign in'"]
    assert untranslated("<td>booked</td><td>front_desk</td>", set()) == [
        "English: 'booked'",
        "code: 'front_desk'",
    ]
    assert untranslated('<td title="phi:resource:list (error)">x</td>', set()) == [
        "code: 'phi:resource:list (error)'"
    ]
    assert untranslated("<p>Se connecter</p><script>const male = 1;</script>", set()) == []
    assert all(LABELS[group] for group in LABELS)


@pytest.fixture
def records(sqlite_runtime: Runtime, hospital: Hospital, movable_clock: clock.MovableClock) -> None:
    doctor = Gate(sqlite_runtime, staff_actor(hospital.physician, Role.PHYSICIAN))
    pid = hospital.my_patient
    doctor.record_allergy(
        data=AllergyInput(
            patient_id=pid, substance_code="J01C", substance_display="Pénicillines", criticality="high"
        )
    )
    rx = doctor.prescribe(
        data=PrescriptionInput(
            patient_id=pid,
            medication_code="C10AA05",
            medication_display="Atorvastatine 20 mg",
            substance_code="C10AA05",
            dosage_text="1 comprimé le soir",
        )
    )
    assert rx.id is not None and rx.version_id is not None
    doctor.stop_prescription(prescription_id=rx.id, expected_version=rx.version_id, reason="Myalgies")
    desk = Gate(sqlite_runtime, staff_actor(hospital.front_desk, Role.FRONT_DESK))
    start = (clock.now() + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    assert hospital.physician.practitioner_id is not None
    desk.book_appointment(
        data=AppointmentInput(
            patient_id=pid,
            practitioner_id=str(hospital.physician.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
            reason="Suivi",
        )
    )


def _pages(client: TestClient, person: Person, role: Role, paths: list[str], hospital: Hospital) -> list[str]:
    login(client, person)
    problems: list[str] = []
    sections = [f"/patients/{hospital.my_patient}/sections/{s}" for s in SECTIONS.get(role, ())]
    for path in paths + sections:
        page = client.get(path, headers=FRENCH | ({"HX-Request": "true"} if "/sections/" in path else {}))
        assert page.status_code == 200, (path, page.status_code)
        assert 'lang="fr"' in page.text or "/sections/" in path
        problems += [f"{path}: {p}" for p in untranslated(page.text, DATA)]
    client.post("/logout", headers=FRENCH)
    client.cookies.clear()
    return problems


# Data the tests typed: names, reasons, the facility (not interface strings).
DATA = {"Pénicillines", "Atorvastatine 20 mg", "Suivi", "Myalgies", "1 comprimé le soir", "Hôpital Test"}


def test_main_pages_in_french_have_no_english_left(
    client: TestClient, hospital: Hospital, records: None, movable_clock: clock.MovableClock
) -> None:
    problems = _pages(
        client,
        hospital.physician,
        Role.PHYSICIAN,
        ["/day", "/patients", f"/patients/{hospital.my_patient}", "/account"],
        hospital,
    )
    movable_clock.advance(dt.timedelta(seconds=31))
    problems += _pages(
        client,
        hospital.front_desk,
        Role.FRONT_DESK,
        ["/desk", "/desk/schedule", f"/patients/{hospital.my_patient}"],
        hospital,
    )
    movable_clock.advance(dt.timedelta(seconds=31))
    problems += _pages(
        client, hospital.patient_person, Role.PATIENT, ["/portal", "/portal/access-log"], hospital
    )
    assert problems == [], "\n".join(problems)
    assert client.get("/login", headers=FRENCH).status_code == 200
    assert untranslated(client.get("/login", headers=FRENCH).text, set()) == []


def test_security_console_and_timeline_in_french(
    client: TestClient, hospital: Hospital, records: None, sqlite_runtime: Runtime
) -> None:
    officer = make_person(
        sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    # The physician's actions (and a refusal) make the timeline the officer reads.
    login(client, hospital.physician)
    assert client.get(f"/patients/{hospital.their_patient}").status_code == 404
    client.cookies.clear()
    open_session_for(client, sqlite_runtime, officer)
    problems: list[str] = []
    ref = f"account:{hospital.physician.account_id}"
    for path, params in (
        ("/security", {}),
        ("/security/timeline", {"actor_ref": ref}),
        ("/security/audit", {}),
    ):
        page = client.get(path, params=params, headers=FRENCH)
        assert page.status_code == 200, (path, page.text)
        problems += [f"{path}: {p}" for p in untranslated(page.text, DATA)]
    assert problems == [], "\n".join(problems)
    timeline = client.get("/security/timeline", params={"actor_ref": ref}, headers=FRENCH).text
    assert "a ouvert un dossier patient" in timeline or "a listé des dossiers patients" in timeline
