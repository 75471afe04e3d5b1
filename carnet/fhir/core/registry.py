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


# The interactions the shared machinery (carnet.fhir.operations.interactions) adds to a type,
# each given by the interactions its own module serves: PATCH is a read then that update;
# `_history` at type level is the instance history, scoped like a search.
DERIVED: dict[str, tuple[str, ...]] = {
    "patch": ("read", "update"),
    "history-type": ("history-instance",),
}
# The instance-level operation every writable type answers ($validate), the same way.
VALIDATE = "validate"


@dataclass(frozen=True)
class ResourceType:
    """One resource type as the CapabilityStatement declares it: the interactions its module's
    own routes serve; `capabilities` adds what the shared machinery derives from them."""

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

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Every interaction served for this type: its own, then the derived ones."""
        derived = tuple(
            code
            for code, needs in DERIVED.items()
            if all(n in self.interactions for n in needs) and self.writes is not None
        )
        return self.interactions + derived

    @property
    def creates_conditionally(self) -> bool:
        """`POST [type]` with `If-None-Exist: [search]`: the search, then create (no match),
        the match (one) or 412 (several)."""
        return self.conditional_create or (
            "create" in self.interactions and "search-type" in self.interactions
        )

    @property
    def conditional_update(self) -> bool:
        """`PUT [type]?[search]`: the search, then that type's update (or create on no match)."""
        return "update" in self.interactions and "search-type" in self.interactions

    @property
    def conditional_delete(self) -> bool:
        """`DELETE [type]?[search]`: the search, then that type's delete; one match at most."""
        return "delete" in self.interactions and "search-type" in self.interactions

    @property
    def validates(self) -> bool:
        """`[type]/$validate`: the type can be written (its model and gate input are known)."""
        return self.writes is not None and bool({"create", "update"} & set(self.interactions))


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


def resource_type(name: str) -> ResourceType | None:
    """The declaration of a served type, or None (an unknown type is served nothing)."""
    return next((t for m in _INSTALLED for t in m.types if t.name == name), None)


def serve_get(request: Request, path: str, query: str) -> Response:
    """`GET <path>?<query>` answered by the route that serves it, as a request of the same actor
    (it authorizes, audits and accounts as it always does): batch GET entries, POST _search.
    The caller's conditional headers are not the served GET's: it answers in full, never 304."""
    return serve(request, "GET", path, query, headers={"if-none-match": "", "if-modified-since": ""})


def serve(
    request: Request,
    method: str,
    path: str,
    query: str = "",
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    skip: APIRouter | None = None,
) -> Response:
    """`<method> <path>?<query>` answered by the module route that serves it, as a request of
    the same actor (it authorizes, audits and accounts as it always does), with `body` as its
    resource and `headers` replacing the request's own (an empty value removes the header's
    effect): conditional create, update and delete, PATCH. `skip`: a router not to look in
    (the caller's own, when it serves the same path)."""
    scope = dict(request.scope, method=method, path=path, raw_path=path.encode(), query_string=query.encode())
    if headers:
        replaced = {k.lower().encode() for k in headers}
        kept = [(k, v) for k, v in request.scope.get("headers", []) if k.lower() not in replaced]
        scope["headers"] = kept + [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    scope["path_params"] = {}  # the calling route's own are not the served route's
    for route in (r for module in _INSTALLED if module.router is not skip for r in module.router.routes):
        if not isinstance(route, APIRoute) or method not in (route.methods or set()):
            continue
        if inspect.iscoroutinefunction(route.endpoint):
            continue  # a generic front (carnet.fhir.operations.interactions): served below it
        match, child = route.matches(scope)
        if match != Match.FULL:
            continue
        params: dict[str, Any] = dict(child.get("path_params") or {})
        signature = inspect.signature(route.endpoint).parameters
        if "request" in signature:
            params["request"] = Request(dict(scope, **child))
        if "body" in signature:
            if body is None:
                raise NotFound(f"nothing is served at {method} {path} without a body")
            params["body"] = body
        response: Response = route.endpoint(**params)
        return response
    raise NotFound(f"nothing is served at {method} {path}")
