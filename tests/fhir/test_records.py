"""CareTeam, DiagnosticReport, Consent, Provenance, Encounter read and meta.lastUpdated, driven
by fhirpy: each through the gate, the wrong role refused (like a missing record), audited and
accounted as an exposure; a Consent changes what the gate allows at once."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from sqlalchemy import func, select

from carnet.access.actor import Actor
from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.detection.models import Exposure
from carnet.phi.importer import import_files
from carnet.runtime import Runtime
from tests.factories import (
    admit,
    link_care,
    make_account,
    make_facility,
    make_lab_report,
    make_physician,
    make_practitioner,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows

POLICY = "https://carnet.example.org/fhir/consent-policy/oppose-other-facilities"


def _clinic(runtime: Runtime) -> tuple[uuid.UUID, Actor, str]:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Lefebvre")
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


def _instant(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


def test_care_team_read_and_search(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    colleague = make_practitioner(runtime, facility)
    link_care(
        runtime,
        patient_id=patient_id,
        practitioner_id=colleague,
        facility_id=facility,
        kind="referral",
        start=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
        end=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
    )
    client = fhir_server.client_for(doctor)
    teams = client.resources("CareTeam").search(patient=f"Patient/{patient_id}").fetch()
    assert len(teams) == 2
    by_status = {t["status"]: t for t in teams}
    assert (
        by_status["active"]["participant"][0]["member"]["reference"]
        == f"Practitioner/{doctor.practitioner_id}"
    )
    assert by_status["inactive"]["category"][0]["coding"][0]["code"] == "referral"
    assert all(_instant(t["meta"]["lastUpdated"]) for t in teams)
    active = client.resources("CareTeam").search(patient=patient_id, status="active").fetch()
    assert [t.id for t in active] == [by_status["active"].id]
    theirs = (
        client.resources("CareTeam")
        .search(patient=patient_id, participant=f"Practitioner/{colleague}")
        .fetch()
    )
    assert [t.id for t in theirs] == [by_status["inactive"].id]
    read = client.reference("CareTeam", by_status["inactive"].id).to_resource()
    assert read["subject"]["reference"] == f"Patient/{patient_id}"
    # No browsing: a search names its patient.
    with pytest.raises(OperationOutcome):
        client.resources("CareTeam").search(status="active").fetch()

    # Billing sees no care team; refused like a missing record, audited, nothing exposed.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    billing_client = fhir_server.client_for(billing)
    with pytest.raises(ResourceNotFound):
        billing_client.reference("CareTeam", by_status["active"].id).to_resource()
    with pytest.raises(ResourceNotFound):
        billing_client.resources("CareTeam").search(patient=patient_id).fetch()
    assert audit_rows(runtime, billing.account_id) == [
        ("phi:resource:read", "denied", "CareTeam"),
        ("phi:resource:read", "denied", "CareTeam"),
    ]
    assert _exposures(runtime, billing, "CareTeam") == 0
    assert audit_rows(runtime, doctor.account_id).count(("phi:resource:read", "success", "CareTeam")) == 4
    assert _exposures(runtime, doctor, "CareTeam") == 4


def test_diagnostic_report_groups_its_observations(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    report_id, observations = make_lab_report(runtime, patient_id=patient_id, facility_id=facility)
    client = fhir_server.client_for(doctor)
    found = (
        client.resources("DiagnosticReport")
        .search(patient=patient_id, code="http://loinc.org|24323-8")
        .fetch()
    )
    assert [r.id for r in found] == [str(report_id)]
    report = client.reference("DiagnosticReport", str(report_id)).to_resource()
    assert report["conclusion"] == "Bilan normal."
    assert {r["reference"] for r in report["result"]} == {f"Observation/{o}" for o in observations}
    assert _instant(report["meta"]["lastUpdated"])
    assert client.resources("DiagnosticReport").search(patient=patient_id, status="preliminary").fetch() == []
    today = dt.date.today()
    assert (
        len(client.resources("DiagnosticReport").search(patient=patient_id, date=f"ge{today}").fetch()) == 1
    )
    assert client.resources("DiagnosticReport").search(patient=patient_id, date=f"lt{today}").fetch() == []
    assert len(client.resources("DiagnosticReport").search(patient=patient_id, category="LAB").fetch()) == 1
    everything = client.execute(f"Patient/{patient_id}/$everything", method="get")
    types = [e["resource"]["resourceType"] for e in everything["entry"]]
    assert "DiagnosticReport" in types and "CareTeam" in types

    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(clerk).reference("DiagnosticReport", str(report_id)).to_resource()
    assert audit_rows(runtime, clerk.account_id) == [("phi:resource:read", "denied", "DiagnosticReport")]
    assert _exposures(runtime, clerk, "DiagnosticReport") == 0
    assert _exposures(runtime, doctor, "DiagnosticReport") >= 3


def test_consent_changes_what_the_gate_allows(fhir_server_both: Server) -> None:
    """A patient of `home` opposes other facilities: a physician acting from `away` (with a care
    relationship and grants at both) loses the chart at once, and gets it back on withdrawal."""
    runtime = fhir_server_both.runtime
    home, away = make_facility(runtime), make_facility(runtime)
    practitioner = make_practitioner(runtime, home)
    doctor = make_account(runtime, roles=[Role.PHYSICIAN], facility_id=away, practitioner_id=practitioner)
    with runtime.session_factory.begin() as session:
        session.add(
            RoleGrant(
                account_id=doctor.account_id,
                role="physician",
                facility_id=home,
                status="active",
                requested_at=dt.datetime.now(dt.UTC),
                reason="works at both sites",
            )
        )
    patient_id = register_patient(runtime, home, family="Girard").id
    link_care(runtime, patient_id=patient_id, practitioner_id=practitioner, facility_id=home)
    away_client = fhir_server_both.client_for(doctor)
    assert away_client.reference("Patient", patient_id).to_resource()["name"][0]["family"] == "Girard"

    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=home)
    desk = fhir_server_both.client_for(clerk)
    consent = desk.resource(
        "Consent",
        status="active",
        scope={
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        category=[{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        patient={"reference": f"Patient/{patient_id}"},
        policy=[{"uri": POLICY}],
    )
    consent.save()
    assert consent["status"] == "active" and consent["meta"]["versionId"] == "1"
    assert (
        consent["provision"]["provision"][0]["actor"][0]["reference"]["reference"] == f"Organization/{home}"
    )
    # A second active opposition is refused (412), nothing written.
    with pytest.raises(MultipleResourcesFound):
        desk.resource("Consent", **{k: v for k, v in consent.items() if k not in ("id", "meta")}).save()

    # Now the physician acting from the other facility gets nothing, as if the patient did not exist.
    with pytest.raises(ResourceNotFound):
        away_client.reference("Patient", patient_id).to_resource()
    with pytest.raises(ResourceNotFound):
        away_client.resources("Consent").search(patient=patient_id).fetch()
    patient_at_home = desk.reference("Patient", patient_id).to_resource()
    assert patient_at_home["meta"]["versionId"] == "2"  # the restriction is a new Patient version

    # Withdrawal: PUT status inactive with the version read; a stale one gets 412.
    consent["status"] = "inactive"
    stale = desk.resource("Consent", **dict(consent, meta={"versionId": "7"}))
    with pytest.raises(MultipleResourcesFound):
        stale.save()
    consent.save()
    assert consent["status"] == "inactive" and consent["meta"]["versionId"] == "2"
    assert _instant(consent["provision"]["period"]["end"])
    assert away_client.reference("Patient", patient_id).to_resource()["name"][0]["family"] == "Girard"
    listed = away_client.resources("Consent").search(patient=patient_id).fetch()
    assert [(c.id, c["status"]) for c in listed] == [(consent.id, "inactive")]
    history = desk.execute(f"Consent/{consent.id}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]

    # DELETE of a new one withdraws it too (kept, inactive).
    again = desk.resource("Consent", **{k: v for k, v in consent.items() if k not in ("id", "meta")})
    again["status"] = "active"
    again.save()
    with pytest.raises(ResourceNotFound):
        away_client.reference("Patient", patient_id).to_resource()
    desk.execute(f"Consent/{again.id}", method="delete")
    assert desk.reference("Consent", again.id).to_resource()["status"] == "inactive"
    assert away_client.reference("Patient", patient_id).to_resource()["id"] == patient_id

    # Billing may not record a patient's decision: refused (404, as for a record it may not touch).
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=home)
    with pytest.raises(ResourceNotFound):
        fhir_server_both.client_for(billing).resource(
            "Consent", **{k: v for k, v in consent.items() if k not in ("id", "meta")} | {"status": "active"}
        ).save()
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:create", "denied", "Consent")]
    kinds = audit_rows(runtime, clerk.account_id)
    assert kinds.count(("phi:resource:create", "success", "Consent")) == 2
    assert ("phi:resource:update", "success", "Consent") in kinds
    assert ("phi:resource:create", "error", "Consent") in kinds  # the duplicate


def test_a_patient_records_their_own_opposition(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    me = register_patient(runtime, facility, family="Roux")
    other = register_patient(runtime, facility, family="Blanc")
    account = make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(me.id))
    client = fhir_server.client_for(account)
    body = {
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policy": [{"uri": POLICY}],
    }
    mine = client.resource("Consent", patient={"reference": f"Patient/{me.id}"}, **body)
    mine.save()
    assert mine["status"] == "active"
    with pytest.raises(ResourceNotFound):  # someone else's decision: not theirs to make
        client.resource("Consent", patient={"reference": f"Patient/{other.id}"}, **body).save()
    with pytest.raises(OperationOutcome):  # an unknown policy is refused, nothing written
        client.resource(
            "Consent", patient={"reference": f"Patient/{me.id}"}, **(body | {"policy": [{"uri": "urn:x"}]})
        ).save()


def test_provenance_names_the_author_of_every_version(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    allergy = client.resource(
        "AllergyIntolerance",
        patient={"reference": f"Patient/{patient_id}"},
        code={"coding": [{"system": "http://www.whocc.no/atc", "code": "J01CA", "display": "Pénicillines"}]},
        criticality="high",
    )
    allergy.save()
    found = client.resources("Provenance").search(target=f"AllergyIntolerance/{allergy.id}").fetch()
    assert len(found) == 1
    provenance = found[0]
    assert provenance["target"][0]["reference"] == f"AllergyIntolerance/{allergy.id}/_history/1"
    assert provenance["agent"][0]["who"]["reference"] == f"Practitioner/{doctor.practitioner_id}"
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    assert client.reference("Provenance", provenance.id).to_resource()["recorded"] == provenance["recorded"]
    # The patient's own versions: registration by the desk, then nothing else.
    registered = client.resources("Provenance").search(target=f"Patient/{patient_id}").fetch()
    assert [p["activity"]["coding"][0]["code"] for p in registered] == ["CREATE"]
    assert (
        registered[0]["agent"][0]["who"]["identifier"]["system"] == "https://carnet.example.org/fhir/account"
    )
    # By patient: every version in the record, newest first (here the allergy, then registration).
    record = client.resources("Provenance").search(patient=patient_id).fetch()
    assert [p["target"][0]["reference"].split("/")[0] for p in record] == ["AllergyIntolerance", "Patient"]
    with pytest.raises(OperationOutcome):  # one of target or patient, not both, not neither
        client.resources("Provenance").search(patient=patient_id, target=f"Patient/{patient_id}").fetch()
    # The front desk reads the patient's identity, not their allergies: only what it may read.
    desk = fhir_server.client_for(make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility))
    seen = desk.resources("Provenance").search(patient=patient_id).fetch()
    assert [p["target"][0]["reference"].split("/")[0] for p in seen] == ["Patient"]

    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(billing).resources("Provenance").search(
            target=f"AllergyIntolerance/{allergy.id}"
        ).fetch()
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:read", "denied", "Patient")]
    assert ("phi:resource:read", "success", "Provenance") in audit_rows(runtime, doctor.account_id)


def test_encounter_read_and_last_updated_everywhere(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    stay = admit(runtime, patient_id=patient_id, facility_id=facility, location_id=None)
    client = fhir_server.client_for(doctor)
    encounter = client.reference("Encounter", str(stay)).to_resource()
    assert encounter["status"] == "in-progress" and _instant(encounter["meta"]["lastUpdated"])
    patient = client.reference("Patient", patient_id).to_resource()
    assert _instant(patient["meta"]["lastUpdated"])
    make_lab_report(runtime, patient_id=patient_id, facility_id=facility)
    for resource_type in ("Encounter", "Observation", "DiagnosticReport", "CareTeam"):
        entries = client.resources(resource_type).search(patient=patient_id).fetch()
        assert entries, resource_type
        for entry in entries:
            assert _instant(entry["meta"]["lastUpdated"]), resource_type
    v1 = client.execute(f"Patient/{patient_id}/_history/1", method="get")
    assert _instant(v1["meta"]["lastUpdated"])
    nurse_elsewhere = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse_elsewhere).reference("Encounter", str(stay)).to_resource()
    assert audit_rows(runtime, nurse_elsewhere.account_id) == [("phi:resource:read", "denied", "Encounter")]


def test_a_restriction_set_on_the_patient_is_a_consent_too(fhir_server: Server, tmp_path: Path) -> None:
    """Registration with the restriction, a Patient PUT clearing it, and an import carrying it:
    each leaves the Consent list telling the same as the flag the policy reads."""
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    desk = fhir_server.client_for(clerk)
    closed = register_patient(runtime, facility, family="Fermé", opposes_other_facilities=True, by=clerk)
    [consent] = desk.resources("Consent").search(patient=closed.id).fetch()
    assert consent["status"] == "active" and consent["policy"][0]["uri"] == POLICY

    patient = desk.reference("Patient", closed.id).to_resource()
    patient["extension"] = [
        {
            "url": "https://carnet.example.org/fhir/StructureDefinition/opposes-other-facilities",
            "valueBoolean": False,
        }
    ]
    patient.save()
    [withdrawn] = desk.resources("Consent").search(patient=closed.id).fetch()
    assert withdrawn.id == consent.id and withdrawn["status"] == "inactive"
    assert [
        e["resource"]["status"] for e in desk.execute(f"Consent/{consent.id}/_history", method="get")["entry"]
    ] == [
        "inactive",
        "active",
    ]

    source = {
        "resourceType": "Patient",
        "id": "x1",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2900175000099"}],
        "name": [{"family": "Importé", "given": ["Léa"]}],
        "gender": "female",
        "birthDate": "1990-01-02",
        "extension": [
            {
                "url": "https://carnet.example.org/fhir/StructureDefinition/opposes-other-facilities",
                "valueBoolean": True,
            }
        ],
    }
    path = tmp_path / "Patient.ndjson"
    path.write_text(json.dumps(source) + "\n", encoding="utf-8")
    report = import_files(runtime, paths=[path], facility_id=facility, operator="test-import")
    assert report.accepted == {"Patient": 1}
    [imported] = desk.resources("Patient").search(identifier="2900175000099").fetch()
    [restriction] = desk.resources("Consent").search(patient=imported.id).fetch()
    assert restriction["status"] == "active"
    provenance = desk.resources("Provenance").search(target=f"Consent/{restriction.id}").fetch()
    assert provenance[0]["agent"][0]["who"]["display"].startswith("carnet system")


def test_every_new_endpoint_refuses_the_wrong_role_and_audits_it(fhir_server: Server) -> None:
    """Billing reads no consent, report or provenance: every read, search and write of them
    answers like a missing record (404), each refusal audited, nothing exposed."""
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    report_id, _results = make_lab_report(runtime, patient_id=patient_id, facility_id=facility)
    client = fhir_server.client_for(doctor)
    consent = client.resource(
        "Consent",
        status="active",
        scope={
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        category=[{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        patient={"reference": f"Patient/{patient_id}"},
        policy=[{"uri": POLICY}],
    )
    consent.save()
    provenance = client.resources("Provenance").search(target=f"Consent/{consent.id}").fetch()[0]

    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    other = fhir_server.client_for(billing)
    attempts = [
        lambda: other.reference("Consent", consent.id).to_resource(),
        lambda: other.resources("Consent").search(patient=patient_id).fetch(),
        lambda: other.execute(f"Consent/{consent.id}/_history", method="get"),
        lambda: other.execute(f"Consent/{consent.id}/_history/1", method="get"),
        lambda: other.resource("Consent", **dict(consent.serialize(), status="inactive")).save(),
        lambda: other.execute(f"Consent/{consent.id}", method="delete"),
        lambda: other.resources("DiagnosticReport").search(patient=patient_id).fetch(),
        lambda: other.reference("Provenance", provenance.id).to_resource(),
    ]
    for attempt in attempts:
        with pytest.raises(ResourceNotFound):
            attempt()
    rows = audit_rows(runtime, billing.account_id)
    assert len(rows) == len(attempts) and all(outcome == "denied" for _k, outcome, _r in rows)
    assert [r for _k, _o, r in rows] == [
        "Consent",
        "Consent",
        "Patient",  # history reads are audited under the record's patient
        "Patient",
        "Consent",
        "Consent",
        "DiagnosticReport",
        "Patient",  # provenance: refused on its target's patient
    ]
    with runtime.session_factory() as session:
        exposed = session.scalar(
            select(func.count()).select_from(Exposure).where(Exposure.actor_ref == billing.actor_ref)
        )
    assert exposed == 0
    assert client.reference("Consent", consent.id).to_resource()["status"] == "active"  # unchanged
    assert client.reference("DiagnosticReport", str(report_id)).to_resource()["id"] == str(report_id)
