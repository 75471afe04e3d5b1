"""The gate's fast Patient search (carnet/phi/fastpath_search.py, `patient_search`) and the
kernel's general path decide, redact, audit and count identically.

As in test_fastpath.py: each case is built twice (two worlds in one database, each its own
facility with the same patient); the same searches run, in the same order, on the general path
in one world and as served (the fast path on PostgreSQL) in the other. What leaves (the pages,
or the errors and their words), the audit events, the exposure rows and detection's window
counts must be the same once each world's ids are named alike. The searches cover every shape
the gate knows (an identifier, family + birth date with and without a given name, a name alone
among one's own patients, a prefix, a given name alone) and its refusals (one letter, no
criterion, a page too deep, a count too large); the partial searches come last, so detection's
second factor for broad searches (then containment) is reached on both paths alike.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.phi import fastpath, fastpath_search
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f
from tests.phi.test_fastpath import CASES, World, _last_seq, _named, _trail, _world
from tests.phi.test_fastpath_search import _MINUTE

BORN = dt.date(1970, 5, 17)  # tests.factories.register_patient's default birth date
INS = "2700512345678"  # the world's patient (tests.phi.test_fastpath._world)

SEARCHES: list[tuple[str, dict[str, Any]]] = [
    ("identifier", {"identifier": INS}),
    ("identifier, spaced", {"identifier": f" {INS} "}),
    ("unknown identifier", {"identifier": "1999999999999"}),
    ("family + birth date", {"family": "Lemoine", "birth_date": BORN}),
    ("family + birth date + given", {"family": "lemoine", "birth_date": BORN, "given": "Claire"}),
    ("family + another birth date", {"family": "Lemoine", "birth_date": dt.date(1971, 5, 17)}),
    ("family alone", {"family": "Lemoine"}),
    ("family alone, count 1", {"family": "LEMOINE", "count": 1}),
    ("given alone", {"given": "Claire"}),
    ("family and given", {"family": "Lemoine", "given": "Claire"}),
    ("one letter", {"family": "L"}),
    ("nothing", {}),
    ("page too deep", {"identifier": INS, "page": 999}),
    ("count too large", {"identifier": INS, "count": 10_000}),
    ("page 2", {"family": "Lemoine", "birth_date": BORN, "page": 2}),
    # Partial searches: detection asks a second factor after a few, then contains.
    ("prefix", {"family": "Lem"}),
    ("two prefixes", {"family": "Lemo", "given": "Cl"}),
    ("short prefix", {"family": "Le"}),
    ("another prefix", {"given": "Cla"}),
    ("family alone again", {"family": "Lemoine"}),
    ("yet another prefix", {"family": "Lemoi"}),
    ("identifier again", {"identifier": INS}),
]

EMPTY = {"items": [], "page": 1, "count": 20, "has_more": False}
SEARCH_CASES = [*CASES, "front-desk", "fresh-second-factor"]


def _search_world(runtime: Runtime, case: str) -> World:
    """The case's world, its actor at a workstation of its own: the partial searches of the
    two worlds' accounts must not be one campaign (detection correlates accounts sharing a
    network address or a client), or the second world would be judged on the first's."""
    world = _case_world(runtime, case)
    n = uuid.uuid4().int
    address, agent = f"10.{n % 250}.{n >> 8 & 0xFF}.{1 + (n >> 16) % 250}", f"ws-{n % 10**8}"
    actor = dataclasses.replace(world.actor, address=address, user_agent=agent)
    return dataclasses.replace(world, actor=actor)


def _case_world(runtime: Runtime, case: str) -> World:
    if case == "front-desk":  # a facility-wide role: located by a specific search, judged by work
        world = _world(runtime, "refused")
        facility = next(k for k, v in world.names.items() if v == "facility")
        clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=uuid.UUID(facility))
        world.names[str(clerk.account_id)] = "clerk"
        return dataclasses.replace(world, actor=clerk)
    if case == "fresh-second-factor":  # partial searches pass the step-up, up to containment
        world = _world(runtime, "allowed")
        actor = dataclasses.replace(world.actor, second_factor_at=clock.now())
        return dataclasses.replace(world, actor=actor)
    return _world(runtime, case)


def _timeless(value: Any) -> Any:
    """An alert quotes the minute a step-up was asked: the two worlds may straddle a minute."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_timeless(v) for v in value]
    return _MINUTE.sub("<hh:mm>", value) if isinstance(value, str) else value


def _search_all(runtime: Runtime, world: World) -> list[Any]:
    gate = Gate(runtime, world.actor)
    out = []
    for label, criteria in SEARCHES:
        try:
            page = gate.search_patients(**criteria)
        except Exception as exc:
            # A step-up names the minute it was asked: the two worlds may straddle a minute.
            out.append((label, type(exc).__name__, _named(_MINUTE.sub("<hh:mm>", str(exc)), world.names)))
        else:
            out.append((label, "ok", _named(page.model_dump(), world.names)))
    return out


@pytest.mark.parametrize("case", SEARCH_CASES)
def test_fast_and_general_patient_searches_agree(runtime: Runtime, case: str) -> None:
    on_postgres = runtime.engine.dialect.name == "postgresql"
    general, fast = _search_world(runtime, case), _search_world(runtime, case)

    since = _last_seq(runtime)
    with fastpath.general_only():
        before = fastpath_search.searched
        expected = _search_all(runtime, general)
        assert fastpath_search.searched == before
    expected_trail = _timeless(_trail(runtime, general, since))

    since = _last_seq(runtime)
    before, related = fastpath_search.searched, fastpath_search.related
    got = _search_all(runtime, fast)
    got_trail = _timeless(_trail(runtime, fast, since))
    assert fastpath_search.searched == before + (len(SEARCHES) if on_postgres else 0)
    if on_postgres and case in ("allowed", "front-desk", "redacted"):
        # The candidates' relationships came with them (one round trip), for the specific
        # searches and the names the prefix keys narrow; a short prefix scans without them.
        assert fastpath_search.related > related

    assert got == expected
    for key in expected_trail:
        assert got_trail[key] == expected_trail[key], key
    # The cases are what they say: not all equal by being all refused.
    answered = {label: (kind, value) for label, kind, value in got}
    assert len(expected_trail["audit"]) >= len(SEARCHES)
    if case in ("allowed", "redacted", "break-glass", "fresh-second-factor", "front-desk"):
        kind, page = answered["identifier"]
        assert kind == "ok" and [i["id"] for i in page["items"]] == ["patient"]
        assert answered["family + birth date"][1]["items"][0]["id"] == "patient"
        assert answered["unknown identifier"] == ("ok", EMPTY)
        assert answered["one letter"][0] == "InvalidInput"
        assert answered["nothing"][0] == "InvalidInput"
        assert answered["page too deep"][0] == "InvalidInput"
        assert expected_trail["exposures"]
    if case in ("allowed", "fresh-second-factor"):  # the patient is in the physician's care
        assert answered["family alone"][1]["items"][0]["id"] == "patient"
        assert answered["given alone"][1]["items"][0]["id"] == "patient"
    if case == "allowed":  # partial searches: a second factor, then containment
        assert answered["short prefix"][0] == "StepUpRequired", answered["short prefix"]
    if case == "fresh-second-factor":
        assert answered["prefix"][0] == "ok"
        assert {"StepUpRequired", "AccountContained"} & {kind for kind, _v in answered.values()}
    if case == "front-desk":  # no care list: a name alone finds nothing
        assert answered["family alone"] == ("ok", EMPTY)
    if case == "redacted":  # a nurse sees some fields only
        item = answered["identifier"][1]["items"][0]
        assert any(v is None for v in item.values())
    if case == "suspended":  # refused with the account, before anything is asked
        assert {kind for kind, _v in answered.values()} == {"AccountContained"}
    if case == "contained":
        # A malformed search is refused before detection judges the actor (on both paths).
        assert {kind for kind, _v in answered.values()} == {"AccountContained", "InvalidInput"}
        assert answered["identifier"][0] == "AccountContained"
    if case == "stepped-up":
        assert answered["identifier"][0] == "StepUpRequired"
    if case in ("refused", "no-grant", "missing"):
        assert answered["identifier"][0] in ("ok", "Forbidden")
