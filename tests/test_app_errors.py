"""Errors answer with an OperationOutcome that explains, and never a traceback or patient data."""

from __future__ import annotations

from fastapi.testclient import TestClient

from carnet.app import create_app
from carnet.runtime import Runtime


def test_metadata_is_a_capability_statement(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


def test_unknown_fhir_path_is_an_operation_outcome(sqlite_runtime: Runtime) -> None:
    client = TestClient(create_app(sqlite_runtime))
    response = client.get("/fhir/NoSuchThing/1")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_throttling_answers_429_with_retry_after() -> None:
    import asyncio

    from starlette.requests import Request

    from carnet.fhir.core.outcome import carnet_error_handler
    from carnet.kernel.errors import Throttled

    request = Request({"type": "http", "method": "GET", "path": "/fhir/Patient", "headers": []})
    response = asyncio.run(carnet_error_handler(request, Throttled("slow down", retry_after_seconds=30)))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert b'"throttled"' in response.body
