"""`POST [base]/[type]/_search`: a FHIR search whose parameters travel in a form body.

Identifiers, names and birth dates in a GET query string end up in browser histories, proxy and
server logs; the standard's POST form keeps them in the body. The request is authenticated as a
POST (a session cookie needs its CSRF header), then served by the very route that serves
`GET [base]/[type]`, called as a request of the same actor: it authorizes, audits and accounts
exactly as a GET search does.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from carnet.fhir.core.registry import FhirModule, serve_get
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
    return await anyio.to_thread.run_sync(serve_get, request, f"/fhir/{resource_type}", urlencode(query))


MODULE = FhirModule(router=router)  # serves no type of its own: each type's GET search does
