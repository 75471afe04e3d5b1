"""What every FHIR route shares: the request's gate, token scopes, versions (ETag / If-Match),
FHIR JSON answers, searchset and history Bundles, and input validated by fhir.resources."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Match

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.fhir.outcome import FHIR_JSON
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import VersionView

# A section read through the gate is paged here; this bounds one answer.
MAX_COUNT = 100
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


_ACTION_KINDS = {
    "read": AuditKind.PHI_READ,
    "search": AuditKind.PHI_SEARCH,
    "create": AuditKind.PHI_CREATE,
    "update": AuditKind.PHI_UPDATE,
    "delete": AuditKind.PHI_DELETE,
}


def gate_for(request: Request, resource_type: str, action: str) -> Gate:
    """The gate of this request's actor, after checking a token's SMART scopes (if any)."""
    actor = current_actor(request)
    runtime = runtime_of(request)
    try:
        require_scope(actor, resource_type=resource_type, action=action)
    except Forbidden as exc:
        # Refused before the gate: audited here, so no refusal goes unrecorded.
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=_ACTION_KINDS[action],
                    outcome=Outcome.DENIED,
                    actor=actor,
                    resource_type=resource_type,
                    policy_reason=f"token scope: {exc}"[:500],
                ),
            )
        raise
    return Gate(runtime, actor)


def type_name(value: Any) -> str:
    """A resource type as it may be echoed in a report: a type name, or 'unknown' (never data)."""
    text = str(value) if value is not None else ""
    return text if re.fullmatch(r"[A-Z][A-Za-z]{0,63}", text) else "unknown"


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def etag(version: int | None) -> str:
    return f'W/"{version or 1}"'


def parse_version(value: str | None) -> int | None:
    if value is None:
        return None
    match = _ETAG.match(value)
    if match is None:
        raise InvalidInput('If-Match must be a version tag such as W/"3"')
    return int(match.group(1))


def expected_version(request: Request, body: dict[str, Any]) -> int:
    """The version the client last saw: If-Match, or else the body's meta.versionId.

    An update without either is refused: overwriting blind would lose someone's change."""
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        meta = body.get("meta") or {}
        raw = meta.get("versionId") if isinstance(meta, dict) else None
        version = parse_version(str(raw)) if raw is not None else None
    if version is None:
        raise InvalidInput("an update needs If-Match (or meta.versionId) with the version you read")
    return version


def fhir_response(
    resource: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(resource, default=str, ensure_ascii=False),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


def resource_response(request: Request, resource: dict[str, Any], *, status: int = 200) -> Response:
    version = (resource.get("meta") or {}).get("versionId")
    headers = {"ETag": etag(int(version) if version else None)}
    if status == 201:
        headers["Location"] = (
            f"{base_url(request)}/{resource['resourceType']}/{resource['id']}/_history/{version or 1}"
        )
    return fhir_response(resource, status=status, headers=headers)


def validated(model: Any, body: Any, resource_type: str) -> dict[str, Any]:
    """Validate a resource with its fhir.resources R4B model; answer which fields are wrong,
    never their values (they may be patient data)."""
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        raise InvalidInput(f"the body must be a {resource_type} resource")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        places = sorted({".".join(str(p) for p in err.get("loc", ())) or "resource" for err in exc.errors()})
        raise InvalidInput(f"invalid {resource_type}: check " + ", ".join(places[:10])) from None
    # Valid as sent: the mappers read the JSON itself (a deep copy, so nobody else's dict changes).
    data: dict[str, Any] = json.loads(json.dumps(body))
    return data


def checked(model: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """Validate what leaves against the R4B model (a mapping bug fails closed, as a 500)."""
    model.model_validate(resource)
    return resource


def count_param(request: Request, default: int = 20, maximum: int = MAX_COUNT) -> int:
    raw = request.query_params.get("_count")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"_count must be between 1 and {maximum}")
    return int(raw)


def page_param(request: Request, maximum: int = 1000) -> int:
    raw = request.query_params.get("_page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"_page must be between 1 and {maximum}")
    return int(raw)


def reference_id(value: str | None, resource_type: str) -> str | None:
    """'Patient/abc', a full URL ending so, or a bare id -> 'abc'."""
    if value is None:
        return None
    value = value.strip()
    if "/" in value:
        parts = value.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != resource_type:
            raise InvalidInput(f"expected a reference to a {resource_type}")
        value = parts[-1]
    if not value:
        raise InvalidInput(f"expected a reference to a {resource_type}")
    return value


def searchset(
    request: Request,
    resource_type: str,
    resources: Sequence[dict[str, Any]],
    *,
    page: int,
    has_more: bool,
    total: int | None = None,
) -> Response:
    base = base_url(request)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "_page"]

    def link(relation: str, number: int) -> dict[str, str]:
        query = urlencode([*params, ("_page", str(number))])
        return {"relation": relation, "url": f"{base}/{resource_type}?{query}"}

    links = [link("self", page)]
    if has_more:
        links.append(link("next", page + 1))
    if page > 1:
        links.append(link("previous", page - 1))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    if total is not None:
        bundle["total"] = total
    return fhir_response(bundle)


def paged(
    request: Request,
    resource_type: str,
    resources: Sequence[dict[str, Any]],
) -> Response:
    """Page a chart section (already bounded by the gate) with _count and _page."""
    count = count_param(request)
    page = page_param(request)
    start = (page - 1) * count
    chunk = list(resources[start : start + count])
    return searchset(
        request,
        resource_type,
        chunk,
        page=page,
        has_more=len(resources) > start + count,
        total=len(resources),
    )


def history_bundle(
    request: Request,
    resource_type: str,
    versions: Sequence[VersionView],
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    base = base_url(request)
    entries = []
    for v in reversed(versions):  # newest first, as FHIR history is
        resource = versioned(to_fhir(snapshot(v)), v)
        method = {"create": "POST", "update": "PUT", "delete": "DELETE"}.get(v.action, "PUT")
        entries.append(
            {
                "fullUrl": f"{base}/{resource_type}/{v.resource_id}",
                "resource": resource,
                "request": {"method": method, "url": f"{resource_type}/{v.resource_id}"},
                "response": {
                    "status": "201" if v.action == "create" else "200",
                    "etag": etag(v.version_id),
                    "lastModified": instant(v.recorded_at),
                },
            }
        )
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "history",
            "total": len(entries),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": entries,
        }
    )


def history_response(
    request: Request,
    resource_type: str,
    resource_id: str,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """`GET [type]/[id]/_history`: every kept version, through the gate's audited history."""
    gate = gate_for(request, resource_type, "read")
    versions = gate.history(resource_type=resource_type, resource_id=resource_id)
    return history_bundle(request, resource_type, versions, to_fhir)


def vread_response(
    request: Request,
    resource_type: str,
    resource_id: str,
    version_id: str,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """`GET [type]/[id]/_history/[vid]`: one kept version, through the gate's audited history."""
    gate = gate_for(request, resource_type, "read")
    for v in gate.history(resource_type=resource_type, resource_id=resource_id):
        if str(v.version_id) == version_id:
            return resource_response(request, versioned(to_fhir(snapshot(v)), v))
    raise NotFound("no such version")


def snapshot(v: VersionView) -> dict[str, Any]:
    return dict(v.data, id=v.resource_id, version_id=v.version_id)


def versioned(resource: dict[str, Any], v: VersionView) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(v.version_id)
    meta["lastUpdated"] = instant(v.recorded_at)
    return dict(resource, meta=meta)


def instant(value: dt.datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def parse_instant(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be a date-time with a time zone") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} must be a date-time with a time zone")
    return parsed.astimezone(dt.UTC)


def serve_get(request: Request, path: str, query: str) -> Response:
    """`GET <path>?<query>` answered by the route that serves it, as a request of the same actor
    (it authorizes, audits and accounts as it always does): batch GET entries, POST _search."""
    scope = dict(request.scope, method="GET", path=path, raw_path=path.encode(), query_string=query.encode())
    scope["path_params"] = {}  # the calling route's own are not the GET route's
    from carnet.fhir.routes import routers  # the served routers, in the app's order

    for route in (r for router in routers() for r in router.routes):
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
