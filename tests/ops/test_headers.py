"""Every answer of every router carries the hardening headers (issue 15): pages, FHIR, OAuth,
identity, static files, redirects, refusals and unexpected errors alike."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute, Mount, Route

from carnet.app import create_app
from carnet.runtime import Runtime
from carnet.settings import Environment

EXPECTED = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def every_request(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) for each route of every router, path parameters filled with a dummy id."""
    yield from _walk(app.routes, "")


def _walk(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[str, str]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers whole
        if included is not None:
            yield from _walk(included.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
        elif isinstance(route, APIRoute | Route):
            path = re.sub(r"\{[^}:]+(:path)?\}", str(uuid.UUID(int=7)), prefix + route.path)
            for method in sorted(route.methods or {"GET"}):
                yield method, path
        elif isinstance(route, Mount):
            yield "GET", f"{prefix}{route.path}/no-such-file.js"


def check(response_headers: dict[str, str], path: str) -> None:
    for name, value in EXPECTED.items():
        assert response_headers.get(name) == value, (path, name, response_headers)
    assert "frame-ancestors 'none'" in response_headers.get("content-security-policy", ""), path
    # Static files, the favicon, the SMART discovery document and the id_token public key
    # (public server metadata, cacheable by the SMART and OpenID specifications) may be cached;
    # any other answer may carry patient data.
    cacheable = path.startswith("/static/") or path in ("/favicon.ico", "/oauth/jwks")
    if not cacheable and not path.endswith("/.well-known/smart-configuration"):
        assert "no-store" in response_headers.get("cache-control", ""), path


def test_every_route_of_every_router_answers_with_the_hardening_headers(sqlite_runtime: Runtime) -> None:
    app = create_app(sqlite_runtime)

    @app.get("/_test/boom")
    def boom() -> None:
        raise RuntimeError("an unexpected failure")

    requests = list(every_request(app))
    prefixes = {path.split("/")[1] for _, path in requests}
    # The test really walks every router: FHIR, OAuth, identity, the web UI and its static files.
    assert {"fhir", "oauth", "static", "login", "home", "healthz"} <= prefixes, prefixes
    assert len(requests) > 100
    statuses: set[int] = set()
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        for method, path in requests:
            response = client.request(method, path)
            statuses.add(response.status_code)
            check({k.lower(): v for k, v in response.headers.items()}, path)
            assert "strict-transport-security" not in response.headers  # test mode: plain HTTP
        static = client.get("/static/" + next(p.name for p in _static_files()))
        assert static.status_code == 200
        check({k.lower(): v for k, v in static.headers.items()}, "/static/")
    assert 500 in statuses and {401, 404} & statuses  # errors from outside the routers too


def _static_files() -> Iterator[object]:
    from carnet.web import STATIC

    yield from (p for p in STATIC.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", ["/healthz", "/fhir/Patient", "/login", "/home"])
def test_outside_demo_and_test_answers_pin_https(sqlite_runtime: Runtime, path: str) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.PRODUCTION})
    with TestClient(create_app(sqlite_runtime), follow_redirects=False) as client:
        response = client.get(path)
    assert response.headers["strict-transport-security"].startswith("max-age=63072000")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_page_keeps_its_own_content_security_policy(sqlite_runtime: Runtime) -> None:
    with TestClient(create_app(sqlite_runtime), follow_redirects=False) as client:
        page = client.get("/login")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]  # the web UI's own
    assert page.headers.get_list("content-security-policy") == [page.headers["content-security-policy"]]
