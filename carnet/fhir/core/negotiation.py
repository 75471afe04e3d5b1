"""Content negotiation and HEAD for every FHIR route, before any route runs (R4 http.html).

- carnet answers JSON only: an `Accept` that admits no JSON media type, or a `_format` naming
  another one (`xml`, `application/fhir+xml`, `ttl`), answers 406 with an OperationOutcome.
- A request body must be JSON (`application/fhir+json`, `application/json`), a JSON Patch
  (`application/json-patch+json`, `application/merge-patch+json`) or, for `_search`, a form:
  any other `Content-Type` answers 415 with an OperationOutcome, and nothing runs.
- `HEAD` on a read or a search is served as the `GET` it mirrors (same authorization, audit and
  exposure accounting, same status and headers) with the body left out; on an operation
  (`/$...`) it is refused (405): a one-time download must not be consumed unseen.

Nothing here reads patient data or authenticates: it refuses what no route could answer, and
so leaves no trace to audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carnet.fhir.core.outcome import FHIR_JSON, operation_outcome

PREFIX = "/fhir"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
FORM = "application/x-www-form-urlencoded"
# What carnet can answer: FHIR JSON, or the NDJSON of a bulk export (itself JSON lines).
_ANSWERED = frozenset(
    {
        FHIR_JSON,
        "application/json",
        "application/json+fhir",  # DSTU2-era clients still send it
        "application/fhir+ndjson",
        "application/ndjson",
        "application/*",
        "*/*",
    }
)
_FORMATS = frozenset({"json", "application/json", FHIR_JSON, "application/json+fhir"})
_BODIES = frozenset({FHIR_JSON, "application/json", "application/json+fhir", JSON_PATCH, MERGE_PATCH, FORM})


def acceptable(accept: str) -> bool:
    """Whether an Accept header admits one of the types carnet answers (a q=0 type does not)."""
    if not accept.strip():
        return True
    for media_range in accept.split(","):
        kind, *params = (p.strip() for p in media_range.split(";"))
        quality = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
        try:
            refused = float(quality) <= 0
        except ValueError:
            refused = False
        if kind.lower() in _ANSWERED and not refused:
            return True
    return False


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _format(query: str) -> str | None:
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "_format"]
    return values[-1] if values else None


class FhirNegotiation:
    """ASGI middleware: 406 and 415 for what carnet cannot answer or read; HEAD as GET."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        wanted = _format(scope.get("query_string", b"").decode("latin-1"))
        if wanted is not None and wanted.split(";")[0].strip().lower() not in _FORMATS:
            await _refuse(send, 406, "not-supported", "carnet answers FHIR JSON only (_format=json)")
            return
        if not acceptable(_header(headers, b"accept") or ""):
            await _refuse(send, 406, "not-supported", f"carnet answers {FHIR_JSON} only (Accept)")
            return
        method = scope.get("method", "GET")
        content_type = _header(headers, b"content-type")
        if method in ("POST", "PUT", "PATCH") and content_type is not None:
            media = content_type.split(";")[0].strip().lower()
            if media and media not in _BODIES:
                await _refuse(
                    send,
                    415,
                    "not-supported",
                    f"a request body is {FHIR_JSON} (or a JSON Patch), not {media}",
                )
                return
        if method != "HEAD":
            await self.app(scope, receive, send)
            return
        if "/$" in path:
            # HEAD is for reads and searches: an operation's GET may act (a bulk export's file is
            # erased once downloaded), and a HEAD must never consume what it cannot show.
            await _refuse(send, 405, "not-supported", "HEAD is served on reads and searches, not operations")
            return

        async def headers_only(message: Message) -> None:
            # The GET's status and headers (Content-Length included, as RFC 9110 allows), no body.
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)


async def _refuse(send: Send, status: int, code: str, diagnostics: str) -> None:
    body = orjson.dumps(operation_outcome(code, diagnostics))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", FHIR_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
