"""Concurrent updates of one resource (exactly one wins, the other gets 412, nothing is lost)
on SQLite and PostgreSQL; an OAuth token without the right SMART scope is refused and audited."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fhirpy.base.exceptions import ForbiddenError, MultipleResourcesFound, ResourceNotFound
from joserfc.jwk import ECKey
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.identity import oauth
from tests.factories import make_account, make_facility, register_patient
from tests.fhir.conftest import Server


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_updates_exactly_one_wins(fhir_server_both: Server, writers: int) -> None:
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    patient_id = register_patient(runtime, facility, family="Concurrent").id
    clerks = [make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility) for _ in range(writers)]
    clients = [fhir_server_both.client_for(c) for c in clerks]
    copies = [c.reference("Patient", patient_id).to_resource() for c in clients]
    assert {p["meta"]["versionId"] for p in copies} == {"1"}
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []

    def write(i: int) -> None:
        copies[i]["telecom"] = [{"system": "phone", "value": f"06 00 00 00 0{i}"}]
        barrier.wait()
        try:
            copies[i].save()
            outcomes.append(f"won:{i}")
        except MultipleResourcesFound:  # HTTP 412
            outcomes.append("412")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("412") == writers - 1
    winner = int(winners[0].split(":")[1])
    final = clients[0].reference("Patient", patient_id).to_resource()
    assert final["meta"]["versionId"] == "2"
    assert final["telecom"][0]["value"] == f"06 00 00 00 0{winner}"
    # Nothing lost: the history has the original and the winning version, no more.
    history = clients[0].execute(f"Patient/{patient_id}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


TOKEN_URL = "http://localhost:8000/oauth/token"


def _token(server: Server, key: Any, scope: str) -> str:
    assertion = private_key_jwt_sign(key, "lab-system", TOKEN_URL, alg="ES384", expires_in=300)
    response = requests.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_a_token_without_the_scope_is_refused_and_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    patient_id = register_patient(runtime, facility, family="Scoped").id
    key = ECKey.generate_key("P-384", parameters={"kid": "lab-1"})
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="lab-system",
            name="Laboratory",
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes="system/Observation.rs",
        )
    client = fhir_server.bearer_client(_token(fhir_server, key, "system/Observation.rs"))
    with pytest.raises(ForbiddenError) as refused:
        client.reference("Patient", patient_id).to_resource()
    assert "scopes do not allow read on Patient" in str(refused.value)
    with runtime.session_factory() as session:
        rows = session.execute(
            select(AuditEvent.kind, AuditEvent.outcome, AuditEvent.resource_type, AuditEvent.client_id).where(
                AuditEvent.client_id == "lab-system", AuditEvent.kind.like("phi:%")
            )
        ).all()
    assert [tuple(r) for r in rows] == [("phi:resource:read", "denied", "Patient", "lab-system")]
    # With the scope, the gate still decides: an API client holds no care relationship.
    with pytest.raises(ResourceNotFound):
        client.resources("Observation").search(patient=patient_id).fetch()
    with runtime.session_factory() as session:
        kinds = session.execute(
            select(AuditEvent.kind, AuditEvent.outcome)
            .where(AuditEvent.client_id == "lab-system")
            .order_by(AuditEvent.seq)
        ).all()
    assert tuple(kinds[-1]) == ("phi:resource:read", "denied")


def test_a_batch_get_is_checked_against_the_token_like_a_lone_read(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    patient_id = register_patient(runtime, facility, family="Batch").id
    key = ECKey.generate_key("P-384", parameters={"kid": "lab-1"})
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="lab-system",
            name="Laboratory",
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes="system/Observation.rs",
        )
    client = fhir_server.bearer_client(_token(fhir_server, key, "system/Observation.rs"))
    answer = client.execute(
        "",
        method="post",
        data={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
                {"request": {"method": "GET", "url": f"Provenance?target=Patient/{patient_id}"}},
            ],
        },
    )
    assert [e["response"]["status"] for e in answer["entry"]] == ["403", "403"]
    assert "scopes do not allow" in answer["entry"][0]["response"]["outcome"]["issue"][0]["diagnostics"]
    with runtime.session_factory() as session:
        rows = session.execute(
            select(AuditEvent.kind, AuditEvent.outcome, AuditEvent.resource_type)
            .where(AuditEvent.client_id == "lab-system", AuditEvent.kind.like("phi:%"))
            .order_by(AuditEvent.seq)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("phi:resource:read", "denied", "Patient"),
        ("phi:resource:search", "denied", "Provenance"),
    ]
