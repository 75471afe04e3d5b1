"""`GET /fhir/Patient/{id}` is matched ahead of every router (carnet.fhir.resources.patient.ReadFirst)
and answers exactly what the app's own route order answered: no other route can take a GET of a
well-formed id, and every other path goes the usual way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Route, compile_path

from carnet.app import create_app
from carnet.fhir.resources.patient import ReadFirst, read_patient
from carnet.identity import sessions
from carnet.runtime import Runtime
from tests import factories as f

IDS = ("0b7e4f0c-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "a", "A-1.2", "x" * 64)
# Not ids: the literal paths under Patient/ and what FHIR's id grammar refuses.
NOT_IDS = ("$export", "_history", "_search", "$merge", "bad_id", "x" * 65, "a b", "%24export")


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route of the app with the path it is served at, included routers walked."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute | Route):
            yield prefix + route.path, route


def test_no_other_route_answers_a_get_of_a_patient_id(sqlite_runtime: Runtime) -> None:
    app = create_app(sqlite_runtime)
    first = app.router.routes.index(next(r for r in app.router.routes if isinstance(r, ReadFirst)))
    # Only the framework's own pages come before it (/openapi.json, /docs, /redoc).
    assert all(
        isinstance(r, Route) and r.path.startswith(("/openapi", "/docs", "/redoc"))
        for r in app.router.routes[:first]
    )
    # In the app's order (ReadFirst's own route aside), the first route a GET of an id matches
    # is `read_patient`: the routes after it (the fallback for unknown types) never saw it.
    ordered = [(p, r) for p, r in _routes(app.router.routes) if not isinstance(r, ReadFirst)]
    for pid in IDS:
        first_get = next(
            route
            for path, route in ordered
            if "GET" in (route.methods or ()) and compile_path(path)[0].match(f"/fhir/Patient/{pid}")
        )
        assert first_get.endpoint is read_patient, (pid, first_get.path)
    for pid in NOT_IDS:
        scope = {"type": "http", "method": "GET", "path": f"/fhir/Patient/{pid}", "root_path": ""}
        assert app.router.routes[first].matches(scope)[0].name == "NONE", pid
    scope = {"type": "http", "method": "GET", "path": f"/fhir/Patient/{IDS[0]}", "root_path": ""}
    match, child_scope = app.router.routes[first].matches(scope)
    # Served by Starlette, named by its template in the access log and the metrics, as before.
    assert match.name == "FULL" and child_scope["route"].path == "/fhir/Patient/{patient_id}"
    assert child_scope["path_params"] == {"patient_id": IDS[0]}
    for method in ("PUT", "DELETE", "HEAD", "POST"):
        scope = {"type": "http", "method": method, "path": f"/fhir/Patient/{IDS[0]}", "root_path": ""}
        assert app.router.routes[first].matches(scope)[0].name == "NONE", method


def _without_read_first(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, ReadFirst)]
    return app


def test_the_answers_are_the_route_orders_answers(sqlite_runtime: Runtime) -> None:
    runtime = sqlite_runtime
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility, family="Routee")
    assert doctor.practitioner_id is not None and doctor.account_id is not None
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=doctor.account_id,
            privileged=False,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent="route test",
        )
    headers = {"Cookie": f"carnet_session={issued.token}", "User-Agent": "route test"}
    paths = [f"/fhir/Patient/{patient.id}", f"/fhir/Patient/{IDS[0]}", f"/fhir/Patient/{patient.id}/_history"]
    paths += [f"/fhir/Patient/{p}" for p in NOT_IDS] + ["/fhir/Patient", "/fhir/Patient/"]

    def answers(app: FastAPI) -> list[tuple[int, Any]]:
        client = TestClient(app)
        out = []
        for path in paths:
            for method, sent in (("GET", headers), ("HEAD", headers), ("GET", {})):
                answer: httpx.Response = client.request(method, path, headers=sent)
                body: Any = answer.content
                if answer.headers.get("content-type", "").startswith("application/fhir+json") and body:
                    body = _named(answer.json())
                out.append((answer.status_code, body))
        return out

    served = answers(create_app(runtime))
    assert served == answers(_without_read_first(create_app(runtime)))
    # The read, the same without a session, and a well-formed id of no one.
    assert served[0][0] == 200 and served[2][0] == 401 and served[3][0] == 404


_VOLATILE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{4}-\d\d-\d\dT[\d:.+Z-]+"
)


def _named(value: Any) -> Any:
    """A body with what differs between two reads (a bundle's id, its timestamp) blanked."""
    if isinstance(value, dict):
        return {k: _named(v) for k, v in value.items() if k not in ("id", "timestamp", "lastUpdated")}
    if isinstance(value, list):
        return [_named(v) for v in value]
    return _VOLATILE.sub("~", value) if isinstance(value, str) else value


_id_chars = st.sampled_from([*"aZ09-._/$%? ", "é"])


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(
        st.lists(_id_chars, min_size=0, max_size=70).map("".join),
        st.sampled_from([*IDS, *NOT_IDS]),
    ),
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.sampled_from(["", "/base", None]),
    st.one_of(st.none(), st.just({}), st.just({"other": "1"}), st.just({"patient_id": "old", "z": "2"})),
    st.sampled_from(["http", "websocket"]),
)
def test_read_first_matches_as_starlettes_route(
    pid: str, method: str, root_path: str | None, path_params: dict[str, str] | None, kind: str
) -> None:
    """ReadFirst's match of a path it takes is Starlette's `Route.matches`, plus the route."""
    route = ReadFirst()
    scope: dict[str, Any] = {"type": kind, "method": method, "path": f"/fhir/Patient/{pid}"}
    if root_path is not None:
        scope["root_path"] = root_path
    if path_params is not None:
        scope["path_params"] = path_params
    match, child_scope = route.matches(dict(scope))
    if match.name == "NONE":
        assert child_scope == {}
        return
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", pid) and method == "GET" and not root_path
    theirs, their_scope = Route.matches(route, dict(scope))
    assert (match, child_scope) == (theirs, {**their_scope, "route": route})
    assert list(child_scope["path_params"].items()) == list(their_scope["path_params"].items())
