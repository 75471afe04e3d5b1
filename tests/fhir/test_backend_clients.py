"""SMART Backend Services clients through the FHIR API (fhirpy + a real RFC 7523 assertion):
the registered scopes are the client's permissions, within the one facility it is registered
for; a reading client's exposures are counted under its own reference; a write-only lab client
posting results exposes nobody."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fhirpy.base.exceptions import ForbiddenError, ResourceNotFound
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from carnet.audit.models import AuditEvent
from carnet.detection.config import RoleVolume
from carnet.detection.models import Exposure
from carnet.identity import oauth
from carnet.identity.authenticate import RequestContext
from carnet.identity.models import ApiClient
from carnet.runtime import Runtime
from tests.factories import make_facility, register_patient
from tests.fhir.conftest import Server
from tests.fhir.test_stays_and_reports import _result


def _client(runtime: Runtime, client_id: str, scopes: str, facility: uuid.UUID | None) -> ECKey:
    key = ECKey.generate_key("P-384", parameters={"kid": client_id})
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id=client_id,
            name=client_id,
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes=scopes,
            facility_id=facility,
        )
    return key


def _token(runtime: Runtime, client_id: str, key: ECKey, scope: str) -> str:
    assertion = private_key_jwt_sign(
        key, client_id, runtime.settings.origin + "/oauth/token", alg="ES384", expires_in=300
    )
    answer = oauth.issue_token(
        runtime,
        form={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
        },
        context=RequestContext(address="127.0.0.1", user_agent="test"),
    )
    assert answer.status == 200, answer.body
    return str(answer.body["access_token"])


def _exposed(runtime: Runtime, client_id: str) -> set[uuid.UUID]:
    with runtime.session_factory() as session:
        return set(
            session.scalars(select(Exposure.patient_id).where(Exposure.actor_ref == f"client:{client_id}"))
        )


def _denials(runtime: Runtime, client_id: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.username == f"client:{client_id}", AuditEvent.outcome == "denied")
            )
            or 0
        )


def test_a_reading_client_reads_its_facility_within_its_scopes(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    here, elsewhere = make_facility(runtime), make_facility(runtime, "Clinique Ailleurs")
    mine = register_patient(runtime, here, family="Durand").id
    other = register_patient(runtime, elsewhere, family="Lointain").id
    key = _client(runtime, "hub-reader", "system/Patient.read system/Observation.rs", here)
    fhir = fhir_server_both.bearer_client(_token(runtime, "hub-reader", key, "system/Patient.read"))

    assert fhir.reference("Patient", str(mine)).to_resource()["name"][0]["family"] == "Durand"
    # Another facility's patient does not exist for it.
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", str(other)).to_resource()
    # Its token holds no Observation scope (asked only for Patient.read), nor any write.
    with pytest.raises(ForbiddenError):
        fhir.resources("Observation").search(subject=f"Patient/{mine}").fetch()
    before = _denials(runtime, "hub-reader")
    with pytest.raises(ForbiddenError):
        fhir.resource("Observation", **_result(f"Patient/{mine}")).save()
    assert _denials(runtime, "hub-reader") == before + 1  # refused and audited
    # Counted under its own reference, like a person's reads.
    assert _exposed(runtime, "hub-reader") == {uuid.UUID(mine)}


def test_a_client_without_a_facility_reads_nobody(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    patient = register_patient(runtime, make_facility(runtime)).id
    key = _client(runtime, "stray", "system/Patient.read", None)
    fhir = fhir_server.bearer_client(_token(runtime, "stray", key, "system/Patient.read"))
    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", str(patient)).to_resource()
    assert _exposed(runtime, "stray") == set()


def test_a_write_only_lab_client_posts_a_batch_and_exposes_nobody(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    here = make_facility(runtime)
    patients = [register_patient(runtime, here, family=f"Labo{i}").id for i in range(5)]
    key = _client(runtime, "lab-feed", "system/Observation.c", here)
    fhir = fhir_server_both.bearer_client(_token(runtime, "lab-feed", key, "system/Observation.c"))
    entries: list[dict[str, Any]] = [
        {
            "resource": _result(f"Patient/{p}", value=10 + i),
            "request": {"method": "POST", "url": "Observation"},
        }
        for i, p in enumerate(patients * 4)
    ]
    answer = fhir.execute(
        "", method="post", data={"resourceType": "Bundle", "type": "batch", "entry": entries}
    )
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses
    for entry in answer["entry"]:
        shown = entry.get("resource") or {}
        assert "subject" not in shown and "valueQuantity" not in shown  # nothing read back
    assert _exposed(runtime, "lab-feed") == set()
    # It reads nothing, not even what it wrote.
    observation_id = answer["entry"][0]["response"]["location"].split("/")[1]
    with pytest.raises(ForbiddenError):
        fhir.reference("Observation", observation_id).to_resource()
    with pytest.raises(ForbiddenError):
        fhir.reference("Patient", str(patients[0])).to_resource()


def test_a_reading_client_is_slowed_down_past_its_volume(
    fhir_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = fhir_server.runtime
    # A small installation's floors (the configuration object may be shared: restored after).
    monkeypatch.setattr(runtime.ledger.config, "client_volume", RoleVolume(m15=3, h1=3, h24=3))
    here = make_facility(runtime)
    patients = [register_patient(runtime, here, family=f"Lecture{i}").id for i in range(10)]
    key = _client(runtime, "hub-bulk", "system/Patient.read", here)
    token = _token(runtime, "hub-bulk", key, "system/Patient.read")
    statuses = []
    for patient in patients:
        answer = httpx.get(
            f"{fhir_server.url}/fhir/Patient/{patient}", headers={"Authorization": f"Bearer {token}"}
        )
        statuses.append(answer.status_code)
    # Slowed down at its floor, like a person past theirs; insisting contains it (401 after).
    assert statuses[:3] == [200, 200, 429], statuses
    assert 200 not in statuses[2:] and statuses[-1] == 401, statuses
    assert len(_exposed(runtime, "hub-bulk")) == 2
    with runtime.session_factory() as session:
        assert (
            session.scalar(select(ApiClient.status).where(ApiClient.client_id == "hub-bulk")) == "suspended"
        )
