"""Bulk export over FHIR (invariant 3): a purpose, a second person's approval, one use, a
watermark on every line; the policy still decides who is in it. Every step is audited."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from carnet.access.actor import Actor
from carnet.access.models import ExportRequest
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.fhir.operations import export as exports
from carnet.fhir.operations.export import WATERMARK_SYSTEM
from carnet.identity import sessions
from carnet.kernel import clock
from carnet.patients.models import ExportFile
from carnet.runtime import Runtime
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows
from tests.proofs import prove_session

PURPOSE = "revue de la file active pour l'audit qualité"


def _headers(server: Server, actor: Actor) -> dict[str, str]:
    assert actor.account_id is not None
    with server.runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=actor.account_id,
            privileged=actor.is_privileged,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent="export tests",
        )
    prove_session(server.runtime, issued.session_id)  # approving an export needs a passkey proof
    return {
        "Cookie": f"carnet_session={issued.token}",
        "X-CSRF-Token": issued.csrf_token,
        "Content-Type": "application/fhir+json",
    }


def _params(**values: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for name, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            if name == "patient":
                parts.append({"name": name, "valueReference": {"reference": f"Patient/{item}"}})
            elif name == "scope":
                parts.append({"name": name, "valueCode": item})
            else:
                parts.append({"name": name, "valueString": item})
    return {"resourceType": "Parameters", "parameter": parts}


def _value(resource: dict[str, Any], name: str) -> Any:
    for part in resource["parameter"]:
        if part["name"] == name:
            return next(v for k, v in part.items() if k.startswith("value"))
    raise KeyError(name)


def _ask(server: Server, actor: Actor, **values: Any) -> requests.Response:
    return requests.post(
        f"{server.url}/fhir/$export-request",
        json=_params(**values),
        headers=_headers(server, actor),
        timeout=30,
    )


def _decide(server: Server, actor: Actor, verb: str, export_id: str, note: str = "") -> requests.Response:
    body = _params(exportId=export_id, **({"note": note} if note else {}))
    return requests.post(
        f"{server.url}/fhir/$export-{verb}", json=body, headers=_headers(server, actor), timeout=30
    )


def _export(server: Server, actor: Actor, export_id: str) -> requests.Response:
    return requests.get(
        f"{server.url}/fhir/Patient/$export",
        params={"_exportId": export_id},
        headers=_headers(server, actor),
        timeout=30,
    )


def _exposures(runtime: Runtime, actor: Actor) -> list[tuple[uuid.UUID, str]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(Exposure.patient_id, Exposure.channel).where(Exposure.actor_ref == actor.actor_ref)
        ).all()
    return [(p, c) for p, c in rows]


def _requests_count(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(ExportRequest)) or 0)


def _hospital(runtime: Runtime) -> tuple[uuid.UUID, Actor, list[str], str, Actor]:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    mine = [register_patient(runtime, facility, family=f"Suivi{i}").id for i in range(3)]
    for pid in mine:
        link_care(runtime, patient_id=pid, practitioner_id=doctor.practitioner_id, facility_id=facility)
    stranger = register_patient(runtime, facility, family="Inconnu").id
    officer = make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    return facility, doctor, mine, stranger, officer


def test_export_needs_approval_then_works_once_and_is_watermarked(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, mine, stranger, officer = _hospital(runtime)

    asked = _ask(fhir_server, doctor, purpose=PURPOSE, scope="care")
    assert asked.status_code == 201, asked.text
    export_id = _value(asked.json(), "exportId")
    assert _value(asked.json(), "status") == "pending"
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:export:requested", "success", "ExportRequest")

    # Not approved yet: refused and audited, nothing exposed.
    refused = _export(fhir_server, doctor, export_id)
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:resource:export", "denied", "Patient")
    assert _exposures(runtime, doctor) == []

    # The requester cannot approve their own, even holding the officer's role.
    both = make_account(runtime, roles=[Role.PHYSICIAN, Role.SECURITY_OFFICER], facility_id=_facility)
    own = _ask(fhir_server, both, purpose=PURPOSE, scope="care")
    assert own.status_code == 201
    self_approval = _decide(fhir_server, both, "approve", _value(own.json(), "exportId"))
    assert self_approval.status_code == 403
    assert "second person" in self_approval.json()["issue"][0]["diagnostics"]
    assert audit_rows(runtime, both.account_id)[-1] == ("phi:export:approved", "denied", "ExportRequest")

    approved = _decide(fhir_server, officer, "approve", export_id, note="validé par le DPO")
    assert approved.status_code == 200, approved.text
    assert _value(approved.json(), "status") == "approved"
    assert audit_rows(runtime, officer.account_id) == [("phi:export:approved", "success", "ExportRequest")]

    done = _export(fhir_server, doctor, export_id)
    assert done.status_code == 200, done.text
    assert done.headers["content-type"].startswith("application/fhir+ndjson")
    assert done.headers["x-carnet-export-id"] == export_id
    lines = [json.loads(line) for line in done.text.splitlines()]
    manifest, patients = lines[0], lines[1:]
    assert _value(manifest, "exportId") == export_id
    assert _value(manifest, "purpose") == PURPOSE
    assert _value(manifest, "approvedBy") == str(officer.account_id)
    assert sorted(p["id"] for p in patients) == sorted(mine)  # not the stranger
    assert stranger not in done.text
    for resource in [manifest, *patients]:
        assert {"system": WATERMARK_SYSTEM, "code": export_id, "display": f"carnet export {export_id}"} in (
            resource["meta"]["tag"]
        )
    assert sorted((str(p), c) for p, c in _exposures(runtime, doctor)) == sorted((p, "export") for p in mine)
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:resource:export", "success", "Patient")

    # Once only.
    again = _export(fhir_server, doctor, export_id)
    assert again.status_code == 403
    rows = audit_rows(runtime, doctor.account_id)
    last_export = max(i for i, row in enumerate(rows) if row[0] == "phi:resource:export")
    assert rows[last_export] == ("phi:resource:export", "denied", "Patient")
    assert len(_exposures(runtime, doctor)) == len(mine)
    # Two refused exports in an hour: detection contains the account (its export-denial rule).
    assert "detection:actor:contained" in [kind for kind, _o, _r in rows[last_export:]]


def test_wrong_roles_are_refused_and_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, _mine, _stranger, officer = _hospital(runtime)
    nurse = make_nurse(runtime, facility)
    admin = make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)

    for who in (nurse, admin, officer):
        answer = _ask(fhir_server, who, purpose=PURPOSE, scope="care")
        assert answer.status_code == 403
        assert audit_rows(runtime, who.account_id)[-1] == ("phi:export:requested", "denied", "ExportRequest")

    export_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")
    colleague = make_physician(runtime, facility)
    for who in (colleague, admin):
        answer = _decide(fhir_server, who, "approve", export_id)
        assert answer.status_code == 403
        assert audit_rows(runtime, who.account_id)[-1] == ("phi:export:approved", "denied", "ExportRequest")
    assert _decide(fhir_server, officer, "approve", export_id).status_code == 200

    # Only the requester uses it: not a colleague, not the approver, not an administrator.
    for who in (colleague, officer, admin):
        answer = _export(fhir_server, who, export_id)
        assert answer.status_code == 403
        assert audit_rows(runtime, who.account_id)[-1] == ("phi:resource:export", "denied", "Patient")
        assert _exposures(runtime, who) == []
    # ... and it is still usable by the requester.
    assert _export(fhir_server, doctor, export_id).status_code == 200


def test_rejected_expired_and_bad_input(fhir_server: Server, movable_clock: clock.MovableClock) -> None:
    runtime = fhir_server.runtime
    facility, doctor, mine, _stranger, officer = _hospital(runtime)

    before = _requests_count(runtime)
    for values in (
        {"purpose": "court", "scope": "care"},
        {"purpose": PURPOSE, "scope": "everyone"},
        {"purpose": PURPOSE, "scope": "patients"},
        {"purpose": PURPOSE, "scope": "care", "patient": [mine[0]]},
    ):
        answer = _ask(fhir_server, doctor, **values)
        assert answer.status_code == 400, values
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert _requests_count(runtime) == before
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:export:requested", "error", "ExportRequest")

    rejected_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")
    rejected = _decide(fhir_server, officer, "reject", rejected_id, note="pas de base légale")
    assert rejected.status_code == 200
    assert _value(rejected.json(), "status") == "rejected"
    assert audit_rows(runtime, officer.account_id)[-1] == ("phi:export:rejected", "success", "ExportRequest")
    assert _export(fhir_server, doctor, rejected_id).status_code == 403
    assert "export request is rejected" in audit_reason(runtime, doctor)
    assert _decide(fhir_server, officer, "approve", rejected_id).status_code == 412  # decided already

    late_doctor = make_physician(runtime, facility)
    late_id = _value(_ask(fhir_server, late_doctor, purpose=PURPOSE, scope="care").json(), "exportId")
    assert _decide(fhir_server, officer, "approve", late_id).status_code == 200
    movable_clock.advance(dt.timedelta(hours=25))
    assert _export(fhir_server, late_doctor, late_id).status_code == 403
    assert "export request is expired" in audit_reason(runtime, late_doctor)


def test_an_explicit_list_is_still_filtered_by_the_policy(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, mine, stranger, officer = _hospital(runtime)
    elsewhere = register_patient(runtime, make_facility(runtime, "Autre Hôpital"), family="Ailleurs").id
    asked = _ask(
        fhir_server, doctor, purpose=PURPOSE, scope="patients", patient=[mine[0], stranger, elsewhere]
    )
    assert asked.status_code == 201
    export_id = _value(asked.json(), "exportId")
    assert _value(asked.json(), "patientCount") == 3
    assert _decide(fhir_server, officer, "approve", export_id).status_code == 200
    done = _export(fhir_server, doctor, export_id)
    assert done.status_code == 200
    patients = [json.loads(line) for line in done.text.splitlines()[1:]]
    assert [p["id"] for p in patients] == [mine[0]]
    assert [str(p) for p, _c in _exposures(runtime, doctor)] == [mine[0]]


def audit_reason(runtime: Runtime, actor: Actor) -> str:
    with runtime.session_factory() as session:
        reason = session.scalar(
            sa.select(AuditEvent.policy_reason)
            .where(AuditEvent.account_id == actor.account_id)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        )
    return reason or ""


def _kick_off(server: Server, actor: Actor, export_id: str) -> requests.Response:
    return requests.get(
        f"{server.url}/fhir/Patient/$export",
        params={"_exportId": export_id, "_outputFormat": "application/fhir+ndjson"},
        headers={**_headers(server, actor), "Prefer": "respond-async"},
        timeout=30,
    )


def _get(server: Server, actor: Actor, url: str) -> requests.Response:
    return requests.get(url, headers=_headers(server, actor), timeout=30)


def _poll(server: Server, actor: Actor, url: str) -> requests.Response:
    deadline = time.monotonic() + 20
    while True:
        answer = _get(server, actor, url)
        if answer.status_code != 202 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_async_kick_off_polls_then_gives_the_file_once(
    fhir_server_both: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fhir_server = fhir_server_both  # the job's row and file live in PostgreSQL's RLS scope too
    runtime = fhir_server.runtime
    facility, doctor, mine, stranger, officer = _hospital(runtime)
    export_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")

    # Not approved: the kick-off itself is refused (403), nothing queued.
    assert _kick_off(fhir_server, doctor, export_id).status_code == 403
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:resource:export", "denied", "Patient")
    assert _decide(fhir_server, officer, "approve", export_id).status_code == 200

    # Hold the background run until the test has seen it running.
    release = threading.Event()
    original = exports._run_job

    def held(gate: Any, job_id: str) -> None:
        assert release.wait(20)
        original(gate, job_id)

    monkeypatch.setattr(exports, "_run_job", held)
    kicked = _kick_off(fhir_server, doctor, export_id)
    assert kicked.status_code == 202, kicked.text
    status_url = kicked.headers["content-location"]
    assert status_url.startswith(f"{fhir_server.url}/fhir/$export-status/")
    running = _get(fhir_server, doctor, status_url)
    assert running.status_code == 202 and running.headers["x-progress"] == "running"
    assert _exposures(runtime, doctor) == []  # nothing read yet
    # A second kick-off of the same request: refused while the first runs (412).
    assert _kick_off(fhir_server, doctor, export_id).status_code == 412
    # Someone else polling: as if the job did not exist.
    colleague = make_physician(runtime, facility)
    assert _get(fhir_server, colleague, status_url).status_code == 404
    release.set()

    done = _poll(fhir_server, doctor, status_url)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    [output] = manifest["output"]
    assert output["type"] == "Patient" and output["count"] == len(mine)
    assert sorted((str(p), c) for p, c in _exposures(runtime, doctor)) == sorted((p, "export") for p in mine)

    assert _get(fhir_server, colleague, output["url"]).status_code == 404  # not theirs
    file = _get(fhir_server, doctor, output["url"])
    assert file.status_code == 200
    assert file.headers["content-type"].startswith("application/fhir+ndjson")
    lines = [json.loads(line) for line in file.text.splitlines()]
    assert _value(lines[0], "approvedBy") == str(officer.account_id)
    assert sorted(p["id"] for p in lines[1:]) == sorted(mine) and stranger not in file.text
    for resource in lines:
        assert {"system": WATERMARK_SYSTEM, "code": export_id, "display": f"carnet export {export_id}"} in (
            resource["meta"]["tag"]
        )
    # Once: the file is erased after its download; the request is used.
    assert _get(fhir_server, doctor, status_url).json()["output"] == []
    assert _get(fhir_server, doctor, output["url"]).status_code == 404
    # (a second refused export in the hour: detection contains the account, as for the sync one)
    assert _kick_off(fhir_server, doctor, export_id).status_code == 403
    with runtime.session_factory() as session:
        stored = session.scalar(
            sa.select(ExportFile.ndjson_ct).where(ExportFile.export_request_id == uuid.UUID(export_id))
        )
    assert stored is None
    rows = audit_rows(runtime, doctor.account_id)
    assert rows.count(("phi:resource:export", "success", "Patient")) >= 4  # kick-off, run, polls, file
    assert ("phi:resource:export", "denied", "Patient") in rows
    # The colleague's two tries are refused and audited (and, being two, contain the account).
    assert audit_rows(runtime, colleague.account_id)[:2] == [
        ("phi:resource:export", "denied", "Patient"),
        ("phi:resource:export", "denied", "Patient"),
    ]


def test_async_export_that_fails_says_so_and_exports_nothing(
    fhir_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, _mine, _stranger, officer = _hospital(runtime)
    export_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")
    assert _decide(fhir_server, officer, "approve", export_id).status_code == 200

    def broken(export: Any) -> str:
        raise RuntimeError("renderer down")

    monkeypatch.setattr(exports, "render", broken)
    kicked = _kick_off(fhir_server, doctor, export_id)
    assert kicked.status_code == 202
    failed = _poll(fhir_server, doctor, kicked.headers["content-location"])
    assert failed.status_code == 422
    assert "nothing was exported" in failed.json()["issue"][0]["diagnostics"]
    assert _exposures(runtime, doctor) == []
    assert ("phi:resource:export", "error", "Patient") in audit_rows(runtime, doctor.account_id)


def test_an_async_export_file_expires_after_a_day(
    fhir_server: Server, movable_clock: clock.MovableClock
) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, _mine, _stranger, officer = _hospital(runtime)
    export_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")
    assert _decide(fhir_server, officer, "approve", export_id).status_code == 200
    status_url = _kick_off(fhir_server, doctor, export_id).headers["content-location"]
    assert _poll(fhir_server, doctor, status_url).status_code == 200
    movable_clock.advance(dt.timedelta(hours=25))
    assert _get(fhir_server, doctor, status_url).status_code == 404  # expired, and erased
    with runtime.session_factory() as session:
        job = session.scalars(
            sa.select(ExportFile).where(ExportFile.export_request_id == uuid.UUID(export_id))
        ).one()
    assert job.status == "expired" and job.ndjson_ct is None


def test_an_async_export_can_be_cancelled_running_or_done(
    fhir_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, mine, _stranger, officer = _hospital(runtime)
    ids = []
    for _ in range(2):
        export_id = _value(_ask(fhir_server, doctor, purpose=PURPOSE, scope="care").json(), "exportId")
        assert _decide(fhir_server, officer, "approve", export_id).status_code == 200
        ids.append(export_id)

    # Cancelled while it waits to run: the run then finds it cancelled and reads nothing.
    release = threading.Event()
    original = exports._run_job

    def held(gate: Any, job_id: str) -> None:
        assert release.wait(20)
        original(gate, job_id)

    monkeypatch.setattr(exports, "_run_job", held)
    status_url = _kick_off(fhir_server, doctor, ids[0]).headers["content-location"]
    colleague = make_physician(runtime, _facility)
    assert (
        requests.delete(status_url, headers=_headers(fhir_server, colleague), timeout=30).status_code == 404
    )
    assert audit_rows(runtime, colleague.account_id) == [("phi:resource:export", "denied", "Patient")]
    cancel = requests.delete(status_url, headers=_headers(fhir_server, doctor), timeout=30)
    assert cancel.status_code == 202
    release.set()
    assert _poll(fhir_server, doctor, status_url).status_code == 404
    time.sleep(0.3)  # the held run has ended by now
    assert _exposures(runtime, doctor) == []

    # Cancelled once done: the file is erased undownloaded.
    monkeypatch.setattr(exports, "_run_job", original)
    status_url = _kick_off(fhir_server, doctor, ids[1]).headers["content-location"]
    done = _poll(fhir_server, doctor, status_url)
    assert done.status_code == 200
    file_url = done.json()["output"][0]["url"]
    assert requests.delete(status_url, headers=_headers(fhir_server, doctor), timeout=30).status_code == 202
    with runtime.session_factory() as session:
        stored = session.scalar(
            sa.select(ExportFile.ndjson_ct).where(ExportFile.export_request_id == uuid.UUID(ids[1]))
        )
    assert stored is None
    assert _get(fhir_server, doctor, status_url).status_code == 404
    assert len(_exposures(runtime, doctor)) == len(mine)  # the run read them; nothing more leaves
    assert _get(fhir_server, doctor, file_url).status_code == 404
