"""Stays (Encounter admit, transfer, discharge: every version kept, vread, _history, Provenance)
and lab results (Observation and DiagnosticReport create, alone and in a transaction Bundle),
driven by fhirpy: through the gate, If-Match honoured, the wrong role refused (like a missing
record) and audited, each write accounted as an exposure."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from sqlalchemy import func, select

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.detection.models import Exposure
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests.factories import (
    admit,
    assign_ward,
    link_care,
    make_account,
    make_facility,
    make_location,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _clinic(runtime: Runtime) -> tuple[uuid.UUID, Actor, str]:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Séjour")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return facility, doctor, patient.id


def _exposures(runtime: Runtime, actor: Actor, resource_type: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Exposure)
                .where(Exposure.actor_ref == actor.actor_ref, Exposure.resource_type == resource_type)
            )
            or 0
        )


def _stay(patient_id: str, ward: uuid.UUID) -> dict[str, Any]:
    return {
        "status": "in-progress",
        "class": {"system": ACT, "code": "IMP"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "location": [{"location": {"reference": f"Location/{ward}"}}],
    }


def _result(subject: str, code: str = "718-7", value: float = 13.2) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": "Hémoglobine"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat(),
        "valueQuantity": {"value": value, "unit": "g/dL"},
    }


def _report(subject: str, results: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2", "display": "NFS"}]},
        "subject": {"reference": subject},
        "issued": dt.datetime.now(dt.UTC).isoformat(),
        "conclusion": "Pas d'anémie.",
        "result": [{"reference": r} for r in results],
    }


def test_stay_admit_transfer_discharge_keeps_every_version(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward_a, ward_b = make_location(runtime, facility), make_location(runtime, facility)
    nurse_a, nurse_b = make_nurse(runtime, facility), make_nurse(runtime, facility)
    for nurse, ward in ((nurse_a, ward_a), (nurse_b, ward_b)):
        assert nurse.practitioner_id is not None
        assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    client = fhir_server.client_for(doctor)

    # Admit: version 1, the admitting physician attends; ward A's nurse now sees the stay.
    stay = client.resource("Encounter", **_stay(patient_id, ward_a))
    stay.save()
    assert stay["meta"]["versionId"] == "1" and stay["status"] == "in-progress"
    assert stay["participant"][0]["individual"]["reference"] == f"Practitioner/{doctor.practitioner_id}"
    assert _exposures(runtime, doctor, "Encounter") == 1  # the write answers with the stay
    assert (
        fhir_server.client_for(nurse_a).reference("Encounter", stay["id"]).to_resource()["id"] == stay["id"]
    )
    # One stay in progress at a time.
    with pytest.raises(MultipleResourcesFound):  # 412
        client.resource("Encounter", **_stay(patient_id, ward_b)).save()

    # Transfer to ward B (meta.versionId is the If-Match): version 2; ward A's nurse loses it.
    stay["location"] = [{"location": {"reference": f"Location/{ward_b}"}, "status": "active"}]
    stay.save()
    assert stay["meta"]["versionId"] == "2"
    assert stay["location"][0]["location"]["reference"] == f"Location/{ward_b}"
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse_a).reference("Encounter", stay["id"]).to_resource()
    fhir_server.client_for(nurse_b).reference("Encounter", stay["id"]).to_resource()

    # A stale version changes nothing (412).
    stale = client.resource("Encounter", **dict(stay, status="finished", meta={"versionId": "1"}))
    with pytest.raises(MultipleResourcesFound):
        stale.save()
    assert client.reference("Encounter", stay["id"]).to_resource()["status"] == "in-progress"

    # Discharge: status finished, period.end; version 3. A finished stay takes no more change.
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).replace(microsecond=0)
    stay["status"] = "finished"
    stay["period"] = {"start": stay["period"]["start"], "end": end.isoformat()}
    stay.save()
    assert stay["meta"]["versionId"] == "3" and stay["status"] == "finished"
    assert dt.datetime.fromisoformat(stay["period"]["end"]) == end
    with pytest.raises(MultipleResourcesFound):
        stay.save()

    # Every version: _history newest first, vread of each, Provenance naming the author.
    history = client.execute(f"Encounter/{stay['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT", "POST"]
    second = client.execute(f"Encounter/{stay['id']}/_history/2", method="get")
    assert second["status"] == "in-progress"
    assert second["location"][0]["location"]["reference"] == f"Location/{ward_b}"
    first = client.execute(f"Encounter/{stay['id']}/_history/1", method="get")
    assert first["location"][0]["location"]["reference"] == f"Location/{ward_a}"
    provenance = client.resources("Provenance").search(target=f"Encounter/{stay['id']}").fetch()
    assert [p["target"][0]["reference"].rsplit("/", 1)[1] for p in provenance] == ["3", "2", "1"]
    assert {p["agent"][0]["who"]["reference"] for p in provenance} == {
        f"Practitioner/{doctor.practitioner_id}"
    }
    assert [p["activity"]["coding"][0]["code"] for p in provenance] == ["UPDATE", "UPDATE", "CREATE"]
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:create", "success", "Encounter")) == 1
    assert kinds.count(("phi:resource:update", "success", "Encounter")) == 2
    assert ("phi:resource:update", "error", "Encounter") in kinds  # the stale one


def test_a_stay_written_before_versioning_keeps_its_first_state(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward_a, ward_b = make_location(runtime, facility), make_location(runtime, facility)
    seeded = admit(runtime, patient_id=patient_id, facility_id=facility, location_id=ward_a)
    client = fhir_server.client_for(doctor)
    stay = client.reference("Encounter", str(seeded)).to_resource()
    stay["location"] = [{"location": {"reference": f"Location/{ward_b}"}}]
    stay.save()
    history = client.execute(f"Encounter/{seeded}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["resource"]["location"][0]["location"]["reference"] == f"Location/{ward_a}"
    provenance = client.resources("Provenance").search(target=f"Encounter/{seeded}").fetch()
    assert provenance[-1]["agent"][0]["who"] == {"display": "carnet system (import or migration)"}


def test_stay_writes_refuse_the_wrong_role_and_bad_input(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward = make_location(runtime, facility)
    nurse = make_nurse(runtime, facility)
    desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    for actor in (nurse, desk):  # a nurse in the patient's care and the front desk: no admission
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).resource("Encounter", **_stay(patient_id, ward)).save()
        assert audit_rows(runtime, actor.account_id) == [("phi:resource:create", "denied", "Encounter")]
        assert _exposures(runtime, actor, "Encounter") == 0
    client = fhir_server.client_for(doctor)
    stay = client.resource("Encounter", **_stay(patient_id, ward))
    stay.save()
    changed = dict(
        stay, location=[{"location": {"reference": f"Location/{make_location(runtime, facility)}"}}]
    )
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse).resource("Encounter", **changed).save()
    assert audit_rows(runtime, nurse.account_id)[-1] == ("phi:resource:update", "denied", "Encounter")
    # Bad input: an unknown class, a location of nowhere, a transfer to where it already is.
    for bad in (
        dict(_stay(patient_id, ward), **{"class": {"system": ACT, "code": "VR"}}),
        _stay(patient_id, uuid.uuid4()),
    ):
        with pytest.raises(OperationOutcome):
            client.resource("Encounter", **bad).save()
    with pytest.raises(OperationOutcome):
        client.resource("Encounter", **dict(stay)).save()
    assert client.reference("Encounter", stay["id"]).to_resource()["meta"]["versionId"] == "1"


def test_lab_report_with_results_of_the_same_patient(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    other = register_patient(runtime, facility, family="Autre")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=other.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = fhir_server.client_for(doctor)

    hb = client.resource("Observation", **_result(f"Patient/{patient_id}"))
    hb.save()
    theirs = client.resource("Observation", **_result(f"Patient/{other.id}", value=9.1))
    theirs.save()
    # A result of another patient (even one the author may read) is refused; nothing is written.
    with pytest.raises(OperationOutcome) as refused:
        client.resource(
            "DiagnosticReport",
            **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}", f"Observation/{theirs['id']}"]),
        ).save()
    assert "result 2 is not an Observation of this report's patient" in str(refused.value)
    assert client.resources("DiagnosticReport").search(patient=patient_id).fetch() == []

    report = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    report.save()
    saved = report.serialize()
    assert saved["result"] == [{"reference": f"Observation/{hb['id']}"}]
    assert "performer" not in saved  # kept as sent; who wrote it is in Provenance (below)
    found = client.resources("DiagnosticReport").search(patient=patient_id).fetch()
    assert [r["id"] for r in found] == [report["id"]] and found[0]["conclusion"] == "Pas d'anémie."
    # A result already reported is not reported twice.
    with pytest.raises(MultipleResourcesFound):  # 412
        client.resource(
            "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
        ).save()
    provenance = client.resources("Provenance").search(target=f"DiagnosticReport/{report['id']}").fetch()
    assert [p["activity"]["coding"][0]["code"] for p in provenance] == ["CREATE"]
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:create", "success", "DiagnosticReport")) == 1
    assert kinds.count(("phi:resource:create", "error", "DiagnosticReport")) == 2
    assert _exposures(runtime, doctor, "DiagnosticReport") >= 2  # the write and the search

    # A nurse in the patient's care records a vital sign, not a lab report; billing neither.
    nurse = make_nurse(runtime, facility)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    ward = fhir_server.client_for(nurse)
    pulse = ward.resource("Observation", **dict(_result(f"Patient/{patient_id}", code="8867-4", value=72)))
    pulse.save()
    with pytest.raises(ResourceNotFound):
        ward.resource(
            "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{pulse['id']}"])
        ).save()
    assert audit_rows(runtime, nurse.account_id)[-1] == ("phi:resource:create", "denied", "DiagnosticReport")
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(billing).resource("Observation", **_result(f"Patient/{patient_id}")).save()
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:create", "denied", "Observation")]
    assert _exposures(runtime, billing, "Observation") == 0


def test_lab_report_in_a_transaction_with_urn_uuid_results(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    other = register_patient(runtime, facility, family="Ailleurs")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=other.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = fhir_server.client_for(doctor)

    def bundle(second_subject: str) -> dict[str, Any]:
        urls = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
        observations = [_result(f"Patient/{patient_id}"), _result(second_subject, code="789-8", value=4.6)]
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                *(
                    {"fullUrl": url, "resource": o, "request": {"method": "POST", "url": "Observation"}}
                    for url, o in zip(urls, observations, strict=True)
                ),
                {
                    "resource": _report(f"Patient/{patient_id}", urls),
                    "request": {"method": "POST", "url": "DiagnosticReport"},
                },
            ],
        }

    # One result about someone else: the whole transaction is refused, nothing written.
    with pytest.raises(OperationOutcome) as refused:
        client.execute("", method="post", data=bundle(f"Patient/{other.id}"))
    assert "entry 3" in str(refused.value)
    assert client.resources("Observation").search(patient=patient_id).fetch() == []
    assert client.resources("Observation").search(patient=other.id).fetch() == []

    answer = client.execute("", method="post", data=bundle(f"Patient/{patient_id}"))
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 3
    ids = [e["resource"]["id"] for e in answer["entry"][:2]]
    assert answer["entry"][2]["resource"]["result"] == [{"reference": f"Observation/{i}"} for i in ids]
    assert [r["id"] for r in client.resources("DiagnosticReport").search(patient=patient_id).fetch()] == [
        answer["entry"][2]["resource"]["id"]
    ]
    kinds = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:transaction", "error", "Patient") in kinds
    assert ("phi:resource:transaction", "success", "Patient") in kinds


def test_admit_transfer_and_discharge_in_one_transaction(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward_a, ward_b = make_location(runtime, facility), make_location(runtime, facility)
    client = fhir_server.client_for(doctor)
    stay = client.resource("Encounter", **_stay(patient_id, ward_a))
    stay.save()
    moved = dict(stay.serialize(), location=[{"location": {"reference": f"Location/{ward_b}"}}])
    answer = client.execute(
        "",
        method="post",
        data={
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": moved,
                    "request": {"method": "PUT", "url": f"Encounter/{stay['id']}", "ifMatch": 'W/"1"'},
                },
                {
                    "resource": dict(moved, status="finished"),
                    "request": {"method": "PUT", "url": f"Encounter/{stay['id']}", "ifMatch": 'W/"2"'},
                },
            ],
        },
    )
    assert [e["resource"]["meta"]["versionId"] for e in answer["entry"]] == ["2", "3"]
    assert answer["entry"][1]["resource"]["status"] == "finished"
    assert answer["entry"][1]["resource"]["period"]["end"]


def test_break_the_glass_does_not_admit(fhir_server: Server) -> None:
    """A stay would make the physician its attending (a lasting care relationship): the
    one-hour emergency access reads the chart and records results, but does not admit."""
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Urgence")
    Gate(runtime, doctor).break_glass(patient_id=patient.id, reason="emergency", justification="inconscient")
    client = fhir_server.client_for(doctor)
    assert client.reference("Patient", patient.id).to_resource()["id"] == patient.id
    client.resource("Observation", **_result(f"Patient/{patient.id}", code="8867-4", value=130)).save()
    with pytest.raises(ResourceNotFound):
        client.resource("Encounter", **_stay(patient.id, make_location(runtime, facility))).save()
    assert audit_rows(runtime, doctor.account_id)[-1] == ("phi:resource:create", "denied", "Encounter")
    assert client.resources("Encounter").search(patient=patient.id).fetch() == []


def _race(jobs: list[Any]) -> list[str]:
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            jobs[i]()
            outcomes.append(f"won:{i}")
        except MultipleResourcesFound:  # HTTP 412
            outcomes.append("412")
        except Exception as exc:  # anything else fails the test below, named
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_concurrent_admissions_and_transfers_exactly_one_wins(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    colleague = make_physician(runtime, facility)
    assert colleague.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=colleague.practitioner_id, facility_id=facility)
    wards = [make_location(runtime, facility) for _ in range(4)]
    clients = [fhir_server.client_for(doctor), fhir_server.client_for(colleague)]

    admissions = [c.resource("Encounter", **_stay(patient_id, wards[i])) for i, c in enumerate(clients)]
    outcomes = _race([a.save for a in admissions])
    assert sorted(outcomes)[0] == "412" and len([o for o in outcomes if o.startswith("won")]) == 1, outcomes
    stays = clients[0].resources("Encounter").search(patient=patient_id).fetch()
    assert len(stays) == 1 and stays[0]["status"] == "in-progress"

    copies = [c.reference("Encounter", stays[0]["id"]).to_resource() for c in clients]
    for i, copy in enumerate(copies):
        copy["location"] = [{"location": {"reference": f"Location/{wards[i + 2]}"}}]
    outcomes = _race([c.save for c in copies])
    winners = [int(o.split(":")[1]) for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("412") == 1, outcomes
    history = clients[0].execute(f"Encounter/{stays[0]['id']}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    final = history["entry"][0]["resource"]["location"][0]["location"]["reference"]
    assert final == f"Location/{wards[winners[0] + 2]}"
