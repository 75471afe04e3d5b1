"""A stay opened by mistake is marked entered-in-error (fhirpy: DELETE, PUT, a transaction
entry): kept and readable with every version, no longer in progress, so the patient can be
admitted again, and the care relationships the stay made (its attending physician, its ward's
nurses) end with it. The wrong role, and break-the-glass alone, are refused and audited."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.kernel.clock import MovableClock
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import EncounterInput, InvoiceInput, InvoiceLineInput
from carnet.phi.work import SqlFacilityWork
from tests.factories import (
    assign_ward,
    link_care,
    make_account,
    make_location,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _clinic, _exposures, _stay


def test_a_mistaken_stay_is_kept_ends_its_care_relationships_and_frees_the_patient(
    fhir_server_both: Server,
) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward = make_location(runtime, facility)
    nurse = make_nurse(runtime, facility)
    attending = make_physician(runtime, facility)  # no relationship but the stay would make
    assert nurse.practitioner_id is not None and attending.practitioner_id is not None
    assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    client = fhir_server.client_for(doctor)

    # Admitted by mistake, with another attending physician: the stay opens the chart to the
    # attending and to the ward's nurse.
    body = dict(
        _stay(patient_id, ward),
        participant=[{"individual": {"reference": f"Practitioner/{attending.practitioner_id}"}}],
    )
    stay = client.resource("Encounter", **body)
    stay.save()
    assert (
        fhir_server.client_for(attending).reference("Patient", patient_id).to_resource()["id"] == patient_id
    )
    assert fhir_server.client_for(nurse).reference("Encounter", stay["id"]).to_resource()["id"] == stay["id"]

    # A stale version changes nothing (412); then DELETE marks it entered-in-error (version 2).
    stale = client.resource("Encounter", **dict(stay, status="entered-in-error", meta={"versionId": "7"}))
    with pytest.raises(MultipleResourcesFound):
        stale.save()
    assert client.reference("Encounter", stay["id"]).to_resource()["status"] == "in-progress"
    stay.delete()
    read = client.reference("Encounter", stay["id"]).to_resource()
    assert read["status"] == "entered-in-error" and read["meta"]["versionId"] == "2"
    history = client.execute(f"Encounter/{stay['id']}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "in-progress"]
    assert [e["id"] for e in client.resources("Encounter").search(patient=patient_id).fetch()] == [stay["id"]]
    with pytest.raises(MultipleResourcesFound):  # already entered in error: nothing more to change
        client.resource("Encounter", **dict(read)).delete()

    # No lasting access: the attending and the ward's nurse no longer see the patient.
    for actor, path in ((attending, ("Patient", patient_id)), (nurse, ("Encounter", stay["id"]))):
        exposed = _exposures(runtime, actor, path[0])
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).reference(*path).to_resource()
        assert audit_rows(runtime, actor.account_id)[-1] == ("phi:resource:read", "denied", path[0])
        assert _exposures(runtime, actor, path[0]) == exposed

    # The patient can be admitted again; that stay too is marked in error by a PUT in a
    # transaction (its If-Match honoured), and a third admission opens.
    again = client.resource("Encounter", **_stay(patient_id, ward))
    again.save()
    assert again["status"] == "in-progress"
    entry = {
        "resource": dict(again.serialize(), status="entered-in-error"),
        "request": {"method": "PUT", "url": f"Encounter/{again['id']}", "ifMatch": 'W/"1"'},
    }
    answer = client.execute(
        "", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    )
    assert answer["entry"][0]["resource"]["status"] == "entered-in-error"
    third = client.resource("Encounter", **_stay(patient_id, ward))
    third.save()
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:update", "success", "Encounter")) == 1  # the DELETE
    assert kinds.count(("phi:resource:update", "error", "Encounter")) == 2  # stale, twice in error
    assert kinds.count(("phi:resource:transaction", "success", "Patient")) == 1

    # A nurse in the patient's care, billing, and a physician under break-the-glass alone (a
    # stay's mistakes are fixed by those caring for the patient): refused, audited, unchanged.
    carer = make_nurse(runtime, facility)
    assert carer.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=carer.practitioner_id, facility_id=facility)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    urgent = make_physician(runtime, facility)
    Gate(runtime, urgent).break_glass(patient_id=patient_id, reason="emergency", justification="inconscient")
    for actor in (carer, billing, urgent):
        with pytest.raises(ResourceNotFound):
            fhir_server.client_for(actor).resource(
                "Encounter", **dict(third.serialize(), status="entered-in-error")
            ).save()
        assert audit_rows(runtime, actor.account_id)[-1] == ("phi:resource:update", "denied", "Encounter")
    assert client.reference("Encounter", third["id"]).to_resource()["status"] == "in-progress"


def test_an_encounter_change_that_is_none_of_the_known_ones_is_refused(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    stay = client.resource("Encounter", **_stay(patient_id, make_location(runtime, facility)))
    stay.save()
    for status in ("cancelled", "planned"):
        with pytest.raises(OperationOutcome):
            client.resource("Encounter", **dict(stay.serialize(), status=status)).save()
    assert client.reference("Encounter", stay["id"]).to_resource()["meta"]["versionId"] == "1"


def test_a_mistaken_stay_leaves_no_work_and_takes_no_new_record(
    fhir_server: Server, movable_clock: MovableClock
) -> None:
    """Billing may invoice a patient it has business with (a stay among others): a stay entered
    in error is none, so it neither opens that door nor takes a note, a result or an invoice."""
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    control_id = register_patient(runtime, facility, family="Témoin").id
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=control_id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    ward = str(make_location(runtime, facility))
    mistaken = gate.admit_patient(
        data=EncounterInput(patient_id=patient_id, kind="inpatient", location_id=ward)
    )
    real = gate.admit_patient(data=EncounterInput(patient_id=control_id, kind="inpatient", location_id=ward))
    gate.mark_encounter_entered_in_error(encounter_id=mistaken.id, expected_version=1)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    lines = [InvoiceLineInput(code="GHS", description="Séjour", amount_cents=90_000)]

    with pytest.raises(InvalidInput, match="entered in error"):
        Gate(runtime, billing).issue_invoice(
            data=InvoiceInput(patient_id=patient_id, encounter_id=mistaken.id, lines=lines)
        )
    with pytest.raises(InvalidInput, match="entered in error"):
        gate.write_note(
            patient_id=patient_id, kind="11506-3", title="Entrée", text="x", encounter_id=mistaken.id
        )
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:create", "error", "Invoice")]

    # Eight days on (the registrations no longer count as business): the patient of the
    # mistaken stay is outside billing's work and cannot be invoiced; the other one can.
    movable_clock.advance(dt.timedelta(days=8))
    with runtime.session_factory() as session:
        work = SqlFacilityWork().in_work(
            session, patient_ids=[uuid.UUID(patient_id), uuid.UUID(control_id)], at=clock.now()
        )
    assert work == {uuid.UUID(control_id)}
    later = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    with pytest.raises(NotFound):
        Gate(runtime, later).issue_invoice(data=InvoiceInput(patient_id=patient_id, lines=lines))
    assert audit_rows(runtime, later.account_id) == [("phi:resource:create", "denied", "Invoice")]
    invoice = Gate(runtime, later).issue_invoice(
        data=InvoiceInput(patient_id=control_id, encounter_id=real.id, lines=lines)
    )
    assert invoice.encounter_id == real.id
