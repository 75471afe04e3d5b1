"""What /fhir/metadata declares is what the installed FHIR modules serve, and back.

Each module of carnet.fhir declares its resource types (interactions, search parameters), its
operations and its whole-system interactions; the router assembly installs them. These tests
hold the CapabilityStatement, the declarations and the routes the app mounts to one another,
so a resource added by one module is declared, served and listed, or a test fails.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from carnet.app import create_app
from carnet.fhir.core import registry
from carnet.fhir.routes import MODULES, routers
from carnet.runtime import Runtime

# The route that serves each type-level or instance-level interaction, under /fhir/<type>.
INTERACTION_ROUTES = {
    "search-type": ("GET", ""),
    "create": ("POST", ""),
    "read": ("GET", "/{}"),
    "update": ("PUT", "/{}"),
    "delete": ("DELETE", "/{}"),
    "history-instance": ("GET", "/{}/_history"),
    "vread": ("GET", "/{}/_history/{}"),
}
ROUTE_INTERACTIONS = {route: code for code, route in INTERACTION_ROUTES.items()}
# The routes of the shared machinery (carnet.fhir.operations.interactions), under /fhir/{type}:
# each serves, for every type, the interaction that type's declaration derives.
GENERIC_ROUTES = {
    ("PATCH", "/{}"): "patch",
    ("PATCH", ""): "patch",  # conditional patch
    ("GET", "/_history"): "history-type",
    ("PUT", ""): "conditional-update",
    ("DELETE", ""): "conditional-delete",
    ("POST", "/$validate"): "validate",
    ("POST", "/{}/$validate"): "validate",
}
DERIVED_CODES = set(registry.DERIVED)
# Bulk Data's status and file URLs belong to the $export operation (its kick-off answers them).
EXPORT_FOLLOW_UPS = {"export-status", "export-file"}


def _declared() -> set[tuple[str, str]]:
    return {(t.name, code) for module in MODULES for t in module.types for code in t.capabilities}


def _generic(code: str, t: registry.ResourceType) -> bool:
    """Whether the shared machinery serves `code` for the type `t` (as its handlers check)."""
    return {
        "conditional-update": t.conditional_update,
        "conditional-delete": t.conditional_delete,
        "validate": t.validates,
    }.get(code, code in t.capabilities)


def _served() -> tuple[set[tuple[str, str]], set[str], set[tuple[str, str]]]:
    """What the mounted routes serve: (type, interaction) pairs, $operations, and the routes
    at the base (/fhir) as (method, rest of the path)."""
    interactions: set[tuple[str, str]] = set()
    operations: set[str] = set()
    base: set[tuple[str, str]] = set()
    generic_codes: set[str] = set()
    types = [t for module in MODULES for t in module.types]
    for router in routers():
        for route in router.routes:
            assert isinstance(route, APIRoute)
            path = re.sub(r"\{[^}]+\}", "{}", route.path).removeprefix("/fhir")
            for method in route.methods or set():
                if path.startswith("/{}") and (method, path.removeprefix("/{}")) in GENERIC_ROUTES:
                    code = GENERIC_ROUTES[(method, path.removeprefix("/{}"))]
                    generic_codes.add(code)
                    # Flags and $validate are declared apart from the interaction codes.
                    if code in DERIVED_CODES:
                        interactions |= {(t.name, code) for t in types if _generic(code, t)}
                    continue
                dollar = re.search(r"/\$([a-z-]+)", path)
                if dollar:
                    operations.add(dollar.group(1))
                    continue
                match = re.fullmatch(r"/([A-Z][A-Za-z]+)(.*)", path)
                if match is None:
                    base.add((method, path))
                    continue
                resource_type, rest = match.groups()
                code = ROUTE_INTERACTIONS.get((method, rest))
                assert code is not None, f"{method} {route.path} is no FHIR interaction"
                interactions.add((resource_type, code))
    assert generic_codes == set(GENERIC_ROUTES.values())
    return interactions, operations, base


def test_every_declared_interaction_is_served_and_every_served_one_declared() -> None:
    interactions, operations, base = _served()
    assert _declared() == interactions
    declared_operations = {name for module in MODULES for name in module.operations}
    assert declared_operations == operations - EXPORT_FOLLOW_UPS
    # transaction and batch: POST [base]; POST [base]/<type>/_search is each type's GET search.
    system = {code for module in MODULES for code in module.system_interactions}
    assert system == {"transaction", "batch", "history-system"}
    # POST [type] is each type's create behind If-None-Exist; at an unknown type, GET [type] and
    # GET [type]/[id] are a 404 (not the 405 the conditional PUT/DELETE and PATCH would give).
    assert base == {
        ("POST", ""),
        ("POST", "/"),
        ("POST", "/{}/_search"),
        ("GET", "/_history"),
        ("GET", "/{}"),
        ("GET", "/{}/{}"),
        ("POST", "/{}"),
    }


def test_metadata_lists_exactly_what_the_modules_declare(sqlite_runtime: Runtime) -> None:
    statement = TestClient(create_app(sqlite_runtime)).get("/fhir/metadata").json()
    rest = statement["rest"][0]
    listed = {(r["type"], i["code"]) for r in rest["resource"] for i in r["interaction"]}
    assert listed == _declared()
    params = {(r["type"], p["name"], p["type"]) for r in rest["resource"] for p in r["searchParam"]}
    assert params == {(t.name, n, k) for m in MODULES for t in m.types for n, k in t.search.items()}
    assert {o["name"] for o in rest["operation"]} == {n for m in MODULES for n in m.operations}
    assert sorted(i["code"] for i in rest["interaction"]) == ["batch", "history-system", "transaction"]
    flags = {
        (r["type"], r["conditionalUpdate"], r["conditionalDelete"], "operation" in r)
        for r in rest["resource"]
    }
    assert flags == {
        (t.name, t.conditional_update, "single" if t.conditional_delete else "not-supported", t.validates)
        for m in MODULES
        for t in m.types
    }
    conditional = {r["type"] for r in rest["resource"] if r["conditionalCreate"]}
    assert conditional == {t.name for m in MODULES for t in m.types if t.creates_conditionally}
    assert conditional == {
        t.name for m in MODULES for t in m.types if {"create", "search-type"} <= set(t.interactions)
    }


def test_a_bundle_writes_only_what_a_type_declares_and_the_app_mounts_every_module(
    sqlite_runtime: Runtime,
) -> None:
    assert registry.installed() == MODULES
    declared = _declared()
    for module in MODULES:
        for t in module.types:
            writes = t.writes
            if writes is None:
                continue
            assert registry.writes(t.name) is writes
            assert (writes.create is not None) <= ((t.name, "create") in declared)
            assert (writes.update is not None) <= ((t.name, "update") in declared)
            assert (writes.delete is not None) <= ((t.name, "delete") in declared)
            # A Bundle names each write's operation before it runs it.
            assert (writes.create is None) == (writes.creates is None)
            assert (writes.update is None) == (writes.updates is None)
            assert (writes.delete is None) or (writes.current is not None)
    # The app mounts every installed module: each of its routes is in the app's OpenAPI paths.
    paths = create_app(sqlite_runtime).openapi()["paths"]
    for router in routers():
        for route in router.routes:
            assert isinstance(route, APIRoute)
            if route.include_in_schema:
                assert {m.lower() for m in route.methods or set()} <= set(paths.get(route.path, {}))


def test_every_declared_search_parameter_is_served_and_includes_are_listed(sqlite_runtime: Runtime) -> None:
    """What a type declares it searches by, the engine takes under `Prefer: handling=strict`
    (which refuses anything it does not serve); `_include` / `_revinclude` are listed as served."""
    from starlette.requests import Request

    from carnet.fhir.core.search import parse, revinclude_values

    samples = {
        "token": "x",
        "date": "ge2026-01-01",
        "string": "Abcd",
        "reference": "Patient/1",
        "special": "",
    }
    for module in MODULES:
        for t in module.types:
            if t.searcher is None:
                continue
            assert t.search == t.searcher.declared()
            for name, kind in t.search.items():
                key = "_has:CareTeam:patient:participant" if name == "_has" else name
                value = "Practitioner/1" if name == "_has" else samples[kind]
                scope = {
                    "type": "http",
                    "method": "GET",
                    "path": f"/fhir/{t.name}",
                    "query_string": f"{key}={value}".encode(),
                    "headers": [(b"prefer", b"handling=strict")],
                }
                query = parse(Request(scope), t.searcher)
                assert query.criteria or query.has, (t.name, name)
    statement = TestClient(create_app(sqlite_runtime)).get("/fhir/metadata").json()
    listed = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert listed["Observation"]["searchInclude"] == [
        "Observation:subject",
        "Observation:patient",
        "Observation:encounter",
        "Observation:based-on",
    ]
    assert "Observation:subject" in listed["Patient"]["searchRevInclude"]
    assert listed["Patient"].get("searchRevInclude") == revinclude_values("Patient")
