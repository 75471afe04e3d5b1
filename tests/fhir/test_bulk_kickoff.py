"""FHIR Bulk Data kick-offs ($export, Patient/$export, Group/[id]/$export) behind a second
person (invariant 3): the 202 job waits `pending approval` until another person approves its
export request (the same approval as ever: $export-approve or the web security console, each with
a fresh passkey proof); polling starts it, the manifest names the NDJSON file, downloaded once
by the requester only. A stolen session alone never gets a file. Every step is audited."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.access.actor import Actor
from carnet.access.models import ExportRequest
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.detection.models import Exposure
from carnet.fhir.operations.export import WATERMARK_SYSTEM
from carnet.identity import sessions
from carnet.runtime import Runtime
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import audit_rows
from tests.proofs import prove_session

PURPOSE = "revue de la file active pour l'audit qualité"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


class Session:
    def __init__(self, client: TestClient, runtime: Runtime, actor: Actor, *, proof: bool = True) -> None:
        assert actor.account_id is not None
        with runtime.session_factory.begin() as session:
            issued = sessions.open_session(
                session,
                account_id=actor.account_id,
                privileged=actor.is_privileged,
                second_factor_method="totp",
                address="127.0.0.1",
                user_agent=f"bulk tests ({actor.username})",
            )
        if proof:
            prove_session(runtime, issued.session_id)  # approving needs a passkey proof
        self.client = client
        self.actor = actor
        self.headers = {
            "Cookie": f"carnet_session={issued.token}",
            "X-CSRF-Token": issued.csrf_token,
            "User-Agent": f"bulk tests ({actor.username})",
        }

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def approve(self, export_id: str) -> httpx.Response:
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "exportId", "valueId": export_id},
                {"name": "note", "valueString": "ok DPO"},
            ],
        }
        return self(
            "POST", "/fhir/$export-approve", json=body, headers={"Content-Type": "application/fhir+json"}
        )


@pytest.fixture
def hospital(sqlite_runtime: Runtime) -> dict[str, Any]:
    runtime = sqlite_runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    mine = [str(register_patient(runtime, facility, family=f"Suivi{i}").id) for i in range(3)]
    for pid in mine:
        link_care(
            runtime, patient_id=uuid.UUID(pid), practitioner_id=doctor.practitioner_id, facility_id=facility
        )
    officer = make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    client = TestClient(create_app(runtime))
    return {
        "runtime": runtime,
        "facility": facility,
        "doctor": Session(client, runtime, doctor),
        "officer": Session(client, runtime, officer),
        "mine": mine,
        "client": client,
    }


def _kick_off(who: Session, path: str = "/fhir/Group/{me}/$export", **params: str) -> httpx.Response:
    url = path.format(me=who.actor.practitioner_id)
    return who("GET", url, params={"purpose": PURPOSE, **params}, headers=ASYNC)


def _status_path(answer: httpx.Response) -> str:
    return httpx.URL(answer.headers["Content-Location"]).path


def test_group_export_waits_for_a_second_person_then_downloads_once(hospital: dict[str, Any]) -> None:
    runtime, doctor, officer = hospital["runtime"], hospital["doctor"], hospital["officer"]
    kicked = _kick_off(doctor, _type="Patient")
    assert kicked.status_code == 202, kicked.text
    status = _status_path(kicked)
    export_id = kicked.headers["X-Carnet-Export-Request"]
    assert kicked.json()["resourceType"] == "OperationOutcome"

    # Pending approval: 202 with X-Progress, as long as nobody else approves; no file exists.
    for _ in range(3):
        waiting = doctor("GET", status)
        assert waiting.status_code == 202 and waiting.headers["X-Progress"] == "pending approval"
    job = status.rsplit("/", 1)[1]
    assert doctor("GET", f"/fhir/$export-file/{job}").status_code == 404
    # The requester cannot approve it, even with a passkey proof.
    assert doctor.approve(export_id).status_code == 403

    assert officer.approve(export_id).status_code == 200
    done = doctor("GET", status)  # this poll starts the run (as the requester), then the manifest
    if done.status_code == 202:
        done = doctor("GET", status)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith(f"/fhir/Group/{doctor.actor.practitioner_id}/$export?_type=Patient")
    assert "purpose" not in manifest["request"]
    [output] = manifest["output"]
    assert output["type"] == "Patient" and output["count"] == 3
    downloaded = doctor("GET", httpx.URL(output["url"]).path)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"].startswith("application/fhir+ndjson")
    lines = [json.loads(line) for line in downloaded.text.splitlines()]
    assert {r["resourceType"] for r in lines} == {"Patient"}
    assert sorted(r["id"] for r in lines) == sorted(hospital["mine"])
    assert all(
        any(t["system"] == WATERMARK_SYSTEM and t["code"] == export_id for t in r["meta"]["tag"])
        for r in lines
    )
    # Once: the file is erased after the download.
    assert doctor("GET", httpx.URL(output["url"]).path).status_code == 404
    # Audited: the request, the kick-off, polls, the run and the download; counted as exports.
    kinds = [k for k, _, _ in audit_rows(runtime, doctor.actor.account_id)]
    assert kinds[0] == "phi:export:requested" and kinds.count("phi:resource:export") >= 5
    with runtime.session_factory() as session:
        channels = session.scalars(
            sa.select(Exposure.channel).where(Exposure.actor_ref == doctor.actor.actor_ref)
        ).all()
    assert list(channels).count("export") == 3


def test_a_stolen_session_alone_never_downloads(hospital: dict[str, Any]) -> None:
    """The attacker holds the requester's session and a second stolen session (another
    physician's, and the officer's without a passkey proof): nothing approves the export."""
    runtime, doctor, client = hospital["runtime"], hospital["doctor"], hospital["client"]
    kicked = _kick_off(doctor, path="/fhir/$export")
    assert kicked.status_code == 202
    export_id = kicked.headers["X-Carnet-Export-Request"]
    colleague = Session(client, runtime, make_physician(runtime, hospital["facility"]))
    assert colleague.approve(export_id).status_code == 403  # not a security officer
    officer_cookie = Session(client, runtime, hospital["officer"].actor, proof=False)
    assert officer_cookie.approve(export_id).status_code == 401  # no fresh passkey proof
    status = _status_path(kicked)
    for _ in range(3):
        assert doctor("GET", status).headers.get("X-Progress") == "pending approval"
    job = status.rsplit("/", 1)[1]
    assert doctor("GET", f"/fhir/$export-file/{job}").status_code == 404
    with runtime.session_factory() as session:
        assert session.get(ExportRequest, uuid.UUID(export_id)).status == "pending"  # type: ignore[union-attr]
        exported = session.scalar(
            sa.select(sa.func.count()).select_from(Exposure).where(Exposure.channel == "export")
        )
    assert exported == 0
    # Someone else cannot even see its status.
    assert colleague("GET", status).status_code == 404
    assert ("phi:resource:export", "denied", "Patient") in audit_rows(runtime, colleague.actor.account_id)
    # DELETE on the status URL cancels it: an approval after that starts nothing.
    assert doctor("DELETE", status).status_code == 202
    assert hospital["officer"].approve(export_id).status_code == 200
    assert doctor("GET", status).status_code == 404


def test_kick_off_refusals(hospital: dict[str, Any]) -> None:
    runtime, doctor, client = hospital["runtime"], hospital["doctor"], hospital["client"]
    before = audit_rows(runtime, doctor.actor.account_id)
    # Without Prefer: respond-async, with a type carnet does not export, a bad _since, an
    # unsupported parameter: 400, nothing asked.
    no_async = doctor("GET", "/fhir/$export", params={"purpose": PURPOSE})
    assert no_async.status_code == 400 and "respond-async" in no_async.json()["issue"][0]["diagnostics"]
    unknown_type = _kick_off(doctor, path="/fhir/$export", _type="Basic")
    assert unknown_type.status_code == 400 and "Basic" in unknown_type.json()["issue"][0]["diagnostics"]
    assert _kick_off(doctor, path="/fhir/$export", _typeFilter="Observation?code=x").status_code == 400
    assert _kick_off(doctor, path="/fhir/$export", _since="yesterday").status_code == 400
    assert _kick_off(doctor, path="/fhir/$export", _elements="name").status_code == 400
    # Someone else's Group is as missing as an unknown one.
    other = make_physician(runtime, hospital["facility"])
    assert _kick_off(doctor, path=f"/fhir/Group/{other.practitioner_id}/$export").status_code == 404
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ExportRequest)) == 0
    assert len(audit_rows(runtime, doctor.actor.account_id)) >= len(before)
    # The wrong role: a nurse may not ask for an export; refused and audited.
    nurse = Session(client, runtime, make_nurse(runtime, hospital["facility"]))
    refused = _kick_off(nurse, path="/fhir/Patient/$export")
    assert refused.status_code == 403
    assert ("phi:export:requested", "denied", "ExportRequest") in audit_rows(runtime, nurse.actor.account_id)


def test_since_exports_only_patients_changed_since(hospital: dict[str, Any]) -> None:
    doctor, officer = hospital["doctor"], hospital["officer"]
    kicked = _kick_off(doctor, _since="2999-01-01T00:00:00Z")
    assert kicked.status_code == 202
    assert officer.approve(kicked.headers["X-Carnet-Export-Request"]).status_code == 200
    status = _status_path(kicked)
    done = doctor("GET", status)
    if done.status_code == 202:
        done = doctor("GET", status)
    assert done.status_code == 200 and done.json()["output"] == []  # no file is listed empty


def test_group_read_is_the_practitioners_own_list(hospital: dict[str, Any]) -> None:
    runtime, doctor = hospital["runtime"], hospital["doctor"]
    mine = doctor("GET", f"/fhir/Group/{doctor.actor.practitioner_id}")
    assert mine.status_code == 200
    group = mine.json()
    assert group["resourceType"] == "Group" and "member" not in group
    assert group["managingEntity"]["reference"] == f"Practitioner/{doctor.actor.practitioner_id}"
    other = make_physician(runtime, hospital["facility"])
    assert doctor("GET", f"/fhir/Group/{other.practitioner_id}").status_code == 404
    rows = audit_rows(runtime, doctor.actor.account_id)
    assert ("org:directory:read", "success", "Group") in rows
    assert ("org:directory:read", "denied", "Group") in rows


def test_a_kick_off_without_purpose_is_flagged_in_the_console(hospital: dict[str, Any]) -> None:
    """A standard client states no purpose: the officer's queue says so, and the console (like
    $export-approve) approves only with the purpose written in the note."""
    doctor, officer = hospital["doctor"], hospital["officer"]
    kicked = doctor("GET", "/fhir/$export", params={"_type": "Patient,Observation"}, headers=ASYNC)
    assert kicked.status_code == 202, kicked.text
    export_id = kicked.headers["X-Carnet-Export-Request"]
    page = officer("GET", "/security/exports")
    assert page.status_code == 200
    assert "No purpose stated" in page.text and "Patient, Observation" in page.text
    bare = officer("POST", f"/security/exports/{export_id}/approve", data={"note": "ok"})
    assert bare.status_code == 400
    with hospital["runtime"].session_factory() as session:
        assert session.get(ExportRequest, uuid.UUID(export_id)).status == "pending"  # type: ignore[union-attr]
    done = officer(
        "POST", f"/security/exports/{export_id}/approve", data={"note": PURPOSE}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    with hospital["runtime"].session_factory() as session:
        row = session.get(ExportRequest, uuid.UUID(export_id))
        assert row is not None and row.status == "approved" and row.decision_note == PURPOSE
