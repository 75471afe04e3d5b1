"""Form errors in French: every message a form can show when it changes nothing is French on a
French page. The messages the domain and the pages raise (bad input, a state that forbids the
change) are read from the source and each must have its French sentence; then the forms of the
day's work and the chart are sent bad input in French and their error shows no English."""

from __future__ import annotations

import ast
import datetime as dt
import re
import uuid
from html.parser import HTMLParser
from pathlib import Path

from fastapi.testclient import TestClient

import carnet
from carnet.kernel import clock, localtime
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from carnet.web.messages import french
from tests.web.conftest import Hospital, login
from tests.web.test_french_pages import FRENCH
from tests.web.test_workspace_views import Work, _book, _paris, work  # noqa: F401 (the fixture)

ROOT = Path(carnet.__file__).parent
# Where the messages of the staff forms come from: the pages and the domain operations they call.
FORM_SOURCES = [
    *sorted((ROOT / "web").glob("*.py")),
    ROOT / "scheduling/operations.py",
    ROOT / "scheduling/rules.py",
    ROOT / "records/stays.py",
    ROOT / "records/beds.py",
    ROOT / "records/orders.py",
    ROOT / "prescriptions/operations.py",
    ROOT / "interventions/administering.py",
    ROOT / "billing/operations.py",
    ROOT / "patients/merge.py",
]
RAISED = {"InvalidInput", "Conflict", "again"}
# Pure rules that return their refusal (the operation raises it): their returned sentences.
RETURNED = {ROOT / "records/beds.py"}  # again: a page shown again with its problem
SAMPLES = {"name": "the start", "what": "stopping"}
# English words no French sentence of ours contains.
ENGLISH = re.compile(
    r"\b(the|an|is|are|must|needs?|only|this|that|with|from|for|and|or|at|most|choose|check|"
    r"already|cannot|can|be|its|their|of|to|in|unknown|time|reason|record|invoice|stay|"
    r"appointment|payment|amount|field|fields|again|nothing|change)\b",
    re.IGNORECASE,
)


def _text(node: ast.expr) -> str | None:
    """A message as written: a string, or an f-string with each value as a sample ("7")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:  # a name or a number: what a value of a message stands for
                name = value.value.id if isinstance(value.value, ast.Name) else ""
                parts.append(SAMPLES.get(name, "7"))
        return "".join(parts)
    return None


def form_messages() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in FORM_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RAISED
            ):
                continue
            if node.args and (text := _text(node.args[0])) is not None:
                found[text] = f"{path.relative_to(ROOT)}:{node.lineno}"
        if path in RETURNED:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Return) and node.value is not None:
                    text = _text(node.value)
                    if text is not None and " " in text:
                        found[text] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_form_message_has_its_french_sentence() -> None:
    messages = form_messages()
    assert len(messages) > 40  # the collector finds them (a change of style would hide them)
    missing = [
        f"{where}: {text!r} -> {french(text)!r}"
        for text, where in sorted(messages.items(), key=lambda kv: kv[1])
        if ENGLISH.search(french(text))
    ]
    assert missing == [], "\n".join(missing)


class _Errors(HTMLParser):
    """The text of every form error (`<p class="error">`) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth:
            self._depth += 1
        elif tag == "p" and "error" in (dict(attrs).get("class") or "").split():
            self._depth = 1
            self.errors.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.errors[-1] += data


def _errors(html: str) -> list[str]:
    parser = _Errors()
    parser.feed(html)
    return [" ".join(e.split()) for e in parser.errors]


def test_the_forms_say_what_is_wrong_in_french(
    client: TestClient,
    hospital: Hospital,
    work: Work,  # noqa: F811 (the fixture)
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    today = localtime.local_day(clock.now())
    due = _book(sqlite_runtime, hospital, _paris(today, 10, 0), hospital.my_patient)
    taken = _paris(today, 11, 0)
    _book(sqlite_runtime, hospital, taken, hospital.their_patient)
    doctor = str(hospital.physician.practitioner_id)
    shown: list[tuple[str, str]] = []

    def keep(what: str, response: object) -> None:
        assert getattr(response, "status_code", 0) in (400, 404, 409), (what, getattr(response, "text", ""))
        errors = _errors(getattr(response, "text", ""))
        assert errors, (what, getattr(response, "text", "")[:2000])
        shown.extend((what, e) for e in errors)

    csrf = login(client, hospital.front_desk)
    keep("arrivals window", client.get("/desk/arrivals", params={"start": "25:99"}, headers=FRENCH))
    with sqlite_runtime.session_factory() as session:
        version = session.get(Appointment, uuid.UUID(due)).version_id  # type: ignore[union-attr]
    checked = {"csrf_token": csrf, "expected_version": version}
    assert client.post(f"/desk/arrivals/{due}/check-in", data=checked).status_code == 303
    keep("check-in twice", client.post(f"/desk/arrivals/{due}/check-in", data=checked, headers=FRENCH))
    form = {"csrf_token": csrf, "patient_id": hospital.my_patient, "practitioner_id": doctor, "minutes": "20"}
    keep(
        "booking a taken slot",
        client.post(
            "/desk/calendar/book",
            data={**form, "start_at": taken.isoformat(), "reason": "suivi"},
            headers=FRENCH,
        ),
    )
    keep(
        "booking at no time",
        client.post(
            "/desk/calendar/book", data={**form, "start_at": "demain", "reason": "suivi"}, headers=FRENCH
        ),
    )
    client.cookies.clear()
    movable_clock.advance(dt.timedelta(minutes=16))

    csrf = login(client, work.billing)
    pay = {"csrf_token": csrf, "expected_version": 1, "method": "card", "page": 1}
    url = f"/billing/worklist/{work.invoice}/payments"
    keep("a payment in words", client.post(url, data={**pay, "amount": "douze"}, headers=FRENCH))
    keep("a payment above what is due", client.post(url, data={**pay, "amount": "500"}, headers=FRENCH))
    client.cookies.clear()
    movable_clock.advance(dt.timedelta(minutes=16))

    csrf = login(client, hospital.physician)
    stays = f"/patients/{hospital.my_patient}/stays"
    keep(
        "an admission with no ward",
        client.post(stays, data={"csrf_token": csrf, "kind": "inpatient"}, headers=FRENCH),
    )
    allergies = f"/patients/{hospital.my_patient}/allergies"
    keep(
        "an allergy not in the catalogue",
        client.post(
            allergies, data={"csrf_token": csrf, "substance": "zzz", "criticality": "high"}, headers=FRENCH
        ),
    )
    keep(
        "an allergy of no known criticality",
        client.post(
            allergies,
            data={"csrf_token": csrf, "substance": "penicillins — J01C", "criticality": "deadly"},
            headers=FRENCH,
        ),
    )
    english = [f"{what}: {text!r}" for what, text in shown if ENGLISH.search(text)]
    assert english == [], "\n".join(english)
    assert any("Rien n'a été modifié" in text for _w, text in shown), shown
