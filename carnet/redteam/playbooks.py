"""Attacker playbooks against a running carnet, over HTTP, each from a stolen session.

Each playbook takes a fresh seeded account of its role, mints a live session for it (standing for
a stolen cookie: no second factor), and sends its requests until carnet contains the account or
the playbook runs out. It counts the distinct patients that came back in responses before
containment, and the requests and seconds it took carnet to contain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import html
import json
import re
import statistics
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import delete, func, select

from carnet.detection.interfaces import EventKind
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import ActorState, DetectionEvent, Exposure
from carnet.kernel import clock
from carnet.kernel.errors import Forbidden
from carnet.phi.exercise import ExerciseTargets
from carnet.redteam.sessions import mint_session
from carnet.runtime import Runtime


@dataclass(frozen=True)
class Form:
    """A web form's POST (a button of a carnet page, sent as htmx sends it). The stolen session's
    headers carry the page's CSRF token, as a scraper reading the page would."""

    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Kickoff:
    """A Bulk Data kick-off (GET with `Prefer: respond-async`): the attacker then polls the
    status URL it is given and downloads every NDJSON file the manifest lists, if any."""

    polls: int = 3


# A GET (path, query) or a POST (path, query, JSON body or Form), or a Bulk Data kick-off. A
# query value "{exportId}" stands for the id of the last Parameters the server answered (an
# export request the attacker made).
Request = tuple[str, dict[str, str]] | tuple[str, dict[str, str], dict[str, Any] | Form | Kickoff]
EXPORT_ID = "{exportId}"
# A playbook that reads pages gets each answer's text back from `yield` (None when refused).
PAGE = "{page}"


@dataclass(frozen=True)
class Playbook:
    name: str
    role: str
    description: str
    requests: Callable[[ExerciseTargets], Iterator[Request]]


@dataclass
class PlaybookResult:
    playbook: str
    username: str
    requests: int = 0
    # Patients the server's exposure ledger recorded for this account during the playbook (the
    # truth), and those whose data the attacker actually parsed out of responses.
    exposed_ledger: int = 0
    exposed: set[str] = field(default_factory=set)
    contained: bool = False
    requests_to_containment: int | None = None
    seconds_to_containment: float | None = None
    answers: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def exposed_count(self) -> int:
        return max(self.exposed_ledger, len(self.exposed))


def _reads(t: ExerciseTargets) -> Iterator[Request]:
    for person in t.people:
        yield f"/fhir/Patient/{person.patient_id}", {}


def _identifiers(t: ExerciseTargets) -> Iterator[Request]:
    for person in t.people:
        if person.ins:
            yield "/fhir/Patient", {"identifier": person.ins}


def _names(t: ExerciseTargets) -> Iterator[Request]:
    for person in t.people:
        yield "/fhir/Patient", {"family": person.family, "birthdate": person.birth_date}


def _paging(t: ExerciseTargets) -> Iterator[Request]:
    # One letter is refused outright, so the attacker sweeps with the shortest accepted fragments.
    for first in "aeioulmnrst":
        for second in "aeiou":
            for page in range(1, 6):
                yield "/fhir/Patient", {"name": first + second, "_page": str(page)}


def _canary_then_sweep(t: ExerciseTargets) -> Iterator[Request]:
    for canary in t.canaries[:1]:
        if canary.ins:
            yield "/fhir/Patient", {"identifier": canary.ins}
        else:
            yield "/fhir/Patient", {"family": canary.family, "birthdate": canary.birth_date}
    yield from _identifiers(t)


def _invoices(t: ExerciseTargets) -> Iterator[Request]:
    for person in t.people:
        yield "/fhir/Invoice", {"patient": f"Patient/{person.patient_id}"}


def _everything(t: ExerciseTargets) -> Iterator[Request]:
    for person in t.people:
        yield f"/fhir/Patient/{person.patient_id}/$everything", {}


def _appointment_lists(t: ExerciseTargets) -> Iterator[Request]:
    # What front desk would like: each practitioner's list, day after day. FHIR refuses a search
    # without a patient, so after those tries the attacker asks patient after patient.
    today = clock.now().date()
    for offset in range(3):
        day = (today + dt.timedelta(days=offset)).isoformat()
        for practitioner in t.practitioners[:4]:
            yield "/fhir/Appointment", {"practitioner": f"Practitioner/{practitioner}", "date": day}
    for person in t.people:
        yield "/fhir/Appointment", {"patient": f"Patient/{person.patient_id}"}


def _export_abuse(t: ExerciseTargets) -> Iterator[Request]:
    # Ask for the whole facility "for a study", approve it oneself, use it unapproved; then fall
    # back on patients one by one through $everything.
    ask = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "purpose", "valueString": "retrospective study of this year's admissions"},
            {"name": "scope", "valueCode": "facility"},
        ],
    }
    yield "/fhir/$export-request", {}, ask
    approve = {"resourceType": "Parameters", "parameter": [{"name": "exportId", "valueId": EXPORT_ID}]}
    yield "/fhir/$export-approve", {}, approve
    for _ in range(3):
        yield "/fhir/Patient/$export", {"_exportId": EXPORT_ID}
    yield from _everything(t)


def _include_sweep(t: ExerciseTargets) -> Iterator[Request]:
    # Searches that bring patients along: _include of the subject, _revinclude onto a patient
    # search, the largest page the server allows, on every clinical type, without naming a
    # patient; then the same per patient, where one search returns a patient and their results.
    big = {"_count": "20"}
    for rtype in ("Observation", "Condition", "Encounter", "MedicationRequest", "AllergyIntolerance"):
        yield f"/fhir/{rtype}", {**big, "_include": f"{rtype}:subject"}
        yield f"/fhir/{rtype}", {**big, "_include": f"{rtype}:patient", "date": "ge2000-01-01"}
    yield "/fhir/Encounter", {**big, "status": "in-progress", "_include": "Encounter:subject"}
    yield "/fhir/Appointment", {**big, "date": "ge2000-01-01", "_include": "Appointment:patient"}
    for fragment in ("mart", "bern", "dubo", "lefe"):
        yield "/fhir/Patient", {"family": fragment, "_revinclude": "Observation:subject", **big}
    for person in t.people:
        yield (
            "/fhir/Observation",
            {"patient": str(person.patient_id), "_include": "Observation:subject", **big},
        )


def _history_sweep(t: ExerciseTargets) -> Iterator[Request]:
    # Whole-system and type-level history: every version of everything, page after page.
    for path in ("/fhir/_history", "/fhir/Patient/_history", "/fhir/Observation/_history"):
        for page in range(1, 4):
            yield path, {"_count": "20", "_page": str(page)}
        yield path, {"_since": "2000-01-01T00:00:00Z", "_count": "20"}
    yield from _reads(t)


def _bulk_kickoff(t: ExerciseTargets) -> Iterator[Request]:
    # The standard Bulk Data kick-offs (what a bulk FHIR client does first), each polled and
    # downloaded if ever ready; then every Group the server lists, then Patient/$export.
    for path in ("/fhir/$export", "/fhir/Patient/$export"):
        yield path, {"_type": "Patient,Observation,Condition,MedicationRequest"}, Kickoff()
    yield "/fhir/Group", {"_count": "20"}
    yield from _everything(t)


_WHO_BUTTON = re.compile(r'hx-post="/desk/schedule/([0-9a-f-]{36})/who"')
_WHO_ANSWER = re.compile(
    r'<strong class="patient-name">(.*?)</strong>\s*<span class="muted">\((.*?)\)</span>'
)


def _calendars(t: ExerciseTargets) -> Generator[Request, str | None, None]:
    # The web calendar, practitioner after practitioner, a week each: what FHIR refuses (no
    # appointment list across patients), the desk's own screen shows. It shows slots only, so
    # the attacker presses "Who is this?" on every booked slot it lists.
    week = clock.now().date().isoformat()
    for practitioner in t.practitioners:
        page = yield "/desk/schedule", {"practitioner": str(practitioner), "day": week, "view": "week"}
        for appointment in dict.fromkeys(_WHO_BUTTON.findall(page or "")):
            yield f"/desk/schedule/{appointment}/who", {}, Form()


_DAY_ROW = re.compile(r'href="/patients/([0-9a-f-]{36})">([^<,]+),')
# Fragments an attacker tries first when the day lists gave none: frequent French family names.
_COMMON_FRAGMENTS = ("bert", "mart", "rous", "bern", "dubo", "more", "laur", "simo", "mich", "lefe")


def _day_list_walk(t: ExerciseTargets) -> Generator[Request, str | None, None]:
    # The physician's own day list, then other days' (names, birth dates, reasons), then
    # 4-letter fragments of the family names read there, over FHIR, among their own patients.
    today = clock.now().date()
    families: list[str] = []
    for offset in (0, -1, -2, -3, -4, -5, 1, 2, 3, -6, -7, -8):
        day = (today + dt.timedelta(days=offset)).isoformat()
        page = yield "/day", {"day": day}
        families += [html.unescape(name).strip() for _id, name in _DAY_ROW.findall(page or "")]
    fragments = [f[:4].lower() for f in dict.fromkeys(families) if len(f) >= 4]
    for fragment in dict.fromkeys([*fragments, *_COMMON_FRAGMENTS]):
        yield "/fhir/Patient", {"family": fragment}


def _arrivals(t: ExerciseTargets) -> Generator[Request, str | None, None]:
    # The front desk's arrivals list: now, then every window of the day, then refreshed again
    # and again, hoping the day's patients come out a window at a time.
    yield "/desk/arrivals", {}
    for hour in range(0, 24, 2):
        yield "/desk/arrivals", {"start": f"{hour:02d}:00"}
    for _ in range(5):
        yield "/desk/arrivals", {}
    # Who the slots it would not name are for: the calendar's "Who is this?", slot by slot.
    yield from _calendars(t)


def _worklist(t: ExerciseTargets) -> Iterator[Request]:
    # The billing worklist, page after page: every unpaid invoice of the facility and whom it bills.
    for page in range(1, 51):
        yield "/billing/worklist", {"page": str(page)}


def _ward_board_walk(t: ExerciseTargets) -> Generator[Request, str | None, None]:
    # A nurse's ward board (who is in which bed), then other days' lists, as the day-list walk.
    yield "/ward", {}
    yield from _day_list_walk(t)


PLAYBOOKS: tuple[Playbook, ...] = (
    Playbook("admin-sweep", "system_administrator", "an administrator reads patient charts by id", _reads),
    Playbook(
        "physician-sweep", "physician", "a physician opens charts of patients outside their care", _reads
    ),
    Playbook(
        "identifier-enumeration",
        "front_desk",
        "front desk looks up patients by INS, one by one",
        _identifiers,
    ),
    Playbook("name-sweep", "front_desk", "front desk searches family name + birth date, one by one", _names),
    Playbook("fhir-paging", "physician", "a physician pages through every name search", _paging),
    Playbook(
        "canary-touch",
        "front_desk",
        "a lookup that happens to hit a canary, then a sweep",
        _canary_then_sweep,
    ),
    Playbook("billing-scrape", "billing", "billing pulls every patient's invoices", _invoices),
    Playbook(
        "everything-export",
        "physician",
        "a physician asks $everything for patient after patient",
        _everything,
    ),
    Playbook(
        "export-abuse",
        "physician",
        "a physician requests a facility export, approves it, uses it unapproved, then $everything",
        _export_abuse,
    ),
    Playbook(
        "calendar-scrape",
        "front_desk",
        "front desk opens the web calendar of practitioner after practitioner, a week at a time,"
        " and asks who each booked slot is for",
        _calendars,
    ),
    Playbook(
        "appointment-scrape",
        "front_desk",
        "front desk lists appointments practitioner by practitioner, day by day, then per patient",
        _appointment_lists,
    ),
    Playbook(
        "day-list-walk",
        "physician",
        "a physician reads their day lists of other days, then 4-letter family-name fragments of their"
        " own patients over FHIR",
        _day_list_walk,
    ),
    Playbook(
        "arrivals-scrape",
        "front_desk",
        "front desk opens the arrivals list now, then every window of the day, and refreshes it",
        _arrivals,
    ),
    Playbook(
        "worklist-scrape",
        "billing",
        "billing pages through the worklist of unpaid invoices to its last page",
        _worklist,
    ),
    Playbook(
        "ward-board-walk",
        "nurse",
        "a nurse reads their ward board, then their day lists of other days and family-name fragments",
        _ward_board_walk,
    ),
)
# The interoperability surface (issue 16): searches that bring patients along, history, Bulk Data.
API_PLAYBOOKS: tuple[Playbook, ...] = (
    Playbook(
        "include-sweep",
        "physician",
        "a physician's searches bring patients along: _include and _revinclude, the largest pages",
        _include_sweep,
    ),
    Playbook(
        "history-sweep",
        "system_administrator",
        "an administrator pages through the whole-system and type-level _history",
        _history_sweep,
    ),
    Playbook(
        "bulk-kickoff",
        "physician",
        "a physician starts Bulk Data exports ($export, Patient/$export), polls and downloads them",
        _bulk_kickoff,
    ),
)
_BY_NAME = {p.name: p for p in (*PLAYBOOKS, *API_PLAYBOOKS)}
# What each role does in a campaign: its most rewarding single playbooks, in turn.
_CAMPAIGN_ROLES = {
    "physician": ("day-list-walk", "fhir-paging", "everything-export"),
    "nurse": ("day-list-walk",),
    "front_desk": ("calendar-scrape", "identifier-enumeration", "name-sweep", "appointment-scrape"),
    "billing": ("billing-scrape",),
}


def _campaign(size: int) -> tuple[Playbook, ...]:
    """`size` mixed-role members: physicians, nurses, front desk and billing in a hospital's mix."""
    mix = ["physician", "nurse", "front_desk", "physician", "billing"]
    if size > 5:
        mix = (["physician", "nurse", "front_desk", "physician", "nurse", "billing", "front_desk"] * 3)[:size]
    members: list[Playbook] = []
    used: dict[str, int] = {}
    for role in mix[:size]:
        names = _CAMPAIGN_ROLES[role]
        name = names[used.get(role, 0) % len(names)]
        used[role] = used.get(role, 0) + 1
        # A nurse walking day lists is the physician's playbook under a nurse's account.
        members.append(dataclasses.replace(_BY_NAME[name], role=role))
    return tuple(members)


@dataclass(frozen=True)
class TeamPlaybook:
    """Several stolen sessions attacking together, round robin, each on its own share of the
    targets: what counts is the union of the patients they exposed."""

    name: str
    description: str
    members: tuple[Playbook, ...]


TEAM_PLAYBOOKS: tuple[TeamPlaybook, ...] = (
    TeamPlaybook(
        "several-accounts",
        "three stolen sessions (front desk, physician, billing) attack at once, on disjoint patients",
        (PLAYBOOKS[2], PLAYBOOKS[1], PLAYBOOKS[6]),
    ),
    TeamPlaybook(
        "campaign-5",
        "five stolen sessions (2 physicians, a nurse, front desk, billing) from one attacker's machine,"
        " each running its role's best playbook",
        _campaign(5),
    ),
    TeamPlaybook(
        "campaign-20",
        "twenty stolen sessions of mixed roles from one attacker's machine",
        _campaign(20),
    ),
)


def patient_ids_in(body: Any) -> set[str]:
    """Patients whose data came back: Patient resources, and subjects of other resources."""
    found: set[str] = set()
    if not isinstance(body, dict):
        return found
    resources = (
        [e.get("resource", {}) for e in body.get("entry", [])]
        if body.get("resourceType") == "Bundle"
        else [body]
    )
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Patient" and resource.get("id"):
            found.add(str(resource["id"]))
            continue
        refs = [resource.get(key) for key in ("subject", "patient", "beneficiary")]
        # An Appointment names its patient among its participants.
        participants = resource.get("participant")
        if isinstance(participants, list):
            refs += [p.get("actor") for p in participants if isinstance(p, dict)]
        for ref in refs:
            if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
                found.add(str(ref["reference"]).removeprefix("Patient/"))
    return found


def _answer(response: httpx.Response) -> str:
    if response.status_code < 300:
        return "ok"
    code = ""
    try:
        issues = response.json().get("issue", [])
        code = str(issues[0].get("code", "")) if issues else ""
    except (ValueError, AttributeError):
        pass
    return f"{response.status_code} {code}".strip()


def _send(
    client: httpx.Client,
    request: Request,
    headers: dict[str, str],
    result: PlaybookResult,
    memory: dict[str, str],
) -> bool:
    """One request; True when carnet has contained the account (told so, or session revoked)."""
    result.requests += 1
    path, params = request[0], {k: memory.get(v, v) for k, v in request[1].items()}
    memory.pop(PAGE, None)
    try:
        if len(request) == 3 and isinstance(request[2], Kickoff):
            response = _kickoff(client, path, params, headers, request[2], result)
        elif len(request) == 3 and isinstance(request[2], Form):
            response = client.post(
                path, params=params, data=request[2].fields, headers=headers | {"HX-Request": "true"}
            )
        elif len(request) == 3:
            body = json.loads(json.dumps(request[2]).replace(EXPORT_ID, memory.get(EXPORT_ID, "-")))
            response = client.post(path, params=params, json=body, headers=headers)
        else:
            response = client.get(path, params=params, headers=headers)
    except httpx.TransportError:
        # The server dropped the connection (a server error): no data came back.
        result.answers["no answer"] = result.answers.get("no answer", 0) + 1
        return False
    answer = _answer(response)
    result.answers[answer] = result.answers.get(answer, 0) + 1
    if answer == "ok" and "html" in response.headers.get("content-type", ""):
        memory[PAGE] = response.text
        # A web page names patients in text: each name and birth date the attacker read.
        result.exposed |= {
            f"{html.unescape(n)} ({html.unescape(b)})" for n, b in _WHO_ANSWER.findall(response.text)
        }
        return False
    if answer == "ok":
        with contextlib.suppress(ValueError):
            body = response.json()
            result.exposed |= patient_ids_in(body)
            if isinstance(body, dict) and body.get("resourceType") == "Parameters" and body.get("id"):
                memory[EXPORT_ID] = str(body["id"])
        return False
    return answer.startswith("403 suspended") or answer.startswith("401 login")


def _kickoff(
    client: httpx.Client,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    kickoff: Kickoff,
    result: PlaybookResult,
) -> httpx.Response:
    """Kick off, poll the status URL, download what the manifest lists; the answer that counts
    is the last one (the kick-off's own refusal, a status still pending, or the manifest)."""
    response = client.get(path, params=params, headers=headers | {"Prefer": "respond-async"})
    status_url = response.headers.get("content-location")
    for _ in range(kickoff.polls if response.status_code == 202 and status_url else 0):
        response = client.get(str(status_url), headers=headers)
        if response.status_code != 202:
            break
        time.sleep(0.2)
    if response.status_code == 200:
        with contextlib.suppress(ValueError):
            for output in response.json().get("output", []):
                ndjson = client.get(str(output.get("url", "")), headers=headers)
                for line in ndjson.text.splitlines() if ndjson.status_code == 200 else []:
                    with contextlib.suppress(ValueError):
                        result.exposed |= patient_ids_in(json.loads(line))
    return response


def _is_contained(runtime: Runtime, account_id: uuid.UUID) -> bool:
    """The server's own record: web pages answer in HTML, without an OperationOutcome to read."""
    with runtime.session_factory() as session:
        state = session.get(ActorState, f"account:{account_id}")
        return state is not None and state.status == "contained"


def _ledger_count(runtime: Runtime, account_ids: list[uuid.UUID], since: dt.datetime) -> int:
    refs = [f"account:{a}" for a in account_ids]
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count(func.distinct(Exposure.patient_id))).where(
                    Exposure.actor_ref.in_(refs), Exposure.at >= since
                )
            )
            or 0
        )


def run_playbook(
    runtime: Runtime,
    client: httpx.Client,
    playbook: Playbook,
    *,
    username: str,
    targets: ExerciseTargets,
    max_requests: int = 200,
) -> PlaybookResult:
    result = PlaybookResult(playbook=playbook.name, username=username)
    stolen = mint_session(runtime, username=username)
    since = clock.now()
    started = time.perf_counter()
    memory: dict[str, str] = {}
    stream = playbook.requests(targets)
    while True:
        try:
            # A generator is told the last page it read (what it would click next).
            request = stream.send(memory.get(PAGE)) if isinstance(stream, Generator) else next(stream)
        except StopIteration:
            break
        if result.requests >= max_requests:
            result.note = f"stopped after {max_requests} requests"
            break
        if _send(client, request, stolen.headers, result, memory) or (
            result.answers.get("ok", 0) < result.requests and _is_contained(runtime, stolen.account_id)
        ):
            result.contained = True
            result.requests_to_containment = result.requests
            result.seconds_to_containment = time.perf_counter() - started
            break
    if not result.contained:
        result.note = result.note or "ran out of requests"
    result.exposed_ledger = _ledger_count(runtime, [stolen.account_id], since)
    return result


def _next(stream: Iterator[Request], memory: dict[str, str]) -> Request | None:
    """The stream's next request; a generator is told the last page it read."""
    try:
        return stream.send(memory.get(PAGE)) if isinstance(stream, Generator) else next(stream)
    except StopIteration:
        return None


def attacker_client(base_url: str, *, machine: int, agent: str) -> httpx.Client:
    """An HTTP client standing for one attacker's machine: its own source address on the
    loopback network (127.0.x.y, when carnet runs on this host) and its own browser string, so
    correlation sees separate attackers as separate and one attacker's sessions as one."""
    host = httpx.URL(base_url).host
    transport = None
    if host in ("127.0.0.1", "localhost"):
        transport = httpx.HTTPTransport(local_address=f"127.0.{10 + machine // 250}.{1 + machine % 250}")
    return httpx.Client(
        base_url=base_url,
        timeout=30,
        headers={"Accept": "application/fhir+json", "User-Agent": agent},
        transport=transport,
    )


def forget_campaign_marks(runtime: Runtime) -> None:
    """Between single-account playbooks: the installation's marks of anomalous accounts are
    cleared, so each playbook is measured as one attacker alone (exercise mode only; the
    campaigns are measured with them)."""
    if not runtime.settings.exercise_mode:
        raise Forbidden("red-team exercises run only when CARNET_ENV is demo or test")
    if not isinstance(runtime.ledger, SqlExposureLedger):
        return
    ref = runtime.ledger.installation_ref
    with runtime.session_factory.begin() as session:
        session.execute(
            delete(DetectionEvent).where(
                DetectionEvent.actor_ref == ref, DetectionEvent.kind == EventKind.ANOMALY.value
            )
        )
    runtime.ledger.counters.reset(actor_ref=ref)  # Redis or memory counters hold them too


def run_team(
    runtime: Runtime,
    client: httpx.Client,
    team: TeamPlaybook,
    *,
    usernames: list[str],
    targets: ExerciseTargets,
    max_requests: int = 200,
) -> PlaybookResult:
    """Members take turns, one request each, until every one is contained or has run out.
    `max_requests` bounds each member. Contained means all of them were."""
    result = PlaybookResult(playbook=team.name, username="+".join(usernames))
    n = len(team.members)
    stolen = [mint_session(runtime, username=u) for u in usernames]
    shares = [dataclasses.replace(targets, people=targets.people[i::n]) for i in range(n)]
    streams = [m.requests(shares[i]) for i, m in enumerate(team.members)]
    sent = [0] * n
    live = set(range(n))
    contained: set[int] = set()
    memories: list[dict[str, str]] = [{} for _ in range(n)]
    since = clock.now()
    started = time.perf_counter()
    while live:
        for i in sorted(live):
            request = _next(streams[i], memories[i]) if sent[i] < max_requests else None
            if request is None:
                live.discard(i)
                continue
            sent[i] += 1
            ok_before = result.answers.get("ok", 0)
            if _send(client, request, stolen[i].headers, result, memories[i]) or (
                result.answers.get("ok", 0) == ok_before and _is_contained(runtime, stolen[i].account_id)
            ):
                contained.add(i)
                live.discard(i)
    result.contained = len(contained) == n
    if result.contained:
        result.requests_to_containment = result.requests
        result.seconds_to_containment = time.perf_counter() - started
    else:
        result.note = f"{len(contained)} of {n} contained"
    result.exposed_ledger = _ledger_count(runtime, [s.account_id for s in stolen], since)
    return result


def playbook_names() -> list[str]:
    from carnet.redteam.widening import WIDENING

    return [p.name for p in (*PLAYBOOKS, *API_PLAYBOOKS)] + [t.name for t in TEAM_PLAYBOOKS] + list(WIDENING)


def run_playbooks(
    runtime: Runtime,
    *,
    base_url: str,
    targets: ExerciseTargets,
    names: list[str] | None = None,
    max_requests: int = 200,
) -> list[PlaybookResult]:
    """Each playbook (and team) from fresh accounts: an account is never used twice."""
    used: dict[str, int] = {}

    def fresh(role: str) -> str | None:
        accounts = targets.accounts.get(role, [])
        index = used.get(role, 0)
        if index >= len(accounts):
            return None
        used[role] = index + 1
        return accounts[index]

    results = []
    # The interoperability playbooks run when named (each needs accounts the others would use).
    chosen = [p for p in PLAYBOOKS if names is None or p.name in names]
    chosen += [p for p in API_PLAYBOOKS if names is not None and p.name in names]
    for machine, playbook in enumerate(chosen):
        forget_campaign_marks(runtime)
        with attacker_client(base_url, machine=machine, agent=f"redteam-{playbook.name}") as client:
            username = fresh(playbook.role)
            if username is None:
                results.append(
                    PlaybookResult(
                        playbook.name, username="-", note=f"no unused {playbook.role} account left"
                    )
                )
                continue
            results.append(
                run_playbook(
                    runtime, client, playbook, username=username, targets=targets, max_requests=max_requests
                )
            )
    teams = [t for t in TEAM_PLAYBOOKS if names is None or t.name in names]
    for machine, team in enumerate(teams, start=100):
        forget_campaign_marks(runtime)
        members = [fresh(m.role) for m in team.members]
        if None in members:
            results.append(PlaybookResult(team.name, username="-", note="not enough unused accounts"))
            continue
        # One attacker's machine for the whole team: one address, one browser.
        with attacker_client(base_url, machine=machine, agent=f"redteam-{team.name}") as client:
            results.append(
                run_team(
                    runtime,
                    client,
                    team,
                    usernames=[m for m in members if m is not None],
                    targets=targets,
                    max_requests=max_requests,
                )
            )
    from carnet.redteam.widening import WIDENING, run_widening

    for machine, name in enumerate([w for w in WIDENING if names is None or w in names], start=200):
        forget_campaign_marks(runtime)
        with attacker_client(base_url, machine=machine, agent=f"redteam-{name}") as client:
            results.append(
                run_widening(runtime, client, name, fresh=fresh, targets=targets, max_requests=max_requests)
            )
    return results


def exposure_table(results: list[PlaybookResult]) -> str:
    lines = [
        "| playbook | patients exposed before containment | of which parsed by the attacker | contained "
        "| requests to containment | seconds to containment | answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r.answers.items())) or r.note
        lines.append(
            f"| {r.playbook} | {r.exposed_count} | {len(r.exposed)} | {'yes' if r.contained else 'NO'} | "
            f"{r.requests_to_containment if r.requests_to_containment is not None else '-'} | "
            f"{f'{r.seconds_to_containment:.2f}' if r.seconds_to_containment is not None else '-'} | "
            f"{answers} |"
        )
    single = {p.name for p in PLAYBOOKS}
    exposed = [r.exposed_count for r in results if r.username != "-" and r.playbook in single]
    if exposed:
        contained = sum(r.contained for r in results)
        lines.append("")
        lines.append(
            f"single-account playbooks: max exposed {max(exposed)}, median {statistics.median(exposed):g}; "
            f"contained {contained}/{len(results)}"
        )
    for r in results:
        if r.playbook not in single and r.username != "-":
            lines.append(
                f"{r.playbook}: {r.exposed_count} patients in total (union){r.note and '; ' + r.note}"
            )
    return "\n".join(lines)
