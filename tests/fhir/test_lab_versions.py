"""Lab results and reports keep every version: vread and `_history` of Observation and
DiagnosticReport through the gate (fhirpy), the wrong role refused and audited, exposure counted."""

from __future__ import annotations

import pytest
from fhirpy.base.exceptions import ResourceNotFound

from carnet.access.roles import Role
from tests.factories import make_account
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _clinic, _exposures, _report, _result


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

    for resource_type in ("Observation", "DiagnosticReport"):
        assert {"vread", "history-instance"} <= set(SUPPORTED[resource_type]["interactions"])
