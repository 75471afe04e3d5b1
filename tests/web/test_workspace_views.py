"""The day's work per role: the front desk's arrivals and check-in, the calendar grid with free
slots, the billing worklist, the nurse's ward board, and the chart's stay and allergy forms.

Each page: the right role sees it, the wrong role is refused (403) and audited, what it shows
is counted as exposed, and bad input gets a form message and changes nothing. Times are the
Paris wall clock; the clock is pinned (a Tuesday morning in winter, UTC+1)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.billing.models import Invoice, Payment
from carnet.detection.models import Alert, Exposure
from carnet.kernel import clock, localtime
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput
from carnet.records.models import Allergy
from carnet.runtime import Runtime
from carnet.scheduling import slots
from carnet.scheduling.models import Appointment, Encounter
from tests import factories
from tests.web.conftest import Hospital, Person, login, make_person

MORNING = dt.datetime(2026, 12, 8, 8, 30, tzinfo=dt.UTC)  # Tuesday 09:30 in Paris


@dataclass
class Work:
    nurse: Person
    billing: Person
    ward: uuid.UUID
    other_ward: uuid.UUID
    inpatient: str  # in the nurse's ward
    elsewhere: str  # in another ward
    invoice: uuid.UUID


def _paris(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return localtime.at(day, dt.time(hour, minute))


def _book(
    runtime: Runtime,
    hospital: Hospital,
    start: dt.datetime,
    patient: str,
    practitioner: uuid.UUID | None = None,
) -> str:
    clerk = factories.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id)
    return (
        Gate(runtime, clerk)
        .book_appointment(
            data=AppointmentInput(
                patient_id=patient,
                practitioner_id=str(practitioner or hospital.physician.practitioner_id),
                start_at=start,
                end_at=start + dt.timedelta(minutes=20),
                reason="douleur thoracique",  # clinical: never on the desk's lists
            )
        )
        .id
    )


def _events(runtime: Runtime, kind: AuditKind, outcome: str) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.kind == kind.value, AuditEvent.outcome == outcome)
            )
        )


def _exposed(runtime: Runtime, person: Person, channel: str = "list") -> set[str]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(Exposure).where(
                Exposure.actor_ref == f"account:{person.account_id}", Exposure.channel == channel
            )
        )
        return {str(r.patient_id) for r in rows}


def _refused(
    client: TestClient, runtime: Runtime, url: str, kind: AuditKind, method: str = "get", **kw: object
) -> None:
    before = len(_events(runtime, kind, "denied"))
    response = client.get(url) if method == "get" else client.post(url, **kw)
    assert response.status_code == 403, response.text
    assert len(_events(runtime, kind, "denied")) == before + 1


@pytest.fixture
def work(sqlite_runtime: Runtime, hospital: Hospital, movable_clock: clock.MovableClock) -> Work:
    movable_clock.set(MORNING)
    runtime = sqlite_runtime
    ward = factories.make_location(runtime, hospital.facility_id)
    other_ward = factories.make_location(runtime, hospital.facility_id)
    nurse_id = factories.make_practitioner(runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        runtime, "nurse.ines", roles=(Role.NURSE,), facility_id=hospital.facility_id, practitioner_id=nurse_id
    )
    factories.assign_ward(
        runtime, practitioner_id=nurse_id, location_id=ward, facility_id=hospital.facility_id
    )
    billing = make_person(runtime, "billing.bob", roles=(Role.BILLING,), facility_id=hospital.facility_id)
    inpatient = factories.register_patient(runtime, hospital.facility_id, family="Lefebvre", given="Odile")
    elsewhere = factories.register_patient(runtime, hospital.facility_id, family="Garnier", given="Yves")
    factories.admit(
        runtime,
        patient_id=inpatient.id,
        facility_id=hospital.facility_id,
        location_id=ward,
        attending_id=hospital.physician.practitioner_id,
    )
    factories.admit(
        runtime, patient_id=elsewhere.id, facility_id=hospital.facility_id, location_id=other_ward
    )
    invoice = factories.make_invoice(
        runtime, patient_id=hospital.their_patient, facility_id=hospital.facility_id
    )
    return Work(nurse, billing, ward, other_ward, inpatient.id, elsewhere.id, invoice)


# -- arrivals and check-in ----------------------------------------------------------------------
def test_arrivals_list_today_and_check_in(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    today = localtime.local_day(clock.now())
    due = _book(sqlite_runtime, hospital, _paris(today, 10, 0), hospital.my_patient)
    _book(sqlite_runtime, hospital, _paris(today + dt.timedelta(days=1), 10, 0), hospital.their_patient)
    csrf = login(client, hospital.front_desk)
    page = client.get("/desk/arrivals")
    assert page.status_code == 200, page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the name, as text
    assert "10:00" in page.text  # Paris time (09:00 UTC)
    assert "Durand" not in page.text  # tomorrow's patient is not on today's list
    assert "douleur" not in page.text  # never why
    assert _exposed(sqlite_runtime, hospital.front_desk) == {hospital.my_patient}
    with sqlite_runtime.session_factory() as session:
        version = session.get(Appointment, uuid.UUID(due)).version_id  # type: ignore[union-attr]
    done = client.post(
        f"/desk/arrivals/{due}/check-in", data={"csrf_token": csrf, "expected_version": version}
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/desk/arrivals")
    with sqlite_runtime.session_factory() as session:
        assert session.get(Appointment, uuid.UUID(due)).status == "arrived"  # type: ignore[union-attr]
    # Twice (a stale form): a message, nothing changes.
    again = client.post(
        f"/desk/arrivals/{due}/check-in", data={"csrf_token": csrf, "expected_version": version}
    )
    assert again.status_code == 409 and "Nothing was changed" in again.text
    # Without the page's token: refused.
    forged = client.post(f"/desk/arrivals/{due}/check-in", data={"expected_version": version + 1})
    assert forged.status_code == 403
    bad = client.get("/desk/arrivals", params={"start": "25:99"})
    assert bad.status_code == 400 and "HH:MM" in bad.text


def test_arrivals_refused_to_other_roles_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    _refused(client, sqlite_runtime, "/desk/arrivals", AuditKind.PHI_LIST)
    csrf = login(client, work.billing)
    _refused(
        client,
        sqlite_runtime,
        f"/desk/arrivals/{uuid.uuid4()}/check-in",
        AuditKind.PHI_UPDATE,
        method="post",
        data={"csrf_token": csrf, "expected_version": 1},
    )


def test_a_normal_morning_at_the_desk_is_not_stepped_up(
    client: TestClient,
    hospital: Hospital,
    work: Work,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    """Detection on: 36 patients booked from 08:00 to 12:00 with three physicians, the desk
    reloads its list and checks each patient in as they come. No step-up, no alert."""
    today = localtime.local_day(clock.now())
    doctors = [hospital.physician.practitioner_id, hospital.other_physician.practitioner_id]
    doctors.append(factories.make_practitioner(sqlite_runtime, hospital.facility_id))
    booked: list[tuple[dt.datetime, str]] = []
    for n in range(12):
        for d, doctor in enumerate(doctors):
            patient = factories.register_patient(sqlite_runtime, hospital.facility_id, family=f"Matin{n}x{d}")
            start = _paris(today, 8) + dt.timedelta(minutes=20 * n)
            booked.append((start, _book(sqlite_runtime, hospital, start, patient.id, doctor)))
    movable_clock.set(_paris(today, 7, 50))
    csrf = login(client, hospital.front_desk)
    for start, appointment in sorted(booked):
        movable_clock.set(start - dt.timedelta(minutes=5))
        page = client.get("/desk/arrivals")
        assert page.status_code == 200, page.text
        with sqlite_runtime.session_factory() as session:
            version = session.get(Appointment, uuid.UUID(appointment)).version_id  # type: ignore[union-attr]
        done = client.post(
            f"/desk/arrivals/{appointment}/check-in", data={"csrf_token": csrf, "expected_version": version}
        )
        assert done.status_code == 303, done.text
    with sqlite_runtime.session_factory() as session:
        alerts = session.scalars(
            select(Alert).where(Alert.account_id == hospital.front_desk.account_id)
        ).all()
        arrived = session.scalars(select(Appointment).where(Appointment.status == "arrived")).all()
    assert [a.sentence for a in alerts] == []
    assert len(arrived) == len(booked)


def test_arrivals_and_day_list_follow_the_paris_day_around_midnight(
    client: TestClient,
    hospital: Hospital,
    work: Work,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    # 23:30 UTC on Tuesday 8 is 00:30 on Wednesday 9 in Paris.
    wednesday = dt.date(2026, 12, 9)
    late = _book(sqlite_runtime, hospital, _paris(dt.date(2026, 12, 8), 23, 0), hospital.their_patient)
    early = _book(sqlite_runtime, hospital, _paris(wednesday, 0, 40), hospital.my_patient)
    assert late and early
    movable_clock.set(dt.datetime(2026, 12, 8, 23, 30, tzinfo=dt.UTC))
    login(client, hospital.physician)
    day = client.get("/day")
    assert day.status_code == 200
    assert "9 Dec 2026" in day.text or "Wednesday" in day.text
    assert "00:40" in day.text  # Wednesday's first appointment, in Paris time
    assert "23:00" not in day.text  # Tuesday's last one is yesterday's
    login(client, hospital.front_desk)
    arrivals = client.get("/desk/arrivals")
    assert arrivals.status_code == 200
    assert "00:40" in arrivals.text and "Durand" not in arrivals.text


# -- the calendar grid --------------------------------------------------------------------------
def test_calendar_grid_free_slots_and_booking_with_a_reason(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    today = localtime.local_day(clock.now())
    taken = _paris(today, 11, 0)
    _book(sqlite_runtime, hospital, taken, hospital.their_patient)
    csrf = login(client, hospital.front_desk)
    doctor = str(hospital.physician.practitioner_id)
    grid = client.get("/desk/calendar", params={"practitioner": doctor})
    assert grid.status_code == 200, grid.text
    assert "Durand" not in grid.text and "douleur" not in grid.text  # when, never who or why
    assert "Free" in grid.text and "Who is this?" in grid.text
    # Pick the patient, then a free slot: the booking form asks why.
    found = client.post(
        "/desk/calendar/lookup", data={"csrf_token": csrf, "ins": "180022912345678", "practitioner": doctor}
    )
    assert found.status_code == 303
    slot = _paris(today, 14, 0)
    chosen = client.get(found.headers["location"] + "&slot=" + quote(slot.isoformat()))
    assert chosen.status_code == 200 and 'name="reason"' in chosen.text and "14:00" in chosen.text
    form = {"csrf_token": csrf, "patient_id": hospital.my_patient, "practitioner_id": doctor, "minutes": "20"}
    no_reason = client.post("/desk/calendar/book", data={**form, "start_at": slot.isoformat(), "reason": " "})
    assert no_reason.status_code == 400 and "reason for the visit" in no_reason.text
    booked = client.post(
        "/desk/calendar/book", data={**form, "start_at": slot.isoformat(), "reason": "suivi"}
    )
    assert booked.status_code == 303, booked.text
    # The double-booking rule holds from the grid too.
    double = client.post(
        "/desk/calendar/book", data={**form, "start_at": taken.isoformat(), "reason": "suivi"}
    )
    assert double.status_code == 409 and "already booked" in double.text
    with sqlite_runtime.session_factory() as session:
        rows = session.scalars(
            select(Appointment).where(Appointment.patient_id == uuid.UUID(hospital.my_patient))
        ).all()
    assert [(r.start_at.replace(tzinfo=dt.UTC), r.status) for r in rows] == [(slot, "booked")]
    bad = client.post("/desk/calendar/book", data={**form, "start_at": "tomorrow", "reason": "suivi"})
    assert bad.status_code == 400 and "Nothing was changed" in bad.text


def test_calendar_grid_cells_count_free_and_booked_slots(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    """Each cell of the grid counts the day's booked slots and the free ones not yet begun."""
    today = localtime.local_day(clock.now())
    tomorrow = today + dt.timedelta(days=1)
    day = tomorrow if tomorrow.weekday() < 5 else tomorrow + dt.timedelta(days=7 - tomorrow.weekday())
    doctor = str(hospital.physician.practitioner_id)
    for hour in (9, 10):
        _book(sqlite_runtime, hospital, _paris(day, hour, 0), hospital.their_patient)
    login(client, hospital.front_desk)
    grid = client.get("/desk/calendar", params={"day": day.isoformat(), "practitioner": doctor})
    assert grid.status_code == 200, grid.text
    with sqlite_runtime.session_factory() as session:
        start, end = localtime.day_bounds(day)
        busy = [
            (a.start_at.replace(tzinfo=dt.UTC), a.end_at.replace(tzinfo=dt.UTC))
            for a in session.scalars(
                select(Appointment).where(
                    Appointment.practitioner_id == uuid.UUID(doctor),
                    Appointment.start_at >= start,
                    Appointment.start_at < end,
                    Appointment.status == "booked",
                )
            )
        ]
    assert len(busy) >= 2
    cell = slots.day_slots(day, busy, now=clock.now())
    free = sum(1 for s in cell if s.free and not s.past)
    booked = sum(1 for s in cell if not s.free)
    assert booked >= 2
    shown = re.search(
        rf"day={day.isoformat()}&amp;practitioner={doctor}[^\"]*#week-h\">(\d+) free</a><br>"
        rf"<span class=\"muted\">(\d+) booked",
        grid.text,
    )
    assert shown is not None, grid.text
    assert (int(shown.group(1)), int(shown.group(2))) == (free, booked)


def test_calendar_grid_refused_to_billing_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    login(client, work.billing)
    _refused(client, sqlite_runtime, "/desk/calendar", AuditKind.PHI_LIST)


# -- billing worklist ---------------------------------------------------------------------------
def test_billing_worklist_shows_unpaid_invoices_and_takes_payments(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, work.billing)
    page = client.get("/billing/worklist")
    assert page.status_code == 200, page.text
    assert "Durand" in page.text and "Consultation" in page.text and "120.00" in page.text
    assert "Lefebvre" not in page.text  # no invoice, not on the list
    assert _exposed(sqlite_runtime, work.billing) == {hospital.their_patient}
    # The amount due prefilled as a French clerk writes it (the form reads the comma back).
    client.cookies.set("carnet_lang", "fr")
    assert 'value="120,00"' in client.get("/billing/worklist").text
    client.cookies.set("carnet_lang", "en")
    form = {"csrf_token": csrf, "expected_version": 1, "method": "card", "page": 1}
    bad = client.post(f"/billing/worklist/{work.invoice}/payments", data={**form, "amount": "douze"})
    assert bad.status_code == 400 and "number of euros" in bad.text
    too_much = client.post(f"/billing/worklist/{work.invoice}/payments", data={**form, "amount": "500"})
    assert too_much.status_code == 400 and "Nothing was changed" in too_much.text
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(Payment)).all() == []
    paid = client.post(f"/billing/worklist/{work.invoice}/payments", data={**form, "amount": "120,00"})
    assert paid.status_code == 303, paid.text
    with sqlite_runtime.session_factory() as session:
        assert session.get(Invoice, work.invoice).status == "balanced"  # type: ignore[union-attr]
    after = client.get("/billing/worklist?done=paid")
    assert "Durand" not in after.text and "No unpaid invoice" in after.text


def test_billing_worklist_reads_lines_and_payments_together(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    """A page of five invoices sends no more statements than a page of one: the lines and
    payments of the invoices shown are read in one statement each, not two per invoice."""
    login(client, work.billing)

    def statements() -> tuple[int, str]:
        sent: list[str] = []

        def count(*args: object) -> None:
            sent.append("")

        sa.event.listen(sqlite_runtime.engine, "before_cursor_execute", count)
        try:
            page = client.get("/billing/worklist")
        finally:
            sa.event.remove(sqlite_runtime.engine, "before_cursor_execute", count)
        assert page.status_code == 200, page.text
        return len(sent), page.text

    statements()  # the session's first page also fills per-process caches
    one, _ = statements()
    for cents in (1_000, 2_000, 3_000, 4_000):
        factories.make_invoice(
            sqlite_runtime,
            patient_id=hospital.their_patient,
            facility_id=hospital.facility_id,
            total_cents=cents,
        )
    five, shown = statements()
    assert all(f"{euros}.00" in shown for euros in (10, 20, 30, 40, 120))  # each with its line
    # Two statements per invoice would add 8; a per-process cache refreshed meanwhile may add
    # or spare one.
    assert five <= one + 1


def test_billing_worklist_refused_to_other_roles_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.front_desk)
    _refused(client, sqlite_runtime, "/billing/worklist", AuditKind.PHI_LIST)
    csrf = login(client, hospital.physician)
    _refused(
        client,
        sqlite_runtime,
        f"/billing/worklist/{work.invoice}/payments",
        AuditKind.PHI_UPDATE,
        method="post",
        data={"csrf_token": csrf, "expected_version": 1, "amount": "1", "method": "card"},
    )


# -- ward board ---------------------------------------------------------------------------------
def test_ward_board_shows_the_nurses_ward_only(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    login(client, work.nurse)
    page = client.get("/ward")
    assert page.status_code == 200, page.text
    assert "Lefebvre" in page.text and "Garnier" not in page.text
    assert _exposed(sqlite_runtime, work.nurse) == {work.inpatient}


def test_ward_board_refused_to_other_roles_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    _refused(client, sqlite_runtime, "/ward", AuditKind.PHI_LIST)
    login(client, hospital.front_desk)
    _refused(client, sqlite_runtime, "/ward", AuditKind.PHI_LIST)


# -- chart forms: stays and allergies -----------------------------------------------------------
def _stays(runtime: Runtime, patient: str) -> list[Encounter]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(Encounter).where(Encounter.patient_id == uuid.UUID(patient))))


def test_admit_transfer_discharge_from_the_chart(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    chart = client.get(f"/patients/{hospital.my_patient}/sections/stays", headers={"HX-Request": "true"})
    assert chart.status_code == 200 and "Admit the patient" in chart.text
    no_ward = client.post(
        f"/patients/{hospital.my_patient}/stays", data={"csrf_token": csrf, "kind": "inpatient"}
    )
    assert no_ward.status_code == 400 and "needs its ward" in no_ward.text
    assert _stays(sqlite_runtime, hospital.my_patient) == []
    admitted = client.post(
        f"/patients/{hospital.my_patient}/stays",
        data={"csrf_token": csrf, "kind": "inpatient", "location_id": str(work.ward)},
    )
    assert admitted.status_code == 303, admitted.text
    twice = client.post(
        f"/patients/{hospital.my_patient}/stays",
        data={"csrf_token": csrf, "kind": "inpatient", "location_id": str(work.ward)},
    )
    assert twice.status_code == 409 and "already has a stay in progress" in twice.text
    (stay,) = _stays(sqlite_runtime, hospital.my_patient)
    moved = client.post(
        f"/patients/{hospital.my_patient}/stays/{stay.id}/transfer",
        data={"csrf_token": csrf, "expected_version": stay.version_id, "location_id": str(work.other_ward)},
    )
    assert moved.status_code == 303, moved.text
    (stay,) = _stays(sqlite_runtime, hospital.my_patient)
    assert stay.location_id == work.other_ward
    future = (clock.now() + dt.timedelta(days=2)).astimezone(localtime.ZONE).strftime("%Y-%m-%dT%H:%M")
    bad = client.post(
        f"/patients/{hospital.my_patient}/stays/{stay.id}/discharge",
        data={"csrf_token": csrf, "expected_version": stay.version_id, "end_at": future},
    )
    assert bad.status_code == 400 and "not in the future" in bad.text
    assert _stays(sqlite_runtime, hospital.my_patient)[0].status == "in-progress"
    out = client.post(
        f"/patients/{hospital.my_patient}/stays/{stay.id}/discharge",
        data={"csrf_token": csrf, "expected_version": stay.version_id},
    )
    assert out.status_code == 303, out.text
    assert _stays(sqlite_runtime, hospital.my_patient)[0].status == "finished"


def test_stay_forms_refused_to_the_front_desk_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.front_desk)
    _refused(
        client,
        sqlite_runtime,
        f"/patients/{hospital.my_patient}/stays",
        AuditKind.PHI_CREATE,
        method="post",
        data={"csrf_token": csrf, "kind": "inpatient", "location_id": str(work.ward)},
    )
    assert _stays(sqlite_runtime, hospital.my_patient) == []


def _allergies(runtime: Runtime, patient: str) -> list[tuple[str, str, str]]:
    with runtime.session_factory() as session:
        rows = session.scalars(select(Allergy).where(Allergy.patient_id == uuid.UUID(patient)))
        return [(a.substance_code, a.substance_display, a.criticality) for a in rows]


def test_allergy_entry_coded_from_the_catalogue(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    url = f"/patients/{hospital.my_patient}/allergies"
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert "Record an allergy" in chart.text and "penicillins — J01C" in chart.text
    bad = client.post(url, data={"csrf_token": csrf, "substance": "zzz", "criticality": "high"})
    assert bad.status_code == 400 and "pick the substance from the list" in bad.text
    assert 'value="zzz"' in bad.text  # what was typed is kept
    wrong = client.post(
        url, data={"csrf_token": csrf, "substance": "penicillins — J01C", "criticality": "deadly"}
    )
    assert wrong.status_code == 400 and "criticality" in wrong.text
    assert _allergies(sqlite_runtime, hospital.my_patient) == []
    picked = client.post(
        url,
        data={
            "csrf_token": csrf,
            "substance": "penicillins — J01C",
            "criticality": "high",
            "reaction": "Urticaire",
        },
    )
    assert picked.status_code == 303, picked.text
    shown = client.get(f"/patients/{hospital.my_patient}")
    assert "Urticaire" in shown.text  # the reaction, decrypted for the physician
    with sqlite_runtime.session_factory() as session:
        stored = session.scalars(select(Allergy.reaction_ct)).one()
    assert stored is not None and b"Urticaire" not in stored  # encrypted at rest
    typed = client.post(
        url,
        data={"csrf_token": csrf, "description": "Allergie à l'aspirine (urticaire)", "criticality": "low"},
    )
    assert typed.status_code == 303, typed.text
    codes = sorted(c for c, _d, _k in _allergies(sqlite_runtime, hospital.my_patient))
    assert codes[0] == "J01C" and codes[1].startswith("N02BA")


def test_allergy_entry_refused_to_billing_and_audited(
    client: TestClient, hospital: Hospital, work: Work, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, work.billing)
    _refused(
        client,
        sqlite_runtime,
        f"/patients/{hospital.my_patient}/allergies",
        AuditKind.PHI_CREATE,
        method="post",
        data={"csrf_token": csrf, "substance": "penicillins — J01C", "criticality": "high"},
    )


# -- in French ----------------------------------------------------------------------------------
def test_the_days_work_pages_in_french_have_no_english_left(
    client: TestClient,
    hospital: Hospital,
    work: Work,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    from tests.web.test_french_pages import FRENCH, untranslated

    today = localtime.local_day(clock.now())
    _book(sqlite_runtime, hospital, _paris(today, 10, 0), hospital.my_patient)
    doctor = str(hospital.physician.practitioner_id)
    data = {
        "Hôpital Test",
        "Lefebvre, Odile",
        "Durand, Paul",
        "Consultation",
        "CS",
        "billing.bob",
        "nurse.ines",
    }
    problems: list[str] = []
    for person, paths in (
        (hospital.front_desk, ["/desk/arrivals", f"/desk/calendar?practitioner={doctor}"]),
        (work.billing, ["/billing/worklist"]),
        (work.nurse, ["/ward"]),
        (hospital.physician, [f"/patients/{hospital.my_patient}/sections/stays"]),
    ):
        login(client, person)
        for path in paths:
            page = client.get(path, headers=FRENCH)
            assert page.status_code == 200, (path, page.text[page.text.find("<main") :][:1500])
            problems += [f"{path}: {p}" for p in untranslated(page.text, data)]
        client.cookies.clear()
        # Four accounts on one machine within 15 minutes would be a campaign (detection).
        movable_clock.advance(dt.timedelta(minutes=16))
    assert problems == [], "\n".join(problems)
