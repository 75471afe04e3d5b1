"""A request that finds the database gone (a failover under way, a restart) answers 503 with
Retry-After and changes nothing, instead of a bare 500: clients and load balancers retry it."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from carnet.app import RETRY_AFTER_SECONDS, create_app
from carnet.runtime import Runtime


def test_a_request_during_a_database_outage_is_a_503_with_retry_after(sqlite_runtime: Runtime) -> None:
    # A real driver error: PostgreSQL on a loopback port where nothing listens.
    gone = sa.create_engine("postgresql+psycopg://carnet@127.0.0.1:1/nowhere", pool_pre_ping=False)
    outage = dataclasses.replace(sqlite_runtime, session_factory=sessionmaker(gone))
    with TestClient(create_app(outage), raise_server_exceptions=False) as client:
        read = client.get("/fhir/Patient/1", headers={"Authorization": "Bearer some-token"})
    gone.dispose()
    assert read.status_code == 503, read.text
    assert read.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = read.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"
    assert "127.0.0.1" not in read.text and "nowhere" not in read.text  # no connection detail leaves
