"""What every FHIR route shares: the request's gate, token scopes, versions (ETag / If-Match),
FHIR JSON answers (the one media type served: content negotiation is `_format` accepted and
ignored), dates, references, and input validated by fhir.resources."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from fastapi import Body, Request
from fastapi.responses import Response
from pydantic import ValidationError

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.fhir.core.outcome import FHIR_JSON, operation_outcome
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.phi.gate import Gate

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


def version_or_current(request: Request, current: Callable[[], Any]) -> int:
    """A delete's version: If-Match, or else the current one (read through the gate)."""
    version = parse_version(request.headers.get("if-match"))
    if version is not None:
        return version
    version_id: int | None = current().version_id
    return version_id or 1


# orjson writes the answer (a third of the stdlib's time on a Patient); datetimes and dataclasses
# pass through to `str` and non-string keys are written as strings, so the bytes read back to
# exactly what json.dumps(..., default=str) gave (tests/fhir/test_json_output.py).
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def fhir_json(resource: Any) -> bytes:
    """A FHIR answer's body: UTF-8 JSON, characters unescaped."""
    return orjson.dumps(resource, default=str, option=_ORJSON)


def fhir_response(
    resource: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if headers is not None and status == 200:
        return FhirAnswer(fhir_json(resource), headers)
    return Response(fhir_json(resource), status_code=status, media_type=FHIR_JSON, headers=headers)


_FHIR_JSON_TYPE = (b"content-type", FHIR_JSON.encode("latin-1"))


class FhirAnswer(Response):
    """A 200 answer of FHIR JSON with its headers, as `Response(body, media_type=FHIR_JSON,
    headers=headers)` makes it (the same attributes, the same raw headers in the same order:
    tests/fhir/test_fhir_answer.py), built without Response's generic rendering."""

    media_type = FHIR_JSON

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        keys = [k for k, _v in raw]
        if b"content-length" not in keys:
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if b"content-type" not in keys:
            raw.append(_FHIR_JSON_TYPE)
        self.raw_headers = raw

    @classmethod
    def of(cls, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> FhirAnswer:
        """The answer with its raw headers as `__init__` would have made them."""
        answer = cls.__new__(cls)
        answer.status_code = 200
        answer.background = None
        answer.body = body
        answer.raw_headers = raw_headers
        return answer


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PREFER_RETURN = re.compile(r"(?:^|[;,\s])return\s*=\s*\"?([A-Za-z]+)\"?", re.IGNORECASE)


def resource_response(request: Request, resource: dict[str, Any], *, status: int = 200) -> Response:
    """One resource as the answer to a read or a write: `ETag` (its version), `Last-Modified`
    (its meta.lastUpdated), `Location` when created.

    A read (GET, or HEAD) answers 304 Not Modified with no body when the client's copy is the
    current one (`If-None-Match` names this version, or `If-Modified-Since` is not before its
    last change). The gate has already authorized, audited and counted the read by the time the
    resource reaches this point: a 304 shows no content, but it confirms what the client holds
    is current, so it is an access like any other (docs/FHIR.md, "Conditional reads").
    A write honours `Prefer: return=minimal | representation | OperationOutcome`."""
    version = (resource.get("meta") or {}).get("versionId")
    headers = {"ETag": etag(int(version) if version else None)}
    modified = _http_date((resource.get("meta") or {}).get("lastUpdated"))
    if modified is not None:
        headers["Last-Modified"] = modified
    if status == 201:
        headers["Location"] = (
            f"{base_url(request)}/{resource['resourceType']}/{resource['id']}/_history/{version or 1}"
        )
    if request.method == "GET" and status == 200 and _not_modified(request, headers["ETag"], resource):
        return Response(status_code=304, headers=headers)
    if request.method in _WRITES:
        preferred = prefer_return(request)
        if preferred == "minimal":
            return Response(status_code=status, headers=headers)
        if preferred == "operationoutcome":
            done = "created" if status == 201 else "updated"
            text = f"{resource['resourceType']}/{resource['id']} {done} (version {version or 1})"
            return fhir_response(
                operation_outcome("informational", text, severity="information"),
                status=status,
                headers=headers,
            )
    return fhir_response(resource, status=status, headers=headers)


def read_response(request: Request, resource: dict[str, Any]) -> Response:
    """`resource_response(request, resource)` for a read (status 200), built without its
    generic steps: the same answer, headers and bytes (tests/fhir/test_read_response.py)."""
    if request.scope["method"] in _WRITES:
        return resource_response(request, resource)
    meta = resource.get("meta") or {}
    version = meta.get("versionId")
    tag = etag(int(version) if version else None)
    updated = meta.get("lastUpdated")
    modified = _http_date(updated) if updated else None
    if request.scope["method"] == "GET":
        wanted, since = _conditions(request)
        if (wanted is not None or since is not None) and _not_modified(request, tag, resource):
            headers = {"ETag": tag}
            if modified is not None:
                headers["Last-Modified"] = modified
            return Response(status_code=304, headers=headers)
    body = fhir_json(resource)
    raw = [(b"etag", tag.encode("latin-1"))]
    if modified is not None:
        raw.append((b"last-modified", modified.encode("latin-1")))
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append(_FHIR_JSON_TYPE)
    return FhirAnswer.of(body, raw)


def prefer_return(request: Request) -> str:
    """The `return` preference of a write (RFC 7240): minimal, representation (the default)
    or operationoutcome; anything else is the default, as the RFC asks of unknown values."""
    match = _PREFER_RETURN.search(request.headers.get("prefer", ""))
    value = match.group(1).lower() if match else "representation"
    return value if value in ("minimal", "representation", "operationoutcome") else "representation"


def _http_date(value: Any) -> str | None:
    if not value:
        return None
    text = value if type(value) is str else str(value)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if "Z" in text else text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    # `email.utils.format_datetime(moment, usegmt=True)`, written here (seven calls less a read).
    t = moment.astimezone(dt.UTC).timetuple()
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (  # noqa: UP031  (format_datetime's own)
        _DAYS[t[6]],
        t[2],
        _MONTHS[t[1] - 1],
        t[0],
        t[3],
        t[4],
        t[5],
    )


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _not_modified(request: Request, current: str, resource: dict[str, Any]) -> bool:
    """RFC 9110 13.1.2-13.1.3: If-None-Match (weak comparison) wins over If-Modified-Since."""
    wanted, since = _conditions(request)
    if wanted is not None:
        tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
        return "*" in tags or current.removeprefix("W/") in tags
    updated = (resource.get("meta") or {}).get("lastUpdated")
    if since is None or not updated:
        return False
    try:
        client = parsedate_to_datetime(since)
        moment = dt.datetime.fromisoformat(str(updated).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored, as RFC 9110 says
    if client.tzinfo is None or moment.tzinfo is None:
        return False
    # HTTP dates have whole seconds: a change within the same second is not "after".
    return moment.replace(microsecond=0) <= client


def _conditions(request: Request) -> tuple[str | None, str | None]:
    """The request's If-None-Match and If-Modified-Since, as `request.headers.get` gives them
    (the first of each; ASGI header names are lower case), read in one pass over the headers."""
    wanted = since = None
    for key, value in request.scope["headers"]:
        if key == b"if-none-match":
            if wanted is None:
                wanted = value.decode("latin-1")
        elif key == b"if-modified-since" and since is None:
            since = value.decode("latin-1")
    return wanted, since


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


# The body of a FHIR create or update: a resource in FHIR JSON.
FhirBody = Body(..., media_type=FHIR_JSON)
