"""The FHIR modules carnet serves, as the router assembly (carnet.fhir.routes) installs them.

A module declares what it serves in one `MODULE = FhirModule(...)`: its router, each resource
type with its interactions and search parameters (the CapabilityStatement is assembled from
these, so it lists what exists and nothing else), the operations and whole-system interactions
it implements, and what a transaction or batch Bundle entry may do with each type (`Writes`).
The assembly lists the modules in the order they are mounted and installs them here, so that
the shared pieces that need them (the Bundle processor, `serve_get`) find them without
importing any resource module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from carnet.fhir.core import search as searching
from carnet.kernel.errors import NotFound
from carnet.phi.gate import Gate

Mapper = Callable[[dict[str, Any]], dict[str, Any]]
# (resource, gate, the entry's ifMatch) -> (gate operation, its arguments)
Create = Callable[[dict[str, Any], Gate, str | None], tuple[str, dict[str, Any]]]
# (resource, id, version expected) -> (gate operation, its arguments)
Change = Callable[[dict[str, Any], str, int], tuple[str, dict[str, Any]]]
# (id, version expected) -> (gate operation, its arguments)
Delete = Callable[[str, int], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Writes:
    """What a transaction or batch Bundle entry may do with one resource type: the same rules
    as the type's own routes. An operation is named before the entry's `urn:uuid:` references
    are resolved: a name, or a function of the resource as sent."""

    model: Any  # the fhir.resources R4B model an entry is validated with
    to_fhir: Mapper
    creates: str | Callable[[dict[str, Any]], str] | None = None
    create: Create | None = None
    updates: str | Callable[[dict[str, Any]], str] | None = None
    update: Change | None = None
    delete: Delete | None = None
    current: Callable[[Gate, str], Any] | None = None  # the current version, for a DELETE without ifMatch


@dataclass(frozen=True)
class ResourceType:
    """One resource type as the CapabilityStatement declares it."""

    name: str
    interactions: tuple[str, ...]
    search: dict[str, str] = field(default_factory=dict)  # name -> FHIR search parameter type
    conditional_create: bool = False
    writes: Writes | None = None
    # How the type is searched (carnet.fhir.core.search); its parameters are what `search`
    # declares when `search` is not given.
    searcher: searching.Search | None = None

    def __post_init__(self) -> None:
        if self.searcher is not None and not self.search:
            object.__setattr__(self, "search", self.searcher.declared())

    @property
    def search_include(self) -> list[str]:
        return self.searcher.include_values() if self.searcher is not None else []

    @property
    def search_revinclude(self) -> list[str]:
        return searching.revinclude_values(self.name) if self.searcher is not None else []


@dataclass(frozen=True)
class FhirModule:
    router: APIRouter
    types: tuple[ResourceType, ...] = ()
    operations: dict[str, str] = field(default_factory=dict)  # name -> its OperationDefinition
    system_interactions: tuple[str, ...] = ()


_INSTALLED: list[FhirModule] = []
_WRITES: dict[str, Writes] = {}


def install(modules: Sequence[FhirModule]) -> None:
    """The assembly's modules, in the order the app mounts them (literal paths first)."""
    _INSTALLED[:] = modules
    _WRITES.clear()
    _WRITES.update({t.name: t.writes for m in modules for t in m.types if t.writes is not None})
    searching.install(t.searcher for m in modules for t in m.types if t.searcher is not None)


def installed() -> tuple[FhirModule, ...]:
    return tuple(_INSTALLED)


def writes(resource_type: str) -> Writes | None:
    return _WRITES.get(resource_type)


def serve_get(request: Request, path: str, query: str) -> Response:
    """`GET <path>?<query>` answered by the route that serves it, as a request of the same actor
    (it authorizes, audits and accounts as it always does): batch GET entries, POST _search."""
    scope = dict(request.scope, method="GET", path=path, raw_path=path.encode(), query_string=query.encode())
    scope["path_params"] = {}  # the calling route's own are not the GET route's
    for route in (r for module in _INSTALLED for r in module.router.routes):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or set()):
            continue
        match, child = route.matches(scope)
        if match != Match.FULL:
            continue
        params: dict[str, Any] = dict(child.get("path_params") or {})
        if "request" in inspect.signature(route.endpoint).parameters:
            params["request"] = Request(dict(scope, **child))
        response: Response = route.endpoint(**params)
        return response
    raise NotFound(f"nothing is served at GET {path}")
