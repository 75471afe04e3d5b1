"""Problems and diagnoses (FHIR Condition, ICD-10) driven by fhirpy: created, read, amended
(clinical status, verification status) with If-Match, entered in error (DELETE) and still
readable, every version kept; a nurse, billing and a physician outside the patient's care are
refused and audited; bad input is an OperationOutcome and writes nothing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.records.models import Condition
from carnet.runtime import Runtime
from tests.factories import link_care, make_account, make_nurse, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _clinic, _exposures, _race

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def _problem(subject: str, code: str = "E11.9", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": code, "display": "Diabète de type 2"}]},
        "subject": {"reference": subject},
        "onsetDateTime": (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).isoformat(),
        **extra,
    }


def _status(resource: Any, element: str) -> str | None:
    concept = resource.get(element)
    return None if concept is None else str(concept["coding"][0]["code"])


def _conditions(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Condition)) or 0)


def test_a_problem_is_recorded_resolved_and_entered_in_error_never_overwritten(
    fhir_server_both: Server,
) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    diabetes = client.resource("Condition", **_problem(f"Patient/{patient_id}"))
    diabetes.save()
    assert diabetes["meta"]["versionId"] == "1"
    assert _status(diabetes, "clinicalStatus") == "active"
    assert _status(diabetes, "verificationStatus") == "confirmed"
    assert "recorder" not in diabetes  # kept as sent; who recorded it is in Provenance
    provenance = client.resources("Provenance").search(target=f"Condition/{diabetes['id']}").fetch_all()
    assert any(
        agent.get("who", {}).get("reference") == f"Practitioner/{doctor.practitioner_id}"
        for p in provenance
        for agent in p["agent"]
    ), provenance

    read = client.reference("Condition", diabetes["id"]).to_resource()
    assert read["code"]["coding"][0]["code"] == "E11.9" and read["meta"]["versionId"] == "1"
    before = _exposures(runtime, doctor, "Condition")
    client.reference("Condition", diabetes["id"]).to_resource()
    assert _exposures(runtime, doctor, "Condition") == before + 1

    # Resolved: version 2. A stale version changes nothing (412).
    diabetes["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": "resolved"}]}
    diabetes.save()
    assert diabetes["meta"]["versionId"] == "2" and _status(diabetes, "clinicalStatus") == "resolved"
    stale = client.resource(
        "Condition",
        **dict(
            diabetes,
            clinicalStatus={"coding": [{"system": CLINICAL, "code": "relapse"}]},
            meta={"versionId": "1"},
        ),
    )
    with pytest.raises(MultipleResourcesFound):  # 412
        stale.save()
    # Not an amendment: the same status again; a new ICD-10 code (a wrong diagnosis is marked in
    # error and the right one recorded); a clinical status that does not exist. 400, nothing changed.
    bad_code = dict(diabetes, code={"coding": [{"system": ICD10, "code": "E10.9"}]})
    unknown = dict(diabetes, clinicalStatus={"coding": [{"system": CLINICAL, "code": "cured"}]})
    for bad in (dict(diabetes), bad_code, unknown):
        with pytest.raises(OperationOutcome):
            client.resource("Condition", **bad).save()
    assert client.reference("Condition", diabetes["id"]).to_resource()["meta"]["versionId"] == "2"

    # Entered in error (DELETE): kept, still read (verificationStatus entered-in-error, no
    # clinicalStatus as R4 requires), every version in _history; no change after it.
    diabetes.delete()
    read = client.reference("Condition", diabetes["id"]).to_resource()
    assert read["meta"]["versionId"] == "3"
    assert _status(read, "verificationStatus") == "entered-in-error"
    assert "clinicalStatus" not in read
    history = client.execute(f"Condition/{diabetes['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert [_status(e["resource"], "clinicalStatus") for e in history["entry"]] == [
        None,
        "resolved",
        "active",
    ]
    first = client.execute(f"Condition/{diabetes['id']}/_history/1", method="get")
    assert _status(first, "clinicalStatus") == "active"
    found = client.resources("Condition").search(patient=patient_id).fetch()
    assert [(c["id"], _status(c, "verificationStatus")) for c in found] == [
        (diabetes["id"], "entered-in-error")
    ]
    assert (
        client.resources("Condition").search(patient=patient_id, **{"clinical-status": "active"}).fetch()
        == []
    )
    again = dict(
        read,
        clinicalStatus={"coding": [{"system": CLINICAL, "code": "active"}]},
        verificationStatus={"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
    )
    with pytest.raises(MultipleResourcesFound):  # 412: a problem entered in error is not revived
        client.resource("Condition", **again).save()
    provenance = client.resources("Provenance").search(target=f"Condition/{diabetes['id']}").fetch()
    assert sorted(p["activity"]["coding"][0]["code"] for p in provenance) == ["CREATE", "UPDATE", "UPDATE"]
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:create", "success", "Condition")) == 1
    assert kinds.count(("phi:resource:update", "success", "Condition")) == 2  # PUT, DELETE
    assert kinds.count(("phi:resource:update", "error", "Condition")) == 5  # 412, three 400, 412


def test_a_provisional_diagnosis_is_confirmed_or_refuted(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    provisional = {"coding": [{"system": VERIFICATION, "code": "provisional"}]}
    asthma = client.resource(
        "Condition", **_problem(f"Patient/{patient_id}", code="J45.9", verificationStatus=provisional)
    )
    asthma.save()
    assert _status(asthma, "verificationStatus") == "provisional"
    asthma["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "refuted"}]}
    asthma.save()
    assert _status(asthma, "verificationStatus") == "refuted" and asthma["meta"]["versionId"] == "2"
    refuted = client.resources("Condition").search(patient=patient_id, **{"verification-status": "refuted"})
    assert [c["id"] for c in refuted.fetch()] == [asthma["id"]]


def test_condition_writes_refuse_the_wrong_role_and_bad_input(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hypertension = client.resource("Condition", **_problem(f"Patient/{patient_id}", code="I10"))
    hypertension.save()
    written = _conditions(runtime)

    # Bad input: an OperationOutcome, nothing written, the error audited.
    bad_bodies = [
        _problem(f"Patient/{patient_id}", code="diabetes"),  # not an ICD-10 code
        # (A SNOMED CT code is taken since issue 16: tests/fhir/test_received.py.)
        _problem(f"Patient/{patient_id}", clinicalStatus={"coding": [{"system": CLINICAL, "code": "cured"}]}),
        _problem(
            f"Patient/{patient_id}",
            verificationStatus={"coding": [{"system": VERIFICATION, "code": "entered-in-error"}]},
        ),
        _problem(
            f"Patient/{patient_id}",
            onsetDateTime=(dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat(),
        ),
        _problem("Patient/not-a-patient"),
        {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient_id}"}, "bogus": 1},
    ]
    for body in bad_bodies:
        with pytest.raises((OperationOutcome, ResourceNotFound)):
            client.resource("Condition", **body).save()
    assert _conditions(runtime) == written
    rows = audit_rows(runtime, doctor.account_id)
    assert rows.count(("phi:resource:create", "success", "Condition")) == 1
    # The malformed ones are refused before the gate; the future onset and the unknown patient
    # are judged by it (an error, audited).
    assert rows.count(("phi:resource:create", "error", "Condition")) == 2

    # A nurse in the patient's care reads the problem list but does not diagnose; billing and a
    # physician outside the patient's care are refused as if the patient did not exist.
    nurse = make_nurse(runtime, facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = make_physician(runtime, facility)
    ward = fhir_server.client_for(nurse)
    assert [c["id"] for c in ward.resources("Condition").search(patient=patient_id).fetch()] == [
        hypertension["id"]
    ]
    assert ward.reference("Condition", hypertension["id"]).to_resource()["id"] == hypertension["id"]
    for actor in (nurse, billing, stranger):
        other = fhir_server.client_for(actor)
        before = audit_rows(runtime, actor.account_id)
        exposed = _exposures(runtime, actor, "Condition")
        with pytest.raises((ResourceNotFound, OperationOutcome)):
            other.resource("Condition", **_problem(f"Patient/{patient_id}", code="F32.9")).save()
        resolved = dict(hypertension, clinicalStatus={"coding": [{"system": CLINICAL, "code": "resolved"}]})
        with pytest.raises(ResourceNotFound):
            other.resource("Condition", **resolved).save()
        with pytest.raises(ResourceNotFound):
            other.execute(f"Condition/{hypertension['id']}", method="delete")
        rows = audit_rows(runtime, actor.account_id)[len(before) :]
        assert ("phi:resource:create", "denied", "Condition") in rows
        assert ("phi:resource:update", "denied", "Condition") in rows
        assert not [r for r in rows if r[1] == "success" and r[0] != "phi:resource:read"]  # the nurse reads
        # Nothing written exposes it; the nurse's DELETE read the current version first.
        assert _exposures(runtime, actor, "Condition") == exposed + (actor is nurse)
    for actor in (billing, stranger):  # nor do they read it
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).reference("Condition", hypertension["id"]).to_resource()
        assert _exposures(runtime, actor, "Condition") == 0
    assert _conditions(runtime) == written
    assert client.reference("Condition", hypertension["id"]).to_resource()["meta"]["versionId"] == "1"

    # Under break-the-glass an emergency physician records a diagnosis (it opens no access),
    # audited as break-the-glass.
    urgent = make_physician(runtime, facility)
    Gate(runtime, urgent).break_glass(patient_id=patient_id, reason="emergency", justification="inconscient")
    er = fhir_server.client_for(urgent)
    shock = er.resource("Condition", **_problem(f"Patient/{patient_id}", code="R57.9"))
    shock.save()
    with runtime.session_factory() as session:
        reason = session.scalar(
            select(AuditEvent.policy_reason)
            .where(AuditEvent.account_id == urgent.account_id, AuditEvent.kind == "phi:resource:create")
            .order_by(AuditEvent.seq.desc())
        )
    assert reason is not None and "break-the-glass" in reason


def test_a_condition_for_an_unknown_or_other_patient_reads_as_missing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, _patient_id = _clinic(runtime)
    outsider = register_patient(runtime, facility, family="Ailleurs")
    client = fhir_server.client_for(doctor)
    with pytest.raises(ResourceNotFound):
        client.resource("Condition", **_problem(f"Patient/{outsider.id}")).save()
    assert _conditions(runtime) == 0


def test_an_imported_problem_keeps_its_imported_state_as_version_one(
    fhir_server: Server, tmp_path: Path
) -> None:
    """A Condition imported from another system (no version of its own yet) is amended: its
    imported state becomes version 1, by the system, and the amendment version 2."""
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    unconfirmed = {"coding": [{"system": VERIFICATION, "code": "unconfirmed"}]}
    source = tmp_path / "Condition.ndjson"
    source.write_text(
        json.dumps(_problem(f"Patient/{patient_id}", code="J44.9", verificationStatus=unconfirmed)) + "\n"
    )
    report = import_files(runtime, paths=[source], facility_id=facility, operator="test-import")
    assert report.accepted == {"Condition": 1}, report.rejected
    client = fhir_server.client_for(doctor)
    [imported] = client.resources("Condition").search(patient=patient_id).fetch()
    assert _status(imported, "verificationStatus") == "unconfirmed" and "recorder" not in imported
    imported["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "confirmed"}]}
    imported.save()
    history = client.execute(f"Condition/{imported['id']}/_history", method="get")
    assert [_status(e["resource"], "verificationStatus") for e in history["entry"]] == [
        "confirmed",
        "unconfirmed",
    ]
    provenance = client.resources("Provenance").search(target=f"Condition/{imported['id']}").fetch()
    who = [p["agent"][0]["who"] for p in provenance]
    assert who[0]["reference"] == f"Practitioner/{doctor.practitioner_id}"
    assert who[1]["display"] == "carnet system (import or migration)"


def test_two_amendments_of_one_version_give_one_winner_and_one_412(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    problem = client.resource("Condition", **_problem(f"Patient/{patient_id}", code="I48.9"))
    problem.save()
    clients = [fhir_server.client_for(doctor), fhir_server.client_for(doctor)]
    bodies = [
        dict(problem.serialize(), clinicalStatus={"coding": [{"system": CLINICAL, "code": code}]})
        for code in ("resolved", "remission")
    ]
    outcomes = _race([lambda i=i: clients[i].resource("Condition", **bodies[i]).save() for i in range(2)])
    assert sorted(outcomes)[0] == "412" and len([o for o in outcomes if o.startswith("won")]) == 1, outcomes
    history = client.execute(f"Condition/{problem['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
