"""Patient and Coverage kept as received: what another system sent (extensions, identifiers,
telecom, address parts, maritalStatus, communication, contact...) is read back whole by a
reader of every field, a redacted reader gets carnet's columns; and each door through which
carnet changes a patient (a demographic edit, an INS update, HL7's A08 and the web use
`update_patient`; a delete; a merge and its reversal; the opposition to other facilities; a
health-card reading for a Coverage) re-renders the elements carnet manages into the kept
resource and keeps everything else. A FHIR PUT replaces it with its body."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirpy.base.exceptions import OperationOutcome

from carnet.access.roles import Role
from carnet.patients.received import INS_SYSTEM, reconciled
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.phi.schemas import CardReadingInput, PatientChanges
from carnet.runtime import Runtime
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server

MARITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "W"}]}
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"


def third_party(facility: uuid.UUID | str | None = None) -> dict[str, Any]:
    """A Patient as another system writes one: more than carnet has columns for."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "extension": [{"url": RACE, "extension": [{"url": "text", "valueString": "Other Race"}]}],
        "identifier": [
            {"system": "http://hospital.example.org/mrn", "value": "MRN-0042", "use": "usual"},
            {"system": INS_SYSTEM, "value": "2700512345678"},
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "Brown", "given": ["Robin", "Ann"], "text": "Robin Ann Brown"},
            {"use": "maiden", "family": "Smith"},
        ],
        "telecom": [
            {"system": "phone", "value": "0612345678", "use": "mobile"},
            {"system": "phone", "value": "0145678901", "use": "work"},
            {"system": "email", "value": "robin@example.org"},
        ],
        "gender": "female",
        "birthDate": "1954-04-12",
        "deceasedBoolean": False,
        "address": [
            {
                "use": "home",
                "line": ["143 Summer St"],
                "city": "Waltham",
                "state": "MA",
                "postalCode": "02452",
                "country": "US",
            }
        ],
        "maritalStatus": MARITAL,
        "multipleBirthBoolean": False,
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]}}],
        "contact": [{"name": {"text": "George Brown"}, "telecom": [{"system": "phone", "value": "0699"}]}],
    }
    if facility is not None:
        resource["managingOrganization"] = {"reference": f"Organization/{facility}"}
    return resource


def _kept(view: Any) -> dict[str, Any]:
    assert view.received is not None, "not kept, or not shown"
    return dict(view.received)


# == the rule, pure ===========================================================================
def test_only_what_changed_is_rendered_anew_and_the_rest_is_kept() -> None:
    kept = third_party()
    before = {
        "family": "Brown",
        "given": "Robin Ann",
        "birth_date": "1954-04-12",
        "gender": "female",
        "ins": "2700512345678",
        "phone": "0612345678",
        "email": "robin@example.org",
        "address": {"line": "143 Summer St", "city": "Waltham", "postalCode": "02452", "country": "US"},
        "active": True,
        "merged_into_id": None,
    }
    assert reconciled(kept, before, dict(before)) == kept  # nothing changed: nothing touched
    after = before | {
        "family": "Dupont",
        "phone": "0700000000",
        "address": before["address"] | {"city": "Boston"},
        "ins": "1840375123456",
    }
    out = reconciled(kept, before, after)
    assert out["name"][0] == {"use": "official", "family": "Dupont", "given": ["Robin", "Ann"]}
    assert out["name"][1] == kept["name"][1]  # the maiden name stays
    assert out["telecom"][0] == {"system": "phone", "value": "0700000000", "use": "mobile"}
    assert out["telecom"][1:] == kept["telecom"][1:]  # the work phone, the email stay
    assert out["address"] == [kept["address"][0] | {"city": "Boston"}]  # the state stays
    assert out["identifier"] == [kept["identifier"][0], {"system": INS_SYSTEM, "value": "1840375123456"}]
    unchanged = ("extension", "maritalStatus", "communication", "contact", "deceasedBoolean", "birthDate")
    for element in unchanged:
        assert out[element] == kept[element], element
    assert kept == third_party()  # the input is not modified


def test_a_merged_duplicate_is_replaced_by_the_record_kept_and_an_unmerge_takes_it_back() -> None:
    kept = third_party()
    before = {"active": True, "merged_into_id": None}
    merged = reconciled(kept, before, {"active": False, "merged_into_id": "abc"})
    assert merged["active"] is False
    assert merged["link"] == [{"other": {"reference": "Patient/abc"}, "type": "replaced-by"}]
    back = reconciled(merged, {"active": False, "merged_into_id": "abc"}, before)
    assert back["active"] is True and "link" not in back


# == the doors ================================================================================
@pytest.fixture
def clinic(runtime: Runtime) -> tuple[Runtime, uuid.UUID, Any, Any]:
    facility = make_facility(runtime)
    desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    nurse = make_nurse(runtime, facility)
    return runtime, facility, desk, nurse


# carnet's columns of third_party(), as the FHIR mapping reads them.
COLUMNS: dict[str, Any] = {
    "family": "Brown",
    "given": "Robin Ann",
    "birth_date": dt.date(1954, 4, 12),
    "ins": "2700512345678",
    "phone": "0612345678",
    "email": "robin@example.org",
    "address": {"line": "143 Summer St", "city": "Waltham", "postalCode": "02452", "country": "US"},
}


def _registered(runtime: Runtime, facility: uuid.UUID, desk: Any) -> str:
    return register_patient(runtime, facility, by=desk, received=third_party(facility), **COLUMNS).id


def test_a_reader_of_every_field_reads_it_whole_a_redacted_one_none_of_it(
    clinic: tuple[Runtime, uuid.UUID, Any, Any],
) -> None:
    runtime, facility, desk, nurse = clinic
    pid = _registered(runtime, facility, desk)
    kept = _kept(Gate(runtime, desk).read_patient(patient_id=pid))
    expected = {k: v for k, v in third_party(facility).items()}
    assert kept == expected
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=uuid.UUID(pid), practitioner_id=nurse.practitioner_id, facility_id=facility)
    redacted = Gate(runtime, nurse).read_patient(patient_id=pid)
    assert redacted.received is None and redacted.family == "Brown" and redacted.phone is None


def test_an_update_through_carnet_re_renders_what_it_changed(
    clinic: tuple[Runtime, uuid.UUID, Any, Any],
) -> None:
    """The web's demographic form, an INS update and HL7 A08 all change a patient this way."""
    runtime, facility, desk, _nurse = clinic
    pid = _registered(runtime, facility, desk)
    gate = Gate(runtime, desk)
    view = gate.update_patient(
        patient_id=pid,
        expected_version=1,
        changes=PatientChanges(
            phone="0700000000", ins="2700512345678", address=COLUMNS["address"] | {"line": "1 rue Neuve"}
        ),
    )
    kept = _kept(view)
    sent = third_party(facility)
    assert kept["telecom"] == [sent["telecom"][0] | {"value": "0700000000"}, *sent["telecom"][1:]]
    assert kept["identifier"] == sent["identifier"]  # the INS was already this one
    assert kept["address"] == [sent["address"][0] | {"line": ["1 rue Neuve"]}]
    for element in ("extension", "maritalStatus", "communication", "contact", "name", "managingOrganization"):
        assert kept[element] == sent[element], element
    # The version kept in the history holds it too.
    [first, second] = sorted(
        gate.history(resource_type="Patient", resource_id=pid), key=lambda v: v.version_id
    )
    assert first.data["received"]["telecom"] == sent["telecom"]
    assert second.data["received"]["telecom"] == kept["telecom"]


def test_a_delete_and_an_opposition_follow_in_the_kept_resource(
    clinic: tuple[Runtime, uuid.UUID, Any, Any],
) -> None:
    runtime, facility, desk, _nurse = clinic
    pid = _registered(runtime, facility, desk)
    gate = Gate(runtime, desk)
    gate.record_consent(patient_id=pid)
    kept = _kept(gate.read_patient(patient_id=pid))
    opposition = [e for e in kept["extension"] if e["url"].endswith("opposes-other-facilities")]
    assert opposition == [
        {
            "url": "https://carnet.example.org/fhir/StructureDefinition/opposes-other-facilities",
            "valueBoolean": True,
        }
    ]
    assert kept["extension"][0]["url"] == RACE
    version = gate.read_patient(patient_id=pid).version_id
    assert version is not None
    gate.deactivate_patient(patient_id=pid, expected_version=version)
    kept = _kept(gate.read_patient(patient_id=pid))
    assert kept["active"] is False and kept["maritalStatus"] == MARITAL


def test_a_merge_keeps_the_record_kept_and_links_the_duplicate(
    clinic: tuple[Runtime, uuid.UUID, Any, Any],
) -> None:
    runtime, facility, desk, _nurse = clinic
    source = _registered(runtime, facility, desk)
    target_body = third_party(facility) | {"telecom": [{"system": "email", "value": "other@example.org"}]}
    target = register_patient(
        runtime, facility, by=desk, received=target_body,
        **COLUMNS | {"given": "Robine", "ins": None, "phone": None, "email": "other@example.org"},
    ).id  # fmt: skip
    gate = Gate(runtime, desk)
    gate.merge_patients(
        source_id=source, target_id=target, source_version=1, target_version=1, reason="doublon"
    )
    duplicate = _kept(gate.read_patient(patient_id=source))
    assert duplicate["active"] is False
    assert duplicate["link"] == [{"other": {"reference": f"Patient/{target}"}, "type": "replaced-by"}]
    assert duplicate["maritalStatus"] == MARITAL and duplicate["contact"] == third_party()["contact"]
    kept = _kept(gate.read_patient(patient_id=target))
    # The record kept stays as received, with the phone it took from the duplicate.
    assert kept["telecom"] == [*target_body["telecom"], {"system": "phone", "value": "0612345678"}]
    assert kept["maritalStatus"] == MARITAL and "link" not in kept
    versions = {p: gate.read_patient(patient_id=p).version_id for p in (source, target)}
    gate.unmerge_patients(
        source_id=source, target_id=target, source_version=versions[source], target_version=versions[target],
        reason="pas la même personne",
    )  # fmt: skip
    back = _kept(gate.read_patient(patient_id=source))
    assert back["active"] is True and "link" not in back
    assert _kept(gate.read_patient(patient_id=target))["telecom"] == target_body["telecom"]


# == over FHIR ================================================================================
def _doctor_client(server: Server) -> tuple[Any, Any, uuid.UUID]:
    facility = make_facility(server.runtime)
    doctor = make_physician(server.runtime, facility)
    return doctor, server.client_for(doctor), facility


def _cared(server: Server, doctor: Any, facility: uuid.UUID, pid: str) -> None:
    assert doctor.practitioner_id is not None
    link_care(
        server.runtime,
        patient_id=uuid.UUID(pid),
        practitioner_id=doctor.practitioner_id,
        facility_id=facility,
    )


def _without_server_parts(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def test_post_put_and_patch_over_fhir(fhir_server: Server) -> None:
    doctor, client, facility = _doctor_client(fhir_server)
    sent = third_party(facility)
    created = client.execute("Patient", method="post", data=sent)
    pid = created["id"]
    # The physician has no relationship to the new patient yet: nothing of it is shown.
    assert _without_server_parts(dict(created)) == {"resourceType": "Patient"}
    _cared(fhir_server, doctor, facility, pid)
    read = dict(client.execute(f"Patient/{pid}", method="get"))
    assert _without_server_parts(read) == sent
    # A PUT replaces the kept resource with its body.
    body = copy.deepcopy(sent) | {"id": pid, "meta": {"versionId": "1"}}
    del body["maritalStatus"]
    body["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR"}]}}]
    client.execute(f"Patient/{pid}", method="put", data=body)
    read = dict(client.execute(f"Patient/{pid}", method="get"))
    assert "maritalStatus" not in read and read["communication"] == body["communication"]
    assert read["meta"]["versionId"] == "2"
    # A JSON Patch applies to what the reader reads: the kept resource.
    answer = requests.patch(
        f"{fhir_server.url}/fhir/Patient/{pid}",
        data=json.dumps([{"op": "replace", "path": "/birthDate", "value": "1954-04-13"}]),
        headers={**client.extra_headers, "Content-Type": "application/json-patch+json", "If-Match": 'W/"2"'},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    read = dict(client.execute(f"Patient/{pid}", method="get"))
    assert read["birthDate"] == "1954-04-13" and read["contact"] == sent["contact"]
    # A reference carnet cannot resolve is refused, naming the element; nothing is written.
    body = {k: v for k, v in sent.items() if k != "identifier"}  # another person: not the same INS
    body["name"] = [{"family": "Autre", "given": ["A"]}]
    wrong = body | {"link": [{"other": {"reference": f"Patient/{uuid.uuid4()}"}, "type": "seealso"}]}
    with pytest.raises(OperationOutcome, match=r"Patient\.link\.other: carnet cannot resolve"):
        client.execute("Patient", method="post", data=wrong)
    # A link to another patient of the facility is kept.
    body["link"] = [{"other": {"reference": f"Patient/{pid}"}, "type": "seealso"}]
    other = client.execute("Patient", method="post", data=body)
    _cared(fhir_server, doctor, facility, other["id"])
    assert dict(client.execute(f"Patient/{other['id']}", method="get"))["link"] == body["link"]


def test_an_imported_coverage_follows_a_card_reading(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    patient = third_party() | {"id": "p1"}
    coverage = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "subscriberId": "56761189748",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"display": "Blue Cross"}],
        "class": [{"type": {"coding": [{"code": "group"}]}, "value": "US-BCBS", "name": "BCBS"}],
        "period": {"start": "2026-01-01", "end": "2026-12-31"},
    }
    source = tmp_path / "data.ndjson"
    source.write_text("\n".join(json.dumps(r) for r in (patient, coverage)) + "\n")
    report = import_files(runtime, paths=[source], facility_id=facility, operator="kept-test")
    assert report.rejected == []
    desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    gate = Gate(runtime, desk)
    pid = report.ids["Patient/p1"]
    read = _kept(gate.read_patient(patient_id=pid))
    assert read == {k: v for k, v in patient.items() if k != "id"}
    [kept] = gate.list_coverage(patient_id=pid).coverages
    assert kept.received is not None and kept.received["class"] == coverage["class"]
    gate.record_card_reading(
        data=CardReadingInput(
            patient_id=pid, card_serial="VITALE01", payer="CPAM Paris", member_id="185057512345",
            rights_start=dt.date(2026, 1, 1),
        )
    )  # fmt: skip
    ended = next(c for c in gate.list_coverage(patient_id=pid).coverages if c.id == kept.id)
    assert ended.status == "cancelled" and ended.received is not None
    assert ended.received["status"] == "cancelled" and ended.received["class"] == coverage["class"]
    assert (
        ended.received["period"]["start"] == "2026-01-01" and ended.received["period"]["end"] != "2026-12-31"
    )
