"""Lab results and reports keep every version: vread and `_history` of Observation and
DiagnosticReport through the gate (fhirpy), the wrong role refused and audited, exposure counted."""

from __future__ import annotations

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from carnet.access.roles import Role
from carnet.phi.gate import Gate
from tests.factories import link_care, make_account, make_nurse, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _clinic, _exposures, _race, _report, _result


def test_observation_and_report_versions_by_vread_and_history(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}", value=12.4))
    hb.save()
    report = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    report.save()

    history = client.execute(f"Observation/{hb['id']}/_history", method="get")
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["POST"]
    first = client.execute(f"Observation/{hb['id']}/_history/1", method="get")
    assert first["valueQuantity"]["value"] == 12.4 and first["status"] == "final"
    assert first["subject"] == {"reference": f"Patient/{patient_id}"}

    history = client.execute(f"DiagnosticReport/{report['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
    first = client.execute(f"DiagnosticReport/{report['id']}/_history/1", method="get")
    assert first["conclusion"] == "Pas d'anémie."
    assert first["result"] == [{"reference": f"Observation/{hb['id']}"}]
    for missing in (f"Observation/{hb['id']}/_history/2", f"DiagnosticReport/{report['id']}/_history/7"):
        with pytest.raises(ResourceNotFound):
            client.execute(missing, method="get")
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:history", "success", "Observation")) == 3
    assert kinds.count(("phi:resource:history", "success", "DiagnosticReport")) == 3
    before = _exposures(runtime, doctor, "Observation")
    client.execute(f"Observation/{hb['id']}/_history", method="get")
    assert _exposures(runtime, doctor, "Observation") == before + 1

    # Billing, and a physician outside the patient's care: refused, audited, nothing exposed.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = make_account(runtime, roles=[Role.PHYSICIAN], facility_id=facility)
    for actor in (billing, stranger):
        other = fhir_server.client_for(actor)
        for path in (f"Observation/{hb['id']}/_history", f"DiagnosticReport/{report['id']}/_history/1"):
            with pytest.raises(ResourceNotFound):
                other.execute(path, method="get")
        rows = audit_rows(runtime, actor.account_id)
        assert [(k, o) for k, o, _ in rows] == [("phi:resource:history", "denied")] * 2
        assert _exposures(runtime, actor, "Observation") == 0
        assert _exposures(runtime, actor, "DiagnosticReport") == 0


def test_capability_statement_lists_lab_history() -> None:
    from carnet.fhir.metadata import SUPPORTED
    from carnet.fhir.routes import routers

    routers()  # the routers register what they serve when they are imported

    for resource_type in ("Observation", "DiagnosticReport"):
        assert {"vread", "history-instance"} <= set(SUPPORTED[resource_type].capabilities)


def test_a_lab_result_is_corrected_or_entered_in_error_never_overwritten(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}", value=12.4))
    hb.save()
    assert hb["meta"]["versionId"] == "1"

    # The lab corrects the value: version 2, status corrected; the first value is kept.
    hb["status"] = "corrected"
    hb["valueQuantity"] = {"value": 10.9, "unit": "g/dL"}
    hb.save()
    assert hb["meta"]["versionId"] == "2" and hb["status"] == "corrected"
    assert hb["valueQuantity"]["value"] == 10.9
    # A stale version changes nothing (412); a change that is no correction is refused (400).
    stale = client.resource("Observation", **dict(hb, valueQuantity={"value": 1.0, "unit": "g/dL"}))
    stale["meta"] = {"versionId": "1"}
    with pytest.raises(MultipleResourcesFound):
        stale.save()
    for bad in (dict(hb, status="final"), dict(hb, status="amended")):
        with pytest.raises(OperationOutcome):
            client.resource("Observation", **bad).save()

    # Entered in error (DELETE): kept, readable with that status, its value unchanged.
    hb.delete()
    history = client.execute(f"Observation/{hb['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "corrected", "final"]
    assert [e["resource"]["valueQuantity"]["value"] for e in history["entry"]] == [10.9, 10.9, 12.4]
    found = client.resources("Observation").search(patient=patient_id).fetch()
    assert [(o["id"], o["status"]) for o in found] == [(hb["id"], "entered-in-error")]
    with pytest.raises(MultipleResourcesFound):  # no change after entered-in-error
        client.resource("Observation", **dict(hb, status="corrected", meta={"versionId": "3"})).save()
    provenance = client.resources("Provenance").search(target=f"Observation/{hb['id']}").fetch()
    assert sorted(p["activity"]["coding"][0]["code"] for p in provenance) == ["CREATE", "UPDATE", "UPDATE"]
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:update", "success", "Observation")) == 2  # PUT, DELETE

    # Billing and a physician outside the patient's care: refused, audited, nothing exposed.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = make_account(runtime, roles=[Role.PHYSICIAN], facility_id=facility)
    pulse = client.resource("Observation", **_result(f"Patient/{patient_id}", code="8867-4", value=72))
    pulse.save()
    for actor in (billing, stranger):
        change = dict(pulse, status="corrected", valueQuantity={"value": 70, "unit": "/min"})
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).resource("Observation", **change).save()
        assert audit_rows(runtime, actor.account_id) == [("phi:resource:update", "denied", "Observation")]
        assert _exposures(runtime, actor, "Observation") == 0
    assert client.execute(f"Observation/{pulse['id']}/_history", method="get")["total"] == 1


def test_a_lab_report_is_amended_or_entered_in_error_never_overwritten(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    other = register_patient(runtime, facility, family="Autre")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=other.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = fhir_server.client_for(doctor)
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}"))
    hb.save()
    plt = client.resource("Observation", **_result(f"Patient/{patient_id}", code="777-3", value=250))
    plt.save()
    theirs = client.resource("Observation", **_result(f"Patient/{other.id}", value=9.1))
    theirs.save()
    report = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    report.save()
    assert report["meta"]["versionId"] == "1"

    # Another patient's Observation may not join the report: refused as on creation, nothing changed.
    wrong = dict(report, status="amended", result=[{"reference": f"Observation/{theirs['id']}"}])
    with pytest.raises(OperationOutcome) as refused:
        client.resource("DiagnosticReport", **wrong).save()
    assert "result 1 is not an Observation of this report's patient" in str(refused.value)
    # Amended: a new conclusion and one more result of the same patient; version 2.
    report["status"] = "amended"
    report["conclusion"] = "Thrombopénie légère."
    report["result"] = [{"reference": f"Observation/{hb['id']}"}, {"reference": f"Observation/{plt['id']}"}]
    report.save()
    assert report["meta"]["versionId"] == "2" and report["conclusion"] == "Thrombopénie légère."
    assert {r["reference"] for r in report["result"]} == {
        f"Observation/{hb['id']}",
        f"Observation/{plt['id']}",
    }
    stale = client.resource("DiagnosticReport", **dict(report, conclusion="x", meta={"versionId": "1"}))
    with pytest.raises(MultipleResourcesFound):  # 412
        stale.save()
    # Entered in error (DELETE): kept and readable with that status; the first version intact.
    report.delete()
    read = client.reference("DiagnosticReport", report["id"]).to_resource()
    assert read["status"] == "entered-in-error" and read["meta"]["versionId"] == "3"
    first = client.execute(f"DiagnosticReport/{report['id']}/_history/1", method="get")
    assert first["conclusion"] == "Pas d'anémie." and first["status"] == "final"
    assert len(first["result"]) == 1
    history = client.execute(f"DiagnosticReport/{report['id']}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "amended", "final"]
    provenance = client.resources("Provenance").search(target=f"DiagnosticReport/{report['id']}").fetch()
    assert len(provenance) == 3
    assert (
        audit_rows(runtime, doctor.account_id).count(("phi:resource:update", "success", "DiagnosticReport"))
        == 2
    )

    # A nurse in the patient's care and billing: refused, audited, nothing exposed.
    nurse = make_nurse(runtime, facility)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    second = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    with pytest.raises(MultipleResourcesFound):  # hb still belongs to the report entered in error
        second.save()
    for actor in (nurse, billing):
        change = dict(read, status="corrected", conclusion="Autre.")
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).resource("DiagnosticReport", **change).save()
        assert audit_rows(runtime, actor.account_id)[-1] == (
            "phi:resource:update",
            "denied",
            "DiagnosticReport",
        )
        assert _exposures(runtime, actor, "DiagnosticReport") == 0


def test_nurse_corrects_a_vital_sign_break_the_glass_corrects_and_races_give_one_winner(
    fhir_server_both: Server,
) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    nurse = make_nurse(runtime, facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    ward = fhir_server.client_for(nurse)
    pulse = ward.resource("Observation", **_result(f"Patient/{patient_id}", code="8867-4", value=72))
    pulse.save()
    pulse["status"] = "amended"
    pulse["valueQuantity"] = {"value": 76, "unit": "/min"}
    pulse.save()
    assert pulse["meta"]["versionId"] == "2"

    # Break-the-glass: an emergency physician outside the care team corrects a result.
    urgent = make_physician(runtime, facility)
    Gate(runtime, urgent).break_glass(patient_id=patient_id, reason="emergency", justification="inconscient")
    er = fhir_server.client_for(urgent)
    pulse["status"] = "corrected"
    pulse["valueQuantity"] = {"value": 130, "unit": "/min"}
    er.resource("Observation", **dict(pulse)).save()
    history = er.execute(f"Observation/{pulse['id']}/_history", method="get")
    assert [e["resource"]["valueQuantity"]["value"] for e in history["entry"]] == [130, 76, 72]

    # Two corrections of version 3 at once: exactly one wins, the other gets 412, nothing lost.
    clients = [fhir_server.client_for(doctor), fhir_server.client_for(doctor)]
    bodies = [
        dict(pulse, valueQuantity={"value": v, "unit": "/min"}, meta={"versionId": "3"}) for v in (120, 125)
    ]
    outcomes = _race([lambda i=i: clients[i].resource("Observation", **bodies[i]).save() for i in range(2)])
    assert sorted(outcomes)[0] == "412" and len([o for o in outcomes if o.startswith("won")]) == 1, outcomes
    history = er.execute(f"Observation/{pulse['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["4", "3", "2", "1"]


def test_a_lab_result_is_read_by_id_through_the_gate(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}", value=12.4))
    hb.save()

    read = client.reference("Observation", hb["id"]).to_resource()
    assert read["valueQuantity"]["value"] == 12.4 and read["meta"]["versionId"] == "1"
    assert read["subject"].reference == f"Patient/{patient_id}"  # fhirpy makes it a reference
    before = _exposures(runtime, doctor, "Observation")
    client.reference("Observation", hb["id"]).to_resource()
    assert _exposures(runtime, doctor, "Observation") == before + 1
    assert audit_rows(runtime, doctor.account_id).count(("phi:resource:read", "success", "Observation")) == 2

    # Billing and a physician outside the patient's care: answered as a missing one, audited.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = make_account(runtime, roles=[Role.PHYSICIAN], facility_id=facility)
    for actor in (billing, stranger):
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).reference("Observation", hb["id"]).to_resource()
        assert audit_rows(runtime, actor.account_id) == [("phi:resource:read", "denied", "Observation")]
        assert _exposures(runtime, actor, "Observation") == 0
