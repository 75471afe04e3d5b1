"""`POST [base]/[type]/_search`: a FHIR search whose parameters travel in a form body.

Identifiers, names and birth dates in a GET query string end up in browser histories, proxy and
server logs; the standard's POST form keeps them in the body. The request is authenticated as a
POST (a session cookie needs its CSRF header), then served by the very route that serves
`GET [base]/[type]`, called as a request of the same actor: it authorizes, audits and accounts
exactly as a GET search does.
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from carnet.identity.dependencies import current_actor
from carnet.kernel.errors import InvalidInput, NotFound

router = APIRouter(prefix="/fhir", tags=["fhir"])
FORM = "application/x-www-form-urlencoded"
MAX_BODY = 16_384  # search parameters, not documents
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,40}$")


@router.post(
    "/{resource_type}/_search",
    summary="Search with the parameters in a form body (application/x-www-form-urlencoded)",
    openapi_extra={
        "requestBody": {
            "content": {FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}}
        }
    },
)
async def post_search(request: Request, resource_type: str) -> Response:
    if not _TYPE.match(resource_type):
        raise NotFound("no such resource type")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and media_type != FORM:
        raise InvalidInput(f"a _search body is {FORM}")
    if len(body) > MAX_BODY:
        raise InvalidInput("the search parameters are too long")
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the search parameters are not a valid form body") from None
    # Authenticated as what it is, a POST: a session cookie must bring its CSRF header.
    await anyio.to_thread.run_sync(current_actor, request)
    query = parse_qsl(request.url.query, keep_blank_values=True) + form
    return await anyio.to_thread.run_sync(_serve_search, request, resource_type, urlencode(query))


def _serve_search(request: Request, resource_type: str, query: str) -> Response:
    path = f"/fhir/{resource_type}"
    scope = dict(request.scope, method="GET", path=path, raw_path=path.encode(), query_string=query.encode())
    scope["path_params"] = {}  # this POST route's own ({resource_type}) are not the GET route's
    from carnet.fhir.routes import routers  # the served routers, in the app's order

    for route in (r for router in routers() for r in router.routes):
        if not isinstance(route, APIRoute) or "GET" not in (route.methods or set()):
            continue
        match, child = route.matches(scope)
        if match != Match.FULL:
            continue
        sub = Request(dict(scope, **child))
        params: dict[str, Any] = dict(child.get("path_params") or {})
        if "request" in inspect.signature(route.endpoint).parameters:
            params["request"] = sub
        response: Response = route.endpoint(**params)
        return response
    raise NotFound(f"{resource_type} is not searchable here")
