"""Corrections of lab results, lab reports and problems inside transaction and batch Bundles
(fhirpy): PUT entries with request.ifMatch, all or nothing in a transaction (a stale version
fails the whole Bundle with 412, nothing written), one entry at a time in a batch; DELETE
entries mark them entered-in-error; the wrong role is refused and audited."""

from __future__ import annotations

from typing import Any

import pytest
from fhirpy.base.exceptions import ForbiddenError, MultipleResourcesFound, OperationOutcome
from sqlalchemy import func, select

from carnet.patients.models import ResourceVersion
from carnet.runtime import Runtime
from tests.factories import link_care, make_nurse
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_conditions import CLINICAL, _problem, _status
from tests.fhir.test_stays_and_reports import _clinic, _report, _result


def _put(resource: dict[str, Any], version: str) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url, "ifMatch": f'W/"{version}"'}}


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _versions(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(ResourceVersion)) or 0)


def _lab(
    client: Any, patient_id: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A result, a second result, a report grouping the first, a problem: all version 1."""
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}", value=12.4))
    hb.save()
    plt = client.resource("Observation", **_result(f"Patient/{patient_id}", code="777-3", value=250))
    plt.save()
    report = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    report.save()
    problem = client.resource("Condition", **_problem(f"Patient/{patient_id}"))
    problem.save()
    return hb.serialize(), plt.serialize(), report.serialize(), problem.serialize()


def test_a_transaction_corrects_results_report_and_problem_all_or_nothing(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb, plt, report, problem = _lab(client, patient_id)
    corrected = dict(hb, status="corrected", valueQuantity={"value": 10.9, "unit": "g/dL"})
    amended = dict(
        report,
        status="amended",
        conclusion="Anémie modérée.",
        result=[{"reference": f"Observation/{hb['id']}"}, {"reference": f"Observation/{plt['id']}"}],
    )
    resolved = dict(problem, clinicalStatus={"coding": [{"system": CLINICAL, "code": "resolved"}]})

    # The problem's If-Match is stale: the whole transaction fails (412), nothing is written.
    written = _versions(runtime)
    stale = _bundle("transaction", [_put(corrected, "1"), _put(amended, "1"), _put(resolved, "4")])
    with pytest.raises(MultipleResourcesFound):
        client.execute("", method="post", data=stale)
    assert _versions(runtime) == written
    for rtype, rid in (
        ("Observation", hb["id"]),
        ("DiagnosticReport", report["id"]),
        ("Condition", problem["id"]),
    ):
        assert client.reference(rtype, rid).to_resource()["meta"]["versionId"] == "1"
    # An update without the version it expects is refused (400), nothing written.
    blind = _bundle(
        "transaction",
        [{"resource": corrected, "request": {"method": "PUT", "url": f"Observation/{hb['id']}"}}],
    )
    blind["entry"][0]["resource"] = {k: v for k, v in corrected.items() if k != "meta"}
    with pytest.raises(OperationOutcome):
        client.execute("", method="post", data=blind)
    # A correction that is none (same value) in the middle: 400, nothing written.
    same = dict(plt, status="corrected")
    with pytest.raises(OperationOutcome):
        client.execute(
            "", method="post", data=_bundle("transaction", [_put(corrected, "1"), _put(same, "1")])
        )
    assert _versions(runtime) == written

    answer = client.execute(
        "",
        method="post",
        data=_bundle("transaction", [_put(corrected, "1"), _put(amended, "1"), _put(resolved, "1")]),
    )
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK"] * 3
    assert [e["response"]["etag"] for e in answer["entry"]] == ['W/"2"'] * 3
    assert answer["entry"][0]["resource"]["valueQuantity"]["value"] == 10.9
    assert len(answer["entry"][1]["resource"]["result"]) == 2
    assert _status(answer["entry"][2]["resource"], "clinicalStatus") == "resolved"
    first = client.execute(f"Observation/{hb['id']}/_history/1", method="get")
    assert first["valueQuantity"]["value"] == 12.4 and first["status"] == "final"

    # Entered in error, all three at once (DELETE entries with the version read).
    deletes = [
        {"request": {"method": "DELETE", "url": f"{t}/{rid}", "ifMatch": 'W/"2"'}}
        for t, rid in (
            ("DiagnosticReport", report["id"]),
            ("Observation", hb["id"]),
            ("Condition", problem["id"]),
        )
    ]
    answer = client.execute("", method="post", data=_bundle("transaction", deletes))
    assert answer["entry"][0]["resource"]["status"] == "entered-in-error"
    assert answer["entry"][1]["resource"]["status"] == "entered-in-error"
    assert _status(answer["entry"][2]["resource"], "verificationStatus") == "entered-in-error"
    history = client.execute(f"DiagnosticReport/{report['id']}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "amended", "final"]
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:transaction", "success", "Patient")) == 2
    assert kinds.count(("phi:resource:transaction", "error", "Patient")) == 3


def test_a_batch_corrects_each_entry_on_its_own(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb, plt, report, problem = _lab(client, patient_id)
    batch = _bundle(
        "batch",
        [
            _put(dict(hb, status="corrected", valueQuantity={"value": 11.1, "unit": "g/dL"}), "1"),
            _put(dict(plt, status="amended", valueQuantity={"value": 120, "unit": "G/L"}), "3"),  # stale
            _put(dict(report, status="corrected", conclusion="Revu."), "1"),
            _put(dict(problem, clinicalStatus={"coding": [{"system": CLINICAL, "code": "remission"}]}), "1"),
            {"request": {"method": "DELETE", "url": f"Observation/{plt['id']}"}},  # reads its version
        ],
    )
    entries = client.execute("", method="post", data=batch)["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200", "412", "200", "200", "200"]
    assert entries[1]["response"]["outcome"]["issue"][0]["diagnostics"].startswith("entry 2:")
    assert entries[2]["resource"]["conclusion"] == "Revu." and entries[2]["response"]["etag"] == 'W/"2"'
    assert entries[4]["resource"]["status"] == "entered-in-error"
    assert client.reference("Observation", hb["id"]).to_resource()["valueQuantity"]["value"] == 11.1
    assert (
        _status(client.reference("Condition", problem["id"]).to_resource(), "clinicalStatus") == "remission"
    )
    kinds = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:update", "error", "Observation") in kinds

    # A nurse in the patient's care corrects a vital sign but not a lab report nor a problem:
    # in a transaction the whole Bundle is refused (403, audited), in a batch those entries (404).
    nurse = make_nurse(runtime, facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    ward = fhir_server.client_for(nurse)
    current = client.reference("DiagnosticReport", report["id"]).to_resource().serialize()
    mixed = [
        _put(dict(hb, status="amended", valueQuantity={"value": 11.5, "unit": "g/dL"}), "2"),
        _put(dict(current, status="amended", conclusion="Par l'infirmière."), "2"),
    ]
    with pytest.raises(ForbiddenError):
        ward.execute("", method="post", data=_bundle("transaction", mixed))
    assert client.reference("Observation", hb["id"]).to_resource()["meta"]["versionId"] == "2"
    assert audit_rows(runtime, nurse.account_id) == [("phi:resource:transaction", "denied", "Patient")]
    entries = ward.execute("", method="post", data=_bundle("batch", mixed))["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200", "404"]
    assert audit_rows(runtime, nurse.account_id)[-2:] == [
        ("phi:resource:update", "success", "Observation"),
        ("phi:resource:update", "denied", "DiagnosticReport"),
    ]


def test_problems_are_created_in_a_transaction_all_or_nothing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)

    def post(resource: dict[str, Any]) -> dict[str, Any]:
        return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}

    good = [post(_problem(f"Patient/{patient_id}", code="I10")), post(_result(f"Patient/{patient_id}"))]
    bad = [*good, post(_problem(f"Patient/{patient_id}", code="hypertension"))]
    with pytest.raises(OperationOutcome):
        client.execute("", method="post", data=_bundle("transaction", bad))
    assert client.resources("Condition").search(patient=patient_id).fetch() == []
    assert client.resources("Observation").search(patient=patient_id).fetch() == []
    answer = client.execute("", method="post", data=_bundle("transaction", good))
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 2
    created = answer["entry"][0]["resource"]
    assert created["code"]["coding"][0]["code"] == "I10" and _status(created, "clinicalStatus") == "active"
    assert [c["id"] for c in client.resources("Condition").search(patient=patient_id).fetch()] == [
        created["id"]
    ]
