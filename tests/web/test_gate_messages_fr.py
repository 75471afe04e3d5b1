"""Refusals, step-up prompts, containment notices and detection alerts in French pages.

Every sentence a detection rule can write is rewritten in French (the rules are run over a grid
of counts for each kind of actor); the pages that show them (step-up, containment, refusal, the
security console) have no English left for a French reader."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.detection import rules
from carnet.detection.config import DetectionConfig
from carnet.detection.containment import contained_message
from carnet.detection.interfaces import ActorCounts, Channel
from carnet.kernel import clock
from carnet.runtime import Runtime
from carnet.web.messages import french
from tests.detection.helpers import expose, new_patients
from tests.web.conftest import Hospital, login, make_person, open_session_for
from tests.web.test_browser import staff_actor
from tests.web.test_french_pages import DATA, FRENCH, untranslated

# English words that no French sentence of ours contains (names and numbers aside).
ENGLISH = re.compile(
    r"\b(was|were|shown|the|their|usual|asked|times|who|last|hours?|outside|ran|looked|opened|tried|"
    r"refused|kept|reached|exported|which|is|has|and|yet|of|with|from|by|for|account|sweep|confirm|"
    r"identity|different|searches|data)\b"
)


def _actors() -> list[Actor]:
    base = Actor(kind=ActorKind.STAFF, username="alice", roles=frozenset(), account_id=uuid.uuid4())
    staff = [
        dataclasses.replace(base, roles=frozenset({role}))
        for role in (Role.PHYSICIAN, Role.NURSE, Role.FRONT_DESK, Role.BILLING, Role.SYSTEM_ADMINISTRATOR)
    ]
    client = Actor(kind=ActorKind.CLIENT, username="lab", roles=frozenset({Role.API_CLIENT}), client_id="lab")
    patient = Actor(
        kind=ActorKind.PATIENT, username="zoe", roles=frozenset({Role.PATIENT}), account_id=uuid.uuid4()
    )
    return [*staff, client, patient]


def every_finding_sentence() -> set[str]:
    config = DetectionConfig()
    night = dt.datetime(2026, 12, 8, 2, 30, tzinfo=dt.UTC)
    day = dt.datetime(2026, 12, 8, 10, 30, tzinfo=dt.UTC)
    sentences: set[str] = set()
    for actor, n, at, denial in itertools.product(_actors(), (1, 30, 500, 5000), (day, night), (False, True)):
        asked = at - dt.timedelta(minutes=20)
        counts = ActorCounts(
            patients_15m=n,
            patients_1h=n,
            patients_24h=n * 2,
            outside_1h=n,
            outside_24h=n * 2,
            exported_24h=n * 10,
            patients_7d=n * 20,
            searches_15m=n,
            searches_1h=n * 2,
            identifier_searches_15m=n,
            wildcard_searches_1h=n,
            deep_pages_1h=n,
            lists_15m=n,
            denials_15m=n,
            denials_24h=n * 2,
            export_denials_1h=n,
            refusals_1h=n if n < 100 else 1,
            refusals_24h=n * 2,
            first_refusal_at=asked,
            first_refusal_24h_at=asked,
        )
        for channel in (Channel.CHART, Channel.EXPORT):
            ctx = rules.Context(
                actor=dataclasses.replace(actor, address="10.1.2.3"),
                counts=counts,
                at=at,
                channel=channel,
                canaries=[uuid.uuid4()] * (1 if n == 1 else 2),
                new_address=True,
                denial=denial,
                work_known=True,
                probation=n == 30,
                account_baseline=rules.Baseline(m15=3, h1=10, h24=40, off_hours_share=0.0)
                if n == 500
                else None,
            )
            sentences |= {f.sentence for f in rules.evaluate(config, ctx)}
    return sentences


def test_every_detection_sentence_reads_in_french() -> None:
    sentences = every_finding_sentence()
    assert len(sentences) > 40  # the grid reaches every rule, in its several wordings
    left = {s: french(s) for s in sentences if ENGLISH.search(french(s))}
    assert left == {}, "\n".join(f"{k}\n  -> {v}" for k, v in left.items())


def test_wrapped_messages_read_in_french() -> None:
    finding = (
        "alice was shown 41 different patients in the last 15 minutes, 1.0 times the level at which "
        "a nurse is asked to confirm their identity (40)."
    )
    for message in (
        f"Confirm your identity with your second factor to continue: {finding}",
        f"Slowed down: {finding} Try again in a few minutes.",
        contained_message(f"{finding} {finding}", "the hospital security office"),
        f"this account is suspended ({finding}). Call the hospital security office to restore it.",
        "this account may not do this",
        "no such resource",
        "this prescription is stopped: only an active prescription is printed",
        # carnet.detection.ledger, a campaign's mark on the sessions it used
        "alice reaches patient data from a machine that several accounts used in a campaign today: "
        "4 different accounts reached patient data from one machine (the same network address and client) "
        "within 15 minutes: sessions of others used together. Each session signed in before this is asked "
        "for a fresh second factor.",
        "alice is among accounts used together in a campaign: 3 accounts behaved abnormally within 60 "
        "minutes, sharing a network address or client: one campaign. 3 accounts are contained.",
    ):
        translated = french(message)
        assert not ENGLISH.search(translated), translated
    assert "1,0 fois" in french(finding) and "un infirmier ou une infirmière" in french(finding)


def test_step_up_containment_and_console_pages_in_french(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    runtime = sqlite_runtime
    movable_clock.set(dt.datetime(2026, 12, 8, 9, 30, tzinfo=dt.UTC))
    problems: list[str] = []

    # A refusal: a front-desk agent on the billing pages.
    login(client, hospital.front_desk)
    page = client.get("/billing", headers=FRENCH)
    assert page.status_code == 403 and "facturation" in page.text
    problems += [f"refused: {p}" for p in untranslated(page.text, DATA)]
    client.cookies.clear()

    # A step-up: the physician was shown too many patients; the next chart asks for a factor.
    login(client, hospital.physician)
    with pytest.raises(Exception, match="Confirm your identity"):
        expose(runtime, staff_actor(hospital.physician, Role.PHYSICIAN), new_patients(45))
    page = client.get(f"/patients/{hospital.my_patient}", headers=FRENCH)
    assert page.status_code == 403 and "Confirmez votre identité" in page.text, page.text
    problems += [f"step-up: {p}" for p in untranslated(page.text, DATA)]

    # A containment: far more; the session is closed and the notice says why, in French.
    with pytest.raises(Exception, match="suspended"):
        expose(runtime, staff_actor(hospital.physician, Role.PHYSICIAN), new_patients(400))
    page = client.get("/day", headers=FRENCH)
    assert page.status_code == 403 and "suspendu" in page.text, page.status_code
    problems += [f"contained: {p}" for p in untranslated(page.text, DATA)]
    client.cookies.clear()

    # The security officer's console: the alerts and the contained account, in French.
    officer = make_person(
        runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    open_session_for(client, runtime, officer)
    console = client.get("/security", headers=FRENCH)
    assert console.status_code == 200
    assert "a vu" in console.text and "fois le niveau" in console.text
    problems += [f"console: {p}" for p in untranslated(console.text, DATA | {"dr.house"})]
    for sentence in re.findall(r'<a href="/security/alerts/[^"]+">([^<]+)</a>', console.text):
        assert not ENGLISH.search(sentence), sentence
    assert problems == [], "\n".join(problems)
