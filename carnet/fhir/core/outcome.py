"""OperationOutcome: every FHIR error says clearly what went wrong, and never leaks patient data."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from carnet.kernel import errors

FHIR_JSON = "application/fhir+json"


class Unsupported(errors.InvalidInput):
    """Something asked that carnet does not serve (a search parameter, a modifier): 400, said so."""


# carnet error -> (HTTP status, FHIR issue type code). A forbidden record answers like a missing one.
_MAPPING: dict[type[errors.CarnetError], tuple[int, str]] = {
    Unsupported: (400, "not-supported"),
    errors.NotFound: (404, "not-found"),
    errors.Forbidden: (403, "forbidden"),
    errors.InvalidInput: (400, "invalid"),
    errors.Conflict: (412, "conflict"),
    errors.AuthenticationRequired: (401, "login"),
    errors.StepUpRequired: (401, "security"),
    errors.AccountContained: (403, "suspended"),
    errors.Throttled: (429, "throttled"),
    errors.ConfigurationError: (503, "exception"),
}


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(
    status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        operation_outcome(code, diagnostics), status_code=status, media_type=FHIR_JSON, headers=headers
    )


def status_for(exc: errors.CarnetError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in _MAPPING:
            return _MAPPING[cls]
    return 500, "exception"


async def carnet_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.CarnetError)
    status, code = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, errors.Throttled):
        headers = {"Retry-After": str(max(1, exc.retry_after_seconds))}
    message = str(exc) or type(exc).__name__
    if isinstance(exc, errors.ConfigurationError):
        message = "the service is not available"  # details stay in the server's log
    return outcome_response(status, code, message, headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Name the offending fields, never echo their values (they may be patient data).
    places = sorted({".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()})
    return outcome_response(400, "invalid", "invalid request: check " + ", ".join(places))


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}.get(
        exc.status_code, "processing"
    )
    return outcome_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # Fail closed: no detail leaves; the traceback goes to the server log only.
    return outcome_response(500, "exception", "internal error; nothing was changed")
