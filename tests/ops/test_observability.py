"""Health, readiness, metrics, traces and logs: useful to an operator, silent about patients."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from carnet.app import create_app
from carnet.operations.logs import JsonFormatter
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.factories import make_facility, make_physician
from tests.ops.helpers import free_port, physician_with_patient

INS = "2820375000044"
PHONE = "06 12 34 56 78"  # what tests/factories.register_patient gives every patient
EMAIL = "patient@example.org"


@pytest.fixture
def served(sqlite_runtime: Runtime) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(sqlite_runtime), host="127.0.0.1", port=port, log_config=None, access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


class Captured(logging.Handler):
    """Every server-side log record, formatted as carnet formats them in production."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("httpx", "httpcore")):  # the test's own client, not the server
            self.lines.write(self.format(record) + "\n")


def test_readyz_names_each_dependency_and_fails_when_one_is_down(sqlite_runtime: Runtime) -> None:
    with TestClient(create_app(sqlite_runtime)) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "database": "ok", "redis": "not configured", "key_file": "ok", "audit_head": "ok",
        }  # fmt: skip
        sqlite_runtime.settings = sqlite_runtime.settings.model_copy(
            update={"redis_url": "redis://127.0.0.1:1/0"}
        )
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["checks"]["redis"].startswith("failed")
        sqlite_runtime.settings = sqlite_runtime.settings.model_copy(
            update={"redis_url": "redis://127.0.0.1:6379/0"}
        )
        assert client.get("/readyz").status_code == 200
        key_file = sqlite_runtime.settings.resolved_key_file
        key_file.rename(key_file.with_suffix(".away"))
        gone = client.get("/readyz")
        assert gone.status_code == 503 and gone.json()["checks"]["key_file"].startswith("failed")
        assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_metrics_need_the_token_outside_demo_and_test(sqlite_runtime: Runtime) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(
        update={"env": Environment.PRODUCTION, "metrics_token": "s3cret-scrape-token"}
    )
    with TestClient(create_app(sqlite_runtime)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert ok.status_code == 200 and "carnet_http_requests_total" in ok.text
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"metrics_token": None})
    with TestClient(create_app(sqlite_runtime)) as client:  # no token configured: closed
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_metrics_traces_and_logs_of_a_workload_name_no_patient(
    sqlite_runtime: Runtime, served: str, spans: InMemorySpanExporter
) -> None:
    family, given = "Quenouille", "Bérangère"
    reader = physician_with_patient(sqlite_runtime, family=family, given=given, ins=INS)
    stranger = physician_with_patient(sqlite_runtime, family="Vautrinel", given="Sidonie")
    outsider_headers = stranger.headers  # a physician with no care relationship to our patient
    captured = Captured()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(captured)
    root.setLevel(logging.DEBUG)
    try:
        with httpx.Client(base_url=served, headers=reader.headers, timeout=20) as client:
            assert client.get(f"/fhir/Patient/{reader.patient_id}").status_code == 200
            for query in (
                {"family": family}, {"family": family, "given": given}, {"identifier": INS},
                {"telecom": PHONE}, {"email": EMAIL}, {"name": f"{given} {family}"},
            ):  # fmt: skip
                assert client.get("/fhir/Patient", params=query).status_code < 500
            assert client.get(f"/fhir/Patient/{INS}").status_code == 404  # an identifier in the path
            assert client.get(f"/patients/{family}").status_code < 500
            bad = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]})
            assert bad.status_code < 500
        with httpx.Client(base_url=served, headers=outsider_headers, timeout=20) as client:
            assert client.get(f"/fhir/Patient/{reader.patient_id}").status_code in (403, 404)
        with httpx.Client(base_url=served, timeout=20) as client:
            client.post("/login", data={"username": EMAIL, "password": family})
            client.get("/readyz")
            metrics = client.get("/metrics").text
    finally:
        root.removeHandler(captured)
        root.setLevel(previous)
    logs = captured.lines.getvalue()
    traces = json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "status": s.status.description,
            }
            for s in spans.get_finished_spans()
        ],
        ensure_ascii=False,
    )
    # The scan has something to scan: the workload shows in each of the three.
    assert (
        'route="/fhir/Patient/{patient_id}"' in metrics
        and 'carnet_gate_decisions_total{outcome="success"}' in metrics
    )
    assert 'carnet_exposures_total{channel="chart"}' in metrics and "carnet_audit_chain_length" in metrics
    assert "carnet_audit_append_duration_seconds_count" in metrics and "carnet_db_pool_checked_out" in metrics
    names = {s.name for s in spans.get_finished_spans()}
    assert {
        "GET /fhir/Patient/{patient_id}",
        "gate.context",
        "gate.operation",
        "gate.exposure",
        "gate.audit",
    } <= names, names
    assert "gate.denial" in names
    assert "GET /fhir/Patient/{patient_id} 200" in logs and "trace_id" in logs
    secrets = [family, given, INS, PHONE, PHONE.replace(" ", ""), EMAIL, "Vautrinel", "Sidonie"]
    for where, text in (("metrics", metrics), ("traces", traces), ("logs", logs)):
        hits = [s for s in secrets if s.lower() in text.lower()]
        where_found = [part for part in text.split("}, {") if any(h.lower() in part.lower() for h in hits)]
        assert hits == [], f"patient data in {where}: {hits} in {where_found[:3]}"


def test_json_logs_carry_no_exception_message(tmp_path: Path) -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("DETAIL: Key (family)=(Quenouille) already exists")
    except ValueError:
        record = logging.LogRecord("carnet.x", logging.ERROR, __file__, 1, "insert failed", None, None)
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert line["exception"] == "ValueError" and line["message"] == "insert failed"
    assert "Quenouille" not in json.dumps(line)


def test_a_physician_with_no_care_relationship_is_a_denied_gate_decision(sqlite_runtime: Runtime) -> None:
    facility = make_facility(sqlite_runtime)
    make_physician(sqlite_runtime, facility)
    from carnet.operations import metrics

    before = metrics.GATE_DECISIONS.labels(outcome="denied")._value.get()
    reader = physician_with_patient(sqlite_runtime)
    stranger = physician_with_patient(sqlite_runtime, family="Autre", given="Personne")
    with TestClient(create_app(sqlite_runtime)) as client:
        response = client.get(f"/fhir/Patient/{reader.patient_id}", headers=stranger.headers)
    assert response.status_code in (403, 404)
    assert metrics.GATE_DECISIONS.labels(outcome="denied")._value.get() == before + 1
