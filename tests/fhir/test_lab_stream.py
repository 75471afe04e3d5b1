"""A write-only lab client (SMART Backend Services, `system/Observation.c`) posts 10,000 results
as a stream of transaction Bundles with `Prefer: return=minimal`: every one is written, it is
never slowed down like a person (no 429), never contained, and it exposes no patient."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import func, select

from carnet.identity.models import ApiClient
from carnet.phi.gate import TRANSACTION_LIMIT
from carnet.records.models import Observation
from tests.factories import make_facility, register_patient
from tests.fhir.conftest import Server
from tests.fhir.test_backend_clients import _client, _exposed, _token
from tests.fhir.test_stays_and_reports import _result

RESULTS = 10_000
PATIENTS = 50


def test_a_lab_client_streams_ten_thousand_results_unthrottled_exposing_nobody(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    here = make_facility(runtime)
    patients = [register_patient(runtime, here, family=f"Flux{i}").id for i in range(PATIENTS)]
    key = _client(runtime, "lab-stream", "system/Observation.c", here)
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
    statuses: list[int] = []
    written = 0
    token_at = float("-inf")
    with httpx.Client(base_url=fhir_server.url, headers=headers, timeout=300) as http:
        for start in range(0, RESULTS, TRANSACTION_LIMIT):
            # Tokens live 5 minutes: the client signs a new assertion before its token expires,
            # as a Backend Services client does (a slow, loaded machine can take longer than one).
            if time.monotonic() - token_at > 180:
                token = _token(runtime, "lab-stream", key, "system/Observation.c")
                http.headers["Authorization"] = f"Bearer {token}"
                token_at = time.monotonic()
            entries: list[dict[str, Any]] = [
                {
                    "resource": _result(f"Patient/{patients[n % PATIENTS]}", value=10 + n % 7),
                    "request": {"method": "POST", "url": "Observation"},
                }
                for n in range(start, min(start + TRANSACTION_LIMIT, RESULTS))
            ]
            answer = http.post(
                "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
            )
            statuses.append(answer.status_code)
            assert answer.status_code == 200, answer.text[:500]
            for entry in answer.json()["entry"]:
                assert entry["response"]["status"].startswith("201")
                shown = entry.get("resource") or {}
                assert "subject" not in shown and "valueQuantity" not in shown  # nothing read back
                written += 1
    assert written == RESULTS and set(statuses) == {200}  # never 429, never 401
    assert _exposed(runtime, "lab-stream") == set()
    with runtime.session_factory() as session:
        assert session.scalar(select(ApiClient.status).where(ApiClient.client_id == "lab-stream")) == "active"
        stored = session.scalar(
            select(func.count()).select_from(Observation).where(Observation.facility_id == here)
        )
    assert stored == RESULTS
