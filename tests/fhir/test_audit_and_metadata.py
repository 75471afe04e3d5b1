"""AuditEvent over FHIR: security officers search the trail (each read audited), clinicians
are refused (and that is audited), a patient reads their own access log only. The
CapabilityStatement lists what the routers serve."""

from __future__ import annotations

import uuid

import pytest
import requests
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhirpy.base.exceptions import ForbiddenError

from carnet.access.roles import Role
from carnet.phi.gate import Gate
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows


def test_security_officer_searches_the_trail_others_are_refused(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Audit")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    fhir_server.client_for(doctor).reference("Patient", patient.id).to_resource()

    officer = make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    client = fhir_server.client_for(officer)
    events = client.resources("AuditEvent").search(patient=f"Patient/{patient.id}").fetch()
    assert events and all(e["resourceType"] == "AuditEvent" for e in events)
    reads = [e for e in events if any(s.get("code") == "read" for s in e.get("subtype", []))]
    assert reads, "the physician's read of the chart is in the trail"
    assert audit_rows(runtime, officer.account_id) == [("audit:event:read", "success", "AuditEvent")]

    with pytest.raises(ForbiddenError):
        fhir_server.client_for(doctor).resources("AuditEvent").search(patient=patient.id).fetch()
    assert audit_rows(runtime, doctor.account_id)[-1] == ("audit:event:read", "denied", "AuditEvent")


def test_a_patient_reads_their_own_access_log_only(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Portail")
    other = register_patient(runtime, facility, family="Voisin")
    assert doctor.practitioner_id is not None
    for p in (patient, other):
        link_care(runtime, patient_id=p.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
        Gate(runtime, doctor).read_patient(patient_id=p.id)
    me = make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(patient.id))
    log = fhir_server.client_for(me).resources("AuditEvent").search(patient=f"Patient/{other.id}").fetch()
    # Whatever the query, it is the patient's own log: the read of the other patient is not in it.
    displays = [e["type"]["display"] for e in log]
    assert "opened your record" in displays
    assert len([d for d in displays if d == "opened your record"]) == 1
    assert audit_rows(runtime, me.account_id)[-1] == ("audit:event:read", "success", "AuditEvent")


def test_capability_statement_tells_what_is_served(fhir_server: Server) -> None:
    body = requests.get(f"{fhir_server.url}/fhir/metadata", timeout=10).json()
    CapabilityStatement.model_validate(body)
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert {"Patient", "Appointment", "DocumentReference", "MedicationRequest", "AuditEvent"} <= set(
        resources
    )
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} >= {"read", "vread", "search-type", "create", "update"}
    assert patient["conditionalCreate"] is True
    assert {i["code"] for i in body["rest"][0]["interaction"]} == {"transaction", "batch", "history-system"}
    assert [o["name"] for o in body["rest"][0]["operation"]] == [
        "everything",
        "export",
        "export-approve",
        "export-reject",
        "export-request",
        "merge",
        "unmerge",
    ]
    paths = ("$export-request", "$export-approve", "$export-reject", "Patient/$merge", "Patient/$unmerge")
    for path in paths:
        assert requests.post(f"{fhir_server.url}/fhir/{path}", json={}, timeout=10).status_code == 401
    assert requests.get(f"{fhir_server.url}/fhir/Patient/$export", timeout=10).status_code == 401
    assert {p["name"] for p in patient["searchParam"]} == {
        "identifier",
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
        "_id",
        "_lastUpdated",
        "_has",
    }
    # The resources added for issue 9, with exactly what they serve.
    served = {t: {i["code"] for i in r["interaction"]} for t, r in resources.items()}
    assert served["Provenance"] == {"read", "search-type"}
    assert served["Consent"] == {
        "read",
        "vread",
        "history-instance",
        "search-type",
        "create",
        "update",
        "delete",
        "patch",
        "history-type",
    }
    assert resources["Encounter"]["readHistory"] is True
    assert served["DiagnosticReport"] == {
        "read",
        "vread",
        "history-instance",
        "search-type",
        "create",
        "update",
        "delete",
        "patch",
        "history-type",
    }
    assert served["Observation"] == {
        "read",
        "vread",
        "history-instance",
        "search-type",
        "create",
        "update",
        "delete",
        "patch",
        "history-type",
    }
    assert resources["Observation"]["readHistory"] is True
    # Stays are marked entered-in-error by DELETE; problems are written like lab results.
    assert served["Encounter"] == served["Condition"] == served["Observation"]
    assert resources["Condition"]["readHistory"] is True
    assert served["Invoice"] == served["Observation"] and resources["Invoice"]["readHistory"] is True
    assert served["PaymentReconciliation"] == {"read", "vread", "search-type", "create"}
    assert {p["name"] for p in resources["PaymentReconciliation"]["searchParam"]} == {
        "request",
        "patient",
        "created",
        "outcome",
    }
    assert {p["name"] for p in resources["Provenance"]["searchParam"]} == {"target", "patient"}
    assert resources["Consent"]["readHistory"] is True and resources["CareTeam"]["readHistory"] is True
    # Referrals and care-team members are made and ended like Consents are recorded and withdrawn.
    assert served["CareTeam"] == served["Consent"]
    # Nothing is claimed that is not served: every declared interaction answers (401 without a
    # session, not 404/405).
    probes = {
        "search-type": ("get", "{t}"),
        "read": ("get", "{t}/x"),
        "vread": ("get", "{t}/x/_history/1"),
        "history-instance": ("get", "{t}/x/_history"),
        "create": ("post", "{t}"),
        "update": ("put", "{t}/x"),
        "delete": ("delete", "{t}/x"),
        "patch": ("patch", "{t}/x"),
        "history-type": ("get", "{t}/_history"),
    }
    for rtype, codes in served.items():
        for code in codes:
            method, path = probes[code]
            answer = requests.request(
                method, f"{fhir_server.url}/fhir/{path.format(t=rtype)}", json={}, timeout=10
            )
            assert answer.status_code == 401, (rtype, code, answer.status_code)
    # ... and nothing served is left out: a type the statement does not list is not served.
    assert requests.get(f"{fhir_server.url}/fhir/Basic", timeout=10).status_code == 404
