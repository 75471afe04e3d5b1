"""FHIR Patient through fhirpy: registration, conditional create, read with ETag, search,
update with If-Match (stale -> 412), history and vread, retained delete; wrong roles refused
and every access audited."""

from __future__ import annotations

import pytest
import requests
from fhirpy.base.exceptions import ForbiddenError, MultipleResourcesFound, OperationOutcome, ResourceNotFound

from carnet.access.roles import Role
from tests.factories import link_care, make_account, make_facility, make_physician
from tests.fhir.conftest import Server, audit_rows

INS = "urn:oid:1.2.250.1.213.1.4.8"


def _patient(facility: object, *, ins: str = "2700512345678", family: str = "Lefebvre") -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": INS, "value": ins}],
        "name": [{"use": "official", "family": family, "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1970-05-12",
        "telecom": [{"system": "phone", "value": "06 11 22 33 44"}],
        "address": [{"line": ["3 rue des Lilas"], "city": "Lyon", "postalCode": "69003"}],
        "managingOrganization": {"reference": f"Organization/{facility}"},
    }


def test_register_read_search_update_history(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)

    created = client.resource("Patient", **_patient(facility))
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"
    assert created["name"][0]["family"] == "Lefebvre"

    raw = requests.get(
        f"{fhir_server.url}/fhir/Patient/{created.id}", headers=client.extra_headers, timeout=10
    )
    assert raw.status_code == 200 and raw.headers["ETag"] == 'W/"1"'
    assert raw.headers["content-type"].startswith("application/fhir+json")

    found = client.resources("Patient").search(identifier=f"{INS}|2700512345678").fetch()
    assert [p.id for p in found] == [created.id]
    by_name = client.resources("Patient").search(family="Lefebvre", birthdate="1970-05-12").fetch()
    assert [p.id for p in by_name] == [created.id]

    # Update with the version read: accepted, version 2.
    created["telecom"] = [{"system": "phone", "value": "06 99 88 77 66"}]
    created.save()
    assert created["meta"]["versionId"] == "2"

    # A second writer still holding version 1 is refused with 412, and nothing changes.
    stale = client.resource("Patient", **dict(_patient(facility), id=created.id, meta={"versionId": "1"}))
    stale["name"] = [{"use": "official", "family": "Autre", "given": ["Claire"]}]
    with pytest.raises(MultipleResourcesFound):  # fhirpy's name for HTTP 412
        stale.save()
    again = client.reference("Patient", created.id).to_resource()
    assert again["name"][0]["family"] == "Lefebvre" and again["meta"]["versionId"] == "2"

    history = client.execute(f"Patient/{created.id}/_history", method="get")
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    v1 = client.execute(f"Patient/{created.id}/_history/1", method="get")
    assert v1["telecom"][0]["value"] == "06 11 22 33 44"

    kinds = audit_rows(fhir_server.runtime, clerk.account_id)
    assert ("phi:resource:create", "success", "Patient") in kinds
    assert ("phi:resource:read", "success", "Patient") in kinds
    assert ("phi:resource:search", "success", "Patient") in kinds
    assert ("phi:resource:update", "success", "Patient") in kinds
    assert ("phi:resource:update", "error", "Patient") in kinds  # the stale write


def test_conditional_create_returns_the_existing_patient(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)
    first, created = (
        client.resources("Patient")
        .search(identifier="2700512345678")
        .get_or_create(client.resource("Patient", **_patient(facility)))
    )
    assert created
    second, created_again = (
        client.resources("Patient")
        .search(identifier="2700512345678")
        .get_or_create(client.resource("Patient", **_patient(facility)))
    )
    assert not created_again and second.id == first.id
    # The R4 header form too.
    response = requests.post(
        f"{fhir_server.url}/fhir/Patient",
        json=_patient(facility),
        headers={**client.extra_headers, "If-None-Exist": "identifier=2700512345678"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["id"] == first.id


def test_wrong_roles_are_refused_and_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    patient = fhir_server.client_for(clerk).resource("Patient", **_patient(facility))
    patient.save()

    admin = make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    admin_client = fhir_server.client_for(admin)
    with pytest.raises(ForbiddenError) as refused:
        admin_client.resource("Patient", **_patient(facility, ins="1800675123456")).save()
    assert "OperationOutcome" in str(refused.value)
    # A forbidden record answers exactly like a missing one.
    with pytest.raises(ResourceNotFound):
        admin_client.reference("Patient", patient.id).to_resource()
    with pytest.raises(ResourceNotFound):
        admin_client.reference("Patient", "00000000-0000-0000-0000-000000000000").to_resource()
    assert audit_rows(runtime, admin.account_id) == [
        ("phi:resource:create", "denied", "Patient"),
        ("phi:resource:read", "denied", "Patient"),
        ("phi:resource:read", "error", "Patient"),
    ]

    # A physician without a care relationship cannot read it either; with one, can.
    doctor = make_physician(runtime, facility)
    doctor_client = fhir_server.client_for(doctor)
    with pytest.raises(ResourceNotFound):
        doctor_client.reference("Patient", patient.id).to_resource()
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    assert doctor_client.reference("Patient", patient.id).to_resource()["birthDate"] == "1970-05-12"


def test_bad_input_is_an_operation_outcome_and_changes_nothing(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)
    bad = dict(_patient(facility), unknownField=1)
    response = requests.post(
        f"{fhir_server.url}/fhir/Patient", json=bad, headers=client.extra_headers, timeout=10
    )
    assert response.status_code == 400
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and "unknownField" in body["issue"][0]["diagnostics"]
    assert "Lefebvre" not in response.text
    no_birth = {k: v for k, v in _patient(facility).items() if k != "birthDate"}
    with pytest.raises(OperationOutcome):
        client.resource("Patient", **no_birth).save()
    # Browsing is not a search.
    with pytest.raises(OperationOutcome):
        client.resources("Patient").search(gender="female").fetch()
    assert client.resources("Patient").search(identifier="2700512345678").fetch() == []


def test_delete_keeps_the_record_inactive(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)
    patient = client.resource("Patient", **_patient(facility))
    patient.save()
    patient.delete()
    kept = client.reference("Patient", patient.id).to_resource()
    assert kept["active"] is False and kept["meta"]["versionId"] == "2"
    assert ("phi:resource:delete", "success", "Patient") in audit_rows(fhir_server.runtime, clerk.account_id)


def test_a_fhir_shaped_address_reads_back_as_fhir(fhir_server: Server) -> None:
    """The seed stores FHIR-shaped addresses (`line` is a list): reads must not fail on them."""
    import json
    import uuid

    import sqlalchemy as sa

    from carnet.patients.models import Patient
    from carnet.phi.system import system_access
    from tests.factories import register_patient

    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    patient = register_patient(runtime, facility, by=clerk)
    row_id = uuid.UUID(patient.id)
    seeded_shape = {"line": ["12 rue des Lilas", "Bâtiment B"], "city": "Lyon", "postalCode": "69001"}
    with system_access(runtime, reason="test: store an address the way the seed does") as door:
        blob = door.keyring.encrypt(
            json.dumps(seeded_shape), facility_id=facility, table="patients", column="address", row_id=row_id
        )
        door.session.execute(sa.update(Patient).where(Patient.id == row_id).values(address_ct=blob))
    read = fhir_server.client_for(clerk).reference("Patient", patient.id).to_resource()
    assert read["address"][0]["line"] == ["12 rue des Lilas, Bâtiment B"]
    assert read["address"][0]["city"] == "Lyon"
