"""Practitioner, PractitionerRole, Organization, Location: the directory of one's own
facilities, authenticated and audited; another facility's entries answer like missing ones."""

from __future__ import annotations

import uuid

import pytest
import requests
from fhirpy.base.exceptions import ForbiddenError, ResourceNotFound

from carnet.access.roles import Role
from tests.factories import make_account, make_facility, make_location, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows


def test_staff_read_their_facility_directory(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    other = make_facility(runtime)
    ward = make_location(runtime, facility)
    doctor = make_physician(runtime, facility)
    stranger = make_physician(runtime, other)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)

    practitioners = client.resources("Practitioner").fetch()
    assert str(doctor.practitioner_id) in {p.id for p in practitioners}
    assert str(stranger.practitioner_id) not in {p.id for p in practitioners}
    family = client.reference("Practitioner", str(doctor.practitioner_id)).to_resource()["name"][0]["family"]
    assert [p.id for p in client.resources("Practitioner").search(name=family).fetch()] == [
        str(doctor.practitioner_id)
    ]
    role = client.reference("PractitionerRole", str(doctor.practitioner_id)).to_resource()
    assert role["organization"]["reference"] == f"Organization/{facility}"
    assert client.reference("Organization", str(facility)).to_resource()["name"].startswith("Hôpital")
    assert client.reference("Location", str(ward)).to_resource()["status"] == "active"
    with pytest.raises(ResourceNotFound):
        client.reference("Organization", str(other)).to_resource()
    with pytest.raises(ResourceNotFound):
        client.reference("Practitioner", str(stranger.practitioner_id)).to_resource()
    # Wildcards are literal: '%' matches nothing.
    assert client.resources("Practitioner").search(name="%").fetch() == []
    kinds = audit_rows(runtime, clerk.account_id)
    assert kinds.count(("org:directory:read", "success", "Practitioner")) >= 3
    assert ("org:directory:read", "denied", "Organization") in kinds


def test_patients_and_anonymous_get_no_directory(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    patient = register_patient(runtime, facility)
    me = make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(patient.id))
    with pytest.raises(ForbiddenError):
        fhir_server.client_for(me).resources("Practitioner").fetch()
    assert audit_rows(runtime, me.account_id) == [("org:directory:read", "denied", "Practitioner")]
    assert requests.get(f"{fhir_server.url}/fhir/Location", timeout=10).status_code == 401
