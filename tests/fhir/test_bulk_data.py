"""FHIR Bulk Data (IG v2) for standard clients, behind a second person (invariant 3), over real
HTTP (uvicorn, httpx): a staff session and a SMART Backend Services client (system/ scopes, a
real RFC 7523 assertion) kick off with nothing carnet-specific, wait `pending approval` until a
security officer approves, then download one NDJSON file per patient-compartment type, each
line a valid R4 resource equal to a read of it (apart from the export's watermark tag). The
files are the requester's only, once; the exported patients are exposures; refusals audited."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fhir.resources.R4B import get_fhir_model_class

from carnet.access.actor import Actor
from carnet.access.models import ExportRequest
from carnet.access.roles import Role
from carnet.detection.models import Exposure
from carnet.fhir.operations.export import WATERMARK_SYSTEM
from carnet.identity import oauth, sessions
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_backend_clients import _client, _denials, _token
from tests.fhir.test_interventions import resources as interventions
from tests.fhir.test_stays_and_reports import _result
from tests.proofs import prove_session

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
JSON = {"Content-Type": "application/fhir+json"}
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
PURPOSE = "transfert du dossier vers l'entrepôt régional de santé"


def _staff(server: Server, actor: Actor, *, proof: bool = False) -> httpx.Client:
    """An httpx client signed in as `actor` (a session cookie; a passkey proof if asked)."""
    assert actor.account_id is not None
    with server.runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=actor.account_id,
            privileged=actor.is_privileged,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent="bulk data tests",
        )
    if proof:
        prove_session(server.runtime, issued.session_id)
    return httpx.Client(
        base_url=server.url,
        headers={
            "Cookie": f"carnet_session={issued.token}",
            "X-CSRF-Token": issued.csrf_token,
            "User-Agent": "bulk data tests",
        },
        timeout=60,
    )


def _bearer(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _approve(officer: httpx.Client, export_id: str, note: str = "vu avec le DPO") -> httpx.Response:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "exportId", "valueId": export_id}, {"name": "note", "valueString": note}],
    }
    return officer.post("/fhir/$export-approve", json=body, headers=JSON)


def _manifest(who: httpx.Client, status_url: str) -> dict[str, Any]:
    """Poll as a Bulk Data client does until the manifest (the run is in the background)."""
    for _ in range(60):
        answer = who.get(status_url)
        if answer.status_code == 200:
            return dict(answer.json())
        assert answer.status_code == 202, answer.text
        assert answer.headers["X-Progress"] in ("running", "pending approval")
        assert int(answer.headers["Retry-After"]) > 0
    raise AssertionError("the export did not complete")


@pytest.fixture
def ward(fhir_server_both: Server) -> dict[str, Any]:
    """A physician's three patients, each with records of every type carnet holds."""
    server = fhir_server_both
    runtime = server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    patients = [str(register_patient(runtime, facility, family=f"Export{i}").id) for i in range(3)]
    stranger = str(register_patient(runtime, facility, family="Horsdesoins").id)
    for pid in patients:
        link_care(
            runtime, patient_id=uuid.UUID(pid), practitioner_id=doctor.practitioner_id, facility_id=facility
        )
    http = _staff(server, doctor)
    onset = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
    for pid in patients:
        ref = f"Patient/{pid}"
        bodies = [
            _result(ref),
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": ICD10, "code": "E11", "display": "Diabète de type 2"}]},
                "subject": {"reference": ref},
                "onsetDateTime": onset,
            },
            {
                "resourceType": "AllergyIntolerance",
                "patient": {"reference": ref},
                "code": {"coding": [{"system": ATC, "code": "J01C", "display": "Pénicillines"}]},
                "criticality": "high",
            },
            *interventions(ref).values(),
        ]
        for body in bodies:
            made = http.post(f"/fhir/{body['resourceType']}", json=body, headers=JSON)
            assert made.status_code == 201, made.text
    officer = make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    return {
        "server": server,
        "runtime": runtime,
        "facility": facility,
        "doctor": doctor,
        "http": http,
        "officer": _staff(server, officer, proof=True),
        "officer_actor": officer,
        "patients": patients,
        "stranger": stranger,
    }


def _check_files(
    reader: httpx.Client, downloader: httpx.Client, manifest: dict[str, Any], export_id: str
) -> dict[str, list[dict[str, Any]]]:
    """Download every output once: NDJSON, each line valid R4 (fhir.resources), watermarked and
    equal to a read of the same record; a second download finds nothing."""
    assert manifest["requiresAccessToken"] is True
    found: dict[str, list[dict[str, Any]]] = {}
    for output in manifest["output"]:
        path = httpx.URL(output["url"]).path
        got = downloader.get(path)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in got.text.splitlines()]
        assert len(lines) == output["count"]
        for resource in lines:
            assert resource["resourceType"] == output["type"]
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)  # valid R4
            tags = resource["meta"].pop("tag")
            assert {
                "system": WATERMARK_SYSTEM,
                "code": export_id,
                "display": f"carnet export {export_id}",
            } in tags
            rest = [t for t in tags if t.get("system") != WATERMARK_SYSTEM]
            if rest:
                resource["meta"]["tag"] = rest
            read = reader.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
            assert read.status_code == 200, read.text
            assert resource == read.json()
        found[output["type"]] = lines
        assert downloader.get(path).status_code == 404  # once
    return found


def test_a_staff_kick_off_with_nothing_extra_waits_for_a_second_person(ward: dict[str, Any]) -> None:
    runtime, http, officer = ward["runtime"], ward["http"], ward["officer"]
    doctor: Actor = ward["doctor"]
    kicked = http.get(f"/fhir/Group/{doctor.practitioner_id}/$export", headers=ASYNC)
    assert kicked.status_code == 202, kicked.text
    status = httpx.URL(kicked.headers["Content-Location"]).path
    export_id = kicked.headers["X-Carnet-Export-Request"]
    waiting = http.get(status)
    assert waiting.status_code == 202 and waiting.headers["X-Progress"] == "pending approval"
    # No purpose was stated: the approver must write it (asked of the requester) in the note.
    refused = _approve(officer, export_id, note="ok")
    assert refused.status_code == 400 and "purpose" in refused.json()["issue"][0]["diagnostics"]
    assert _approve(officer, export_id, note=PURPOSE).status_code == 200

    manifest = _manifest(http, status)
    types = {o["type"] for o in manifest["output"]}
    assert {
        "Patient",
        "Observation",
        "Condition",
        "AllergyIntolerance",
        "Immunization",
        "Procedure",
        "MedicationAdministration",
        "MedicationStatement",
        "CareTeam",
    } <= types
    assert manifest["error"] == []
    files = _check_files(http, http, manifest, export_id)
    assert sorted(p["id"] for p in files["Patient"]) == sorted(ward["patients"])
    assert all(
        o["subject"]["reference"] in {f"Patient/{p}" for p in ward["patients"]} for o in files["Observation"]
    )
    # Everything downloaded: the status answers an empty output, the files are gone.
    assert http.get(status).json()["output"] == []
    # The three patients are exposures on channel export (the chart sections are not counted twice).
    with runtime.session_factory() as session:
        channels = session.scalars(
            sa.select(Exposure.channel).where(
                Exposure.actor_ref == doctor.actor_ref, Exposure.channel == "export"
            )
        ).all()
    assert len(channels) == 3
    kinds = [k for k, _, _ in audit_rows(runtime, doctor.account_id)]
    assert "phi:export:requested" in kinds and kinds.count("phi:resource:export") >= 4


def test_a_backend_services_client_exports_with_its_registered_purpose(ward: dict[str, Any]) -> None:
    server, runtime, officer = ward["server"], ward["runtime"], ward["officer"]
    key = _client(runtime, "regional-hub", "system/*.read", ward["facility"])
    # Without a purpose given or registered: a clear 400, nothing asked.
    token = _token(runtime, "regional-hub", key, "system/*.read")
    hub = _bearer(server, token)
    unregistered = hub.get("/fhir/$export", headers=ASYNC)
    assert unregistered.status_code == 400
    assert "purpose" in unregistered.json()["issue"][0]["diagnostics"]
    with runtime.session_factory.begin() as session:  # `carnet clients set-export-purpose`
        oauth.set_export_purpose(session, client_id="regional-hub", purpose=PURPOSE)

    kicked = hub.get("/fhir/$export", params={"_type": "Patient,Observation,Immunization"}, headers=ASYNC)
    assert kicked.status_code == 202, kicked.text
    status = httpx.URL(kicked.headers["Content-Location"]).path
    export_id = kicked.headers["X-Carnet-Export-Request"]
    with runtime.session_factory() as session:
        asked = session.get(ExportRequest, uuid.UUID(export_id))
        assert asked is not None and asked.purpose == PURPOSE and asked.requested_by_client == "regional-hub"
    # Pending: the client's own token approves nothing (a token is no person), nor does anyone
    # else's session poll it.
    assert hub.get(status).headers["X-Progress"] == "pending approval"
    assert _approve(hub, export_id).status_code in (401, 403)
    assert ward["http"].get(status).status_code == 404
    # Without a token: nothing at all.
    assert httpx.get(server.url + status).status_code == 401

    assert _approve(officer, export_id).status_code == 200
    manifest = _manifest(hub, status)
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation", "Immunization"}
    job = status.rsplit("/", 1)[1]
    assert httpx.get(f"{server.url}/fhir/$export-file/{job}/Patient").status_code == 401  # needs the token
    # Another client's token gets nothing of it.
    other_key = _client(runtime, "other-hub", "system/*.read", ward["facility"])
    other = _bearer(server, _token(runtime, "other-hub", other_key, "system/*.read"))
    assert other.get(f"/fhir/$export-file/{job}/Patient").status_code == 404
    assert other.get(status).status_code == 404
    # A facility export: every patient of its facility the policy shows it, the stranger too.
    files = _check_files(hub, hub, manifest, export_id)
    assert sorted(p["id"] for p in files["Patient"]) == sorted([*ward["patients"], ward["stranger"]])
    assert len(files["Observation"]) == 3 and len(files["Immunization"]) == 3
    with runtime.session_factory() as session:
        exposed = set(
            session.scalars(
                sa.select(Exposure.patient_id).where(
                    Exposure.actor_ref == "client:regional-hub", Exposure.channel == "export"
                )
            )
        )
    assert exposed == {uuid.UUID(p) for p in [*ward["patients"], ward["stranger"]]}


def test_tokens_without_system_read_scopes_are_refused_and_audited(ward: dict[str, Any]) -> None:
    server, runtime = ward["server"], ward["runtime"]
    key = _client(runtime, "lab-writer", "system/Observation.c system/Observation.read", ward["facility"])
    writer = _bearer(server, _token(runtime, "lab-writer", key, "system/Observation.c"))
    before = _denials(runtime, "lab-writer")
    assert writer.get("/fhir/$export", params={"purpose": PURPOSE}, headers=ASYNC).status_code == 403
    assert _denials(runtime, "lab-writer") == before + 1
    # A Patient reader asking for a type its scopes do not read: refused by name, audited.
    key = _client(runtime, "patient-only", "system/Patient.read", ward["facility"])
    reader = _bearer(server, _token(runtime, "patient-only", key, "system/Patient.read"))
    before = _denials(runtime, "patient-only")
    answer = reader.get("/fhir/$export", params={"purpose": PURPOSE, "_type": "Observation"}, headers=ASYNC)
    assert answer.status_code == 403
    assert _denials(runtime, "patient-only") == before + 1
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ExportRequest)) == 0


def test_the_wrong_role_and_a_stolen_session_get_no_file(ward: dict[str, Any]) -> None:
    server, runtime, http = ward["server"], ward["runtime"], ward["http"]
    nurse = make_nurse(runtime, ward["facility"])
    refused = _staff(server, nurse).get("/fhir/$export", params={"purpose": PURPOSE}, headers=ASYNC)
    assert refused.status_code == 403
    assert ("phi:export:requested", "denied", "ExportRequest") in audit_rows(runtime, nurse.account_id)
    # The attacker holds the requester's session, and a colleague's: no approval, no file.
    kicked = http.get("/fhir/Patient/$export", params={"purpose": PURPOSE}, headers=ASYNC)
    assert kicked.status_code == 202
    export_id = kicked.headers["X-Carnet-Export-Request"]
    status = httpx.URL(kicked.headers["Content-Location"]).path
    colleague = _staff(server, make_physician(runtime, ward["facility"]), proof=True)
    assert _approve(http, export_id).status_code in (401, 403)  # the requester's own session
    assert _approve(colleague, export_id).status_code == 403  # not a security officer
    officer_cookie = _staff(server, ward["officer_actor"])  # the officer's cookie, no passkey proof
    assert _approve(officer_cookie, export_id).status_code == 401
    job = status.rsplit("/", 1)[1]
    for _ in range(3):
        assert http.get(status).headers["X-Progress"] == "pending approval"
    # (A refused download is an export denial: two in an hour contain the account.)
    assert http.get(f"/fhir/$export-file/{job}/Patient").status_code == 404
    with runtime.session_factory() as session:
        assert (
            session.scalar(
                sa.select(sa.func.count()).select_from(Exposure).where(Exposure.channel == "export")
            )
            == 0
        )


def test_an_app_acting_for_the_requester_neither_kicks_off_nor_downloads(ward: dict[str, Any]) -> None:
    """A SMART app's token acts for a person with user/ scopes: no bulk kick-off (system/ scopes
    only), and it does not reach that person's own export either."""
    import secrets

    from carnet.identity.models import AccessToken
    from carnet.identity.sessions import digest
    from carnet.kernel import clock

    server, runtime, http, doctor = ward["server"], ward["runtime"], ward["http"], ward["doctor"]
    token = secrets.token_urlsafe(32)
    with runtime.session_factory.begin() as session:
        app_pk = oauth.register_client(
            session,
            client_id="chart-app",
            name="chart app",
            jwks=None,
            allowed_scopes="user/*.read",
            kind="app",
            redirect_uris="https://app.example/callback",
        )
        now = clock.now()
        session.add(
            AccessToken(
                token_digest=digest(token),
                client_pk=app_pk,
                account_id=doctor.account_id,
                scopes="user/*.read",
                issued_at=now,
                expires_at=now + oauth.TOKEN_LIFETIME,
            )
        )
    app = _bearer(server, token)
    refused = app.get("/fhir/$export", params={"purpose": PURPOSE}, headers=ASYNC)
    assert refused.status_code == 403, refused.text
    assert ("phi:export:requested", "denied", "ExportRequest") in audit_rows(runtime, doctor.account_id)
    kicked = http.get("/fhir/$export", params={"purpose": PURPOSE}, headers=ASYNC)
    assert kicked.status_code == 202
    assert _approve(ward["officer"], kicked.headers["X-Carnet-Export-Request"]).status_code == 200
    status = httpx.URL(kicked.headers["Content-Location"]).path
    assert app.get(status).status_code == 404  # the person's session only
    manifest = _manifest(http, status)
    assert manifest["output"]
    assert app.get(httpx.URL(manifest["output"][0]["url"]).path).status_code == 404
