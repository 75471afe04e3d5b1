"""Architecture meta-test: every public Gate method is a guarded operation, audited on allow,
deny and error; and administrators get zero patient data from every one of them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor
from carnet.access.exports import approve_export, request_export
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.interfaces.hl7v2 import ErrorCode, MessageError
from carnet.interfaces.operation import LogEntry, MessageWork
from carnet.interfaces.registry import register_interface
from carnet.interfaces.service import InterfaceService
from carnet.interventions.schemas import InterventionInput
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, CarnetError, Forbidden, NotFound
from carnet.patients.models import CareRelationship, ResourceVersion
from carnet.phi.gate import Gate, public_operations
from carnet.phi.schemas import (
    AllergyInput,
    AppointmentInput,
    CardReadingInput,
    CareRelationshipInput,
    ConditionInput,
    DiagnosticReportInput,
    EncounterInput,
    InvoiceInput,
    InvoiceLineInput,
    ObservationInput,
    PatientChanges,
    PatientInput,
    PaymentInput,
    PrescriptionInput,
    ReceivedEncounterInput,
    ReceivedPrescriptionInput,
    ServiceRequestInput,
)
from carnet.runtime import Runtime
from tests import factories as f


@dataclass
class World:
    facility: uuid.UUID
    physician: Actor
    billing: Actor
    patient: str  # in the physician's care
    stranger: str  # not in anyone's care
    appointment: str
    note: str
    prescription: str
    allergy: str = ""
    export: str = ""  # an approved export request of the physician
    invoice: str = ""  # an issued invoice of the patient
    encounter: str = ""  # the patient's current stay
    report: str = ""  # a lab report of the patient
    care_team: str = ""  # the physician's care relationship with the patient
    consent: str = ""  # an active opposition of another patient in the physician's care
    provenance: str = ""  # the version written when the allergy was recorded
    job: str = ""  # an asynchronous export of another approved request, queued
    done: str = ""  # ... and one already run, its file waiting
    bulk_done: str = ""  # ... and a Bulk Data job already run, its Patient file waiting
    no_stay: str = ""  # a patient in the physician's care with no stay in progress
    observation: str = ""  # a lab result of the patient in no report yet
    ward: str = ""  # a ward of the facility
    draft: str = ""  # a draft invoice of the patient
    payment: str = ""  # a payment of another invoice of the patient
    condition: str = ""  # an active problem of the patient
    desk: Actor | None = None  # a front-desk clerk of the facility (identity vigilance)
    merged: str = ""  # a duplicate the desk merged into `kept` (both at version 2)
    kept: str = ""
    colleague: str = ""  # another physician of the facility, in nobody's care relationship yet
    held: str = ""  # a prescription of the patient on hold (version 2)
    order: str = ""  # an active lab order of the patient
    interface: Actor | None = None  # a registered HL7 interface of the facility (ORU^R01)
    interface_id: uuid.UUID | None = None
    # An immunization, procedure, medication administered and statement of the patient.
    interventions: dict[str, str] = dataclasses.field(default_factory=dict)
    nurse: Actor | None = None  # a nurse working `ward`
    arriving: str = ""  # an appointment of the patient starting now (to check in)


def _world(runtime: Runtime) -> World:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    patient = f.register_patient(runtime, facility, family="Meta", ins="1700575000001")
    stranger = f.register_patient(runtime, facility, family="Inconnu")
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    appointment = gate.book_appointment(
        data=AppointmentInput(
            patient_id=patient.id,
            practitioner_id=str(doctor.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=30),
        )
    )
    note = gate.write_note(patient_id=patient.id, kind="11506-3", title="Suivi", text="Va bien.")
    allergy = gate.record_allergy(
        data=AllergyInput(
            patient_id=patient.id,
            substance_code="J01CA",
            substance_display="Pénicillines",
            criticality="high",
        )
    )
    prescription = gate.prescribe(data=_order(patient.id, "N02BE"))
    officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    asked = request_export(runtime, actor=doctor, purpose="audit de la file active", scope="care")
    approve_export(runtime, actor=officer, export_id=asked.id)
    world = World(
        facility,
        doctor,
        billing,
        patient.id,
        stranger.id,
        appointment.id,
        note.id,
        prescription.id,
        allergy.id,
        asked.id,
        str(f.make_invoice(runtime, patient_id=patient.id, facility_id=facility)),
    )
    # FHIR CareTeam, DiagnosticReport, Encounter, Consent and Provenance reads and writes.
    consenting = f.register_patient(runtime, facility, family="Consent")
    f.link_care(
        runtime, patient_id=consenting.id, practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    consent = gate.record_consent(patient_id=consenting.id)
    report, _results = f.make_lab_report(runtime, patient_id=patient.id, facility_id=facility)
    stay = f.admit(runtime, patient_id=patient.id, facility_id=facility, location_id=None)
    with runtime.session_factory() as session:
        care_team = session.scalar(
            sa.select(CareRelationship.id).where(CareRelationship.patient_id == uuid.UUID(patient.id))
        )
        version = session.scalar(
            sa.select(ResourceVersion.id).where(ResourceVersion.resource_id == uuid.UUID(allergy.id))
        )
    jobs = []
    # A second officer approves the third: one officer's approvals in an hour are counted as
    # access-widening changes by detection.
    second_officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    for approver in (officer, officer, second_officer):
        asked_again = request_export(runtime, actor=doctor, purpose="audit de la file active", scope="care")
        approve_export(runtime, actor=approver, export_id=asked_again.id)
        jobs.append(gate.queue_export(export_id=asked_again.id).id)
    gate.run_export_job(job_id=jobs[1], render=lambda _export: "{}\n")
    gate.run_bulk_export_job(job_id=jobs[2], render=lambda _export: {"Patient": "{}\n"})
    observation = gate.record_observation(data=_result(patient.id))
    condition = gate.record_condition(data=_problem(patient.id))
    held = gate.prescribe(data=_order(patient.id, "C09AA05"))
    gate.hold_prescription(prescription_id=held.id or "", expected_version=1, reason="bloc opératoire")
    desk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    order = gate.order_test(data=_lab_order(patient.id))
    with runtime.session_factory.begin() as session:
        interface_id = register_interface(
            session,
            name="LABMETA",
            sending_facility="LABO",
            facility_id=facility,
            message_types=["ORU^R01", "ADT^A40"],
            source_addresses=["127.0.0.1"],
            client_cert_sha256=None,
            per_minute=100,
        )
    [registered] = [i for i in InterfaceService(runtime).interfaces() if i.id == interface_id]
    merged = f.register_patient(runtime, facility, family="Doublon", by=desk).id
    kept = f.register_patient(runtime, facility, family="Gardé", by=desk).id
    Gate(runtime, desk).merge_patients(
        source_id=merged, target_id=kept, source_version=1, target_version=1, reason="doublon"
    )
    ward = f.make_location(runtime, facility)
    nurse = f.make_nurse(runtime, facility)
    assert nurse.practitioner_id is not None
    f.assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    now = dt.datetime.now(dt.UTC)
    arriving = Gate(runtime, desk).book_appointment(
        data=AppointmentInput(
            patient_id=stranger.id,
            practitioner_id=str(doctor.practitioner_id),
            start_at=now,
            end_at=now + dt.timedelta(minutes=15),
        )
    )
    return dataclasses.replace(
        world,
        desk=desk,
        nurse=nurse,
        arriving=arriving.id,
        merged=merged,
        kept=kept,
        colleague=str(f.make_practitioner(runtime, facility)),
        condition=condition.id,
        no_stay=consenting.id,
        observation=observation.id,
        ward=str(ward),
        draft=str(f.make_invoice(runtime, patient_id=patient.id, facility_id=facility, status="draft")),
        payment=_paid_invoice(runtime, billing, patient.id, facility),
        job=jobs[0],
        done=jobs[1],
        bulk_done=jobs[2],
        encounter=str(stay),
        report=str(report),
        care_team=str(care_team),
        consent=consent.id,
        provenance=str(version),
        held=held.id or "",
        order=order.id,
        interface=registered.actor("127.0.0.1"),
        interface_id=interface_id,
        interventions={
            name: getattr(gate, f"record_{operation}")(data=_intervention(name, patient.id)).id
            for name, operation in INTERVENTION_OPERATIONS.items()
        },
    )


INTERVENTION_OPERATIONS = {
    "Immunization": "immunization",
    "Procedure": "procedure",
    "MedicationAdministration": "medication_administration",
    "MedicationStatement": "medication_statement",
    "Specimen": "specimen",
}


def _visit(patient_id: str) -> ReceivedEncounterInput:
    """Another system's finished visit, kept whole."""
    return ReceivedEncounterInput(
        patient_id=patient_id,
        kind="outpatient",
        status="finished",
        start_at=dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC),
        received={
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{patient_id}"},
        },
    )


def _received_order(patient_id: str) -> ReceivedPrescriptionInput:
    """Another system's prescription in RxNorm (nothing carnet's checks read), kept whole."""
    concept = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "861007"}]}
    return ReceivedPrescriptionInput(
        patient_id=patient_id,
        medication_code="861007",
        medication_display="metformin 500 MG",
        status="active",
        received={
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
        },
    )


def _intervention(name: str, patient_id: str) -> InterventionInput:
    element = "patient" if name == "Immunization" else "subject"
    return InterventionInput(
        patient_id=patient_id,
        code_system="http://snomed.info/sct",
        code="1",
        status="completed",
        received={
            "resourceType": name,
            "status": "completed",
            element: {"reference": f"Patient/{patient_id}"},
        },
    )


def _intervention_calls() -> dict[str, tuple[str, Call, Call]]:
    calls: dict[str, tuple[str, Call, Call]] = {}
    for name, operation in INTERVENTION_OPERATIONS.items():
        plural = f"{operation}s"

        def record(g: Gate, w: World, name: str = name, operation: str = operation) -> Any:
            return getattr(g, f"record_{operation}")(data=_intervention(name, w.patient))

        def record_missing(g: Gate, w: World, name: str = name, operation: str = operation) -> Any:
            return getattr(g, f"record_{operation}")(data=_intervention(name, MISSING))

        def read(g: Gate, w: World, name: str = name, operation: str = operation) -> Any:
            return getattr(g, f"read_{operation}")(intervention_id=w.interventions[name])

        def read_missing(g: Gate, w: World, operation: str = operation) -> Any:
            return getattr(g, f"read_{operation}")(intervention_id=MISSING)

        def listed(g: Gate, w: World, plural: str = plural) -> Any:
            return getattr(g, f"list_{plural}")(patient_id=w.patient)

        def listed_missing(g: Gate, w: World, plural: str = plural) -> Any:
            return getattr(g, f"list_{plural}")(patient_id=MISSING)

        calls[f"record_{operation}"] = ("physician", record, record_missing)
        calls[f"read_{operation}"] = ("physician", read, read_missing)
        calls[f"list_{plural}"] = ("physician", listed, listed_missing)
    return calls


def _referral(w: World, days: int | None) -> CareRelationshipInput:
    end = None if days is None else dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return CareRelationshipInput(
        patient_id=w.patient, practitioner_id=w.colleague, reason="avis cardiologique", end_at=end
    )


def _order(patient: str, substance: str) -> PrescriptionInput:
    return PrescriptionInput(
        patient_id=patient,
        medication_code="3400930000002",
        medication_display="Paracétamol 1 g",
        substance_code=substance,
        dosage_text="1 g x 3 / jour",
    )


def _new_patient(w: World, **extra: Any) -> PatientInput:
    values: dict[str, Any] = {
        "facility_id": str(w.facility),
        "family": "Nouveau",
        "given": "Né",
        "birth_date": dt.date(2001, 2, 3),
        "gender": "male",
    }
    return PatientInput(**(values | extra))


def _result(patient: str) -> ObservationInput:
    return ObservationInput(
        patient_id=patient,
        category="laboratory",
        code="718-7",
        display="Hémoglobine",
        value_number=13.2,
        unit="g/dL",
        effective_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )


def _problem(patient: str, code: str = "I10") -> ConditionInput:
    return ConditionInput(patient_id=patient, code=code, display="Hypertension essentielle")


def _report(patient: str, results: list[str]) -> DiagnosticReportInput:
    return DiagnosticReportInput(
        patient_id=patient,
        code="58410-2",
        display="NFS",
        issued_at=dt.datetime.now(dt.UTC),
        result_ids=results,
    )


def _lab_order(patient: str) -> ServiceRequestInput:
    return ServiceRequestInput(patient_id=patient, code="2823-3", display="Potassium", note="sous diurétique")


def _hl7(w: World, handler: Callable[[MessageWork], None]) -> dict[str, Any]:
    """An HL7 message's operation arguments (a new control id each time)."""
    assert w.interface_id is not None
    log = LogEntry(w.interface_id, uuid.uuid4().hex[:20], "0" * 64, "ORU^R01", clock.now())
    return {"log": log, "facility_id": w.facility, "handler": handler}


def _files_a_result(w: World) -> Callable[[MessageWork], None]:
    def handler(work: MessageWork) -> None:
        work.call("record_observation", ("OBX", 1), data=_result(w.patient))

    return handler


def _refuses(work: MessageWork) -> None:
    raise MessageError("the observation value is required", code=ErrorCode.REQUIRED_FIELD, segment="OBX")


def _alone(outcomes: list[Any]) -> Any:
    """A group of one call: its result, or the exception the one path would have raised."""
    [outcome] = outcomes
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _paid_invoice(runtime: Runtime, billing: Actor, patient: str, facility: uuid.UUID) -> str:
    invoice = str(f.make_invoice(runtime, patient_id=patient, facility_id=facility))
    paid = Gate(runtime, billing).record_payment(
        data=PaymentInput(invoice_id=invoice, expected_version=1, amount_cents=2000, method="cash")
    )
    assert paid.payments
    return paid.payments[0].id


def _bill(patient: str) -> InvoiceInput:
    return InvoiceInput(
        patient_id=patient,
        lines=[InvoiceLineInput(code="CS", description="Consultation", amount_cents=3000)],
    )


def _allergy(patient: str) -> AllergyInput:
    return AllergyInput(
        patient_id=patient, substance_code="N02BA", substance_display="AINS", criticality="low"
    )


def _slot(w: World, days: int) -> AppointmentInput:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return AppointmentInput(
        patient_id=w.patient,
        practitioner_id=str(w.physician.practitioner_id),
        start_at=start,
        end_at=start + dt.timedelta(minutes=15),
    )


def _card(patient: str) -> CardReadingInput:
    return CardReadingInput(
        patient_id=patient,
        card_serial="0123456789",
        payer="CPAM Paris",
        member_id="170057500000142",
        rights_start=dt.date(2026, 1, 1),
    )


Call = Callable[[Gate, World], Any]
MISSING = "00000000-0000-4000-8000-000000000000"

# name -> (who is allowed: "physician" | "billing", an allowed call, a call that errors)
CALLS: dict[str, tuple[str, Call, Call]] = {
    "read_patient": (
        "physician",
        lambda g, w: g.read_patient(patient_id=w.patient),
        lambda g, w: g.read_patient(patient_id=MISSING),
    ),
    "search_patients": (
        "physician",
        lambda g, w: g.search_patients(identifier="1700575000001"),
        lambda g, w: g.search_patients(identifier="1700575000001", count=0),
    ),
    "day_list": ("physician", lambda g, w: g.day_list(), None),  # type: ignore[dict-item]
    "stays_worklist": (
        "physician",
        lambda g, w: g.stays_worklist(practitioner_id=str(w.physician.practitioner_id)),
        None,  # type: ignore[dict-item]
    ),
    "care_team_worklist": (
        "physician",
        lambda g, w: g.care_team_worklist(practitioner_id=str(w.physician.practitioner_id)),
        None,  # type: ignore[dict-item]
    ),
    "calendar_grid": (
        "desk",
        lambda g, w: g.calendar_grid(day_from=dt.date.today(), day_to=dt.date.today()),
        lambda g, w: g.calendar_grid(day_from=dt.date.today(), day_to=dt.date.today() - dt.timedelta(days=1)),
    ),
    "arrivals": (
        "desk",
        lambda g, w: g.arrivals(),
        lambda g, w: g.arrivals(window_start=dt.datetime(2026, 1, 1, 8, 0)),  # no time zone
    ),
    "check_in": (
        "desk",
        lambda g, w: g.check_in(appointment_id=w.arriving, expected_version=1),
        lambda g, w: g.check_in(appointment_id=w.arriving, expected_version=7),
    ),
    "billing_worklist": (
        "billing",
        lambda g, w: g.billing_worklist(),
        lambda g, w: g.billing_worklist(page=0),
    ),
    "ward_board": ("nurse", lambda g, w: g.ward_board(), None),  # type: ignore[dict-item]
    "free_beds": ("physician", lambda g, w: g.free_beds(), lambda g, w: g.free_beds(ward_id=MISSING)),
    "list_allergies": (
        "physician",
        lambda g, w: g.list_allergies(patient_id=w.patient),
        lambda g, w: g.list_allergies(patient_id=MISSING),
    ),
    "list_notes": (
        "physician",
        lambda g, w: g.list_notes(patient_id=w.patient),
        lambda g, w: g.list_notes(patient_id=MISSING),
    ),
    "list_prescriptions": (
        "physician",
        lambda g, w: g.list_prescriptions(patient_id=w.patient),
        lambda g, w: g.list_prescriptions(patient_id="not-an-id"),
    ),
    "list_coverage": (
        "billing",
        lambda g, w: g.list_coverage(patient_id=w.patient),
        lambda g, w: g.list_coverage(patient_id=MISSING),
    ),
    "list_appointments": (
        "physician",
        lambda g, w: g.list_appointments(patient_id=w.patient),
        lambda g, w: g.list_appointments(patient_id=MISSING),
    ),
    "list_invoices": (
        "billing",
        lambda g, w: g.list_invoices(patient_id=w.patient),
        lambda g, w: g.list_invoices(patient_id=MISSING),
    ),
    "list_observations": (
        "physician",
        lambda g, w: g.list_observations(patient_id=w.patient),
        lambda g, w: g.list_observations(patient_id=MISSING),
    ),
    "list_conditions": (
        "physician",
        lambda g, w: g.list_conditions(patient_id=w.patient),
        lambda g, w: g.list_conditions(patient_id=MISSING),
    ),
    "history": (
        "physician",
        lambda g, w: g.history(resource_type="DocumentReference", resource_id=w.note),
        lambda g, w: g.history(resource_type="DocumentReference", resource_id=MISSING),
    ),
    "register_patient": (
        "physician",
        lambda g, w: g.register_patient(data=_new_patient(w)),
        lambda g, w: g.register_patient(data=_new_patient(w, family="Meta", ins="1700575000001")),
    ),
    "update_patient": (
        "physician",
        lambda g, w: g.update_patient(
            patient_id=w.patient, expected_version=1, changes=PatientChanges(phone="0700000000")
        ),
        lambda g, w: g.update_patient(
            patient_id=w.patient, expected_version=99, changes=PatientChanges(phone="0700000000")
        ),
    ),
    "book_appointment": (
        "physician",
        lambda g, w: g.book_appointment(data=_slot(w, 5)),
        lambda g, w: g.book_appointment(
            data=_slot(w, 2).model_copy(update={"start_at": _slot(w, 3).start_at})
        ),
    ),
    "amend_appointment": (
        "physician",
        lambda g, w: g.amend_appointment(
            appointment_id=w.appointment,
            expected_version=1,
            start_at=_slot(w, 6).start_at,
            end_at=_slot(w, 6).end_at,
        ),
        lambda g, w: g.amend_appointment(
            appointment_id=w.appointment,
            expected_version=7,
            start_at=_slot(w, 6).start_at,
            end_at=_slot(w, 6).end_at,
        ),
    ),
    "cancel_appointment": (
        "physician",
        lambda g, w: g.cancel_appointment(
            appointment_id=w.appointment, expected_version=1, reason="patient ill"
        ),
        lambda g, w: g.cancel_appointment(appointment_id=w.appointment, expected_version=1, reason="   "),
    ),
    "write_note": (
        "physician",
        lambda g, w: g.write_note(patient_id=w.patient, kind="11506-3", title="Suivi", text="Stable."),
        lambda g, w: g.write_note(patient_id=w.patient, kind="11506-3", title="Suivi", text="  "),
    ),
    "amend_note": (
        "physician",
        lambda g, w: g.amend_note(note_id=w.note, expected_version=1, text="Va mieux.", reason="précision"),
        lambda g, w: g.amend_note(note_id=w.note, expected_version=5, text="Va mieux.", reason="précision"),
    ),
    "prescribe": (
        "physician",
        lambda g, w: g.prescribe(data=_order(w.patient, "C10AA05")),
        lambda g, w: g.prescribe(data=_order(w.patient, "J01CA")),  # allergy: stops
    ),
    "stop_prescription": (
        "physician",
        lambda g, w: g.stop_prescription(prescription_id=w.prescription, expected_version=1, reason="fin"),
        lambda g, w: g.stop_prescription(prescription_id=w.prescription, expected_version=3, reason="fin"),
    ),
    "administer_prescription": (
        "physician",
        lambda g, w: g.administer_prescription(prescription_id=w.prescription, given=True, dose="1 cp"),
        lambda g, w: g.administer_prescription(prescription_id=w.held, given=True),  # on hold
    ),
    "hold_prescription": (
        "physician",
        lambda g, w: g.hold_prescription(prescription_id=w.prescription, expected_version=1, reason="bloc"),
        lambda g, w: g.hold_prescription(prescription_id=w.prescription, expected_version=3, reason="bloc"),
    ),
    "resume_prescription": (
        "physician",
        lambda g, w: g.resume_prescription(prescription_id=w.held, expected_version=2),
        lambda g, w: g.resume_prescription(prescription_id=w.prescription, expected_version=1),  # not held
    ),
    "renew_prescription": (
        "physician",
        lambda g, w: g.renew_prescription(prescription_id=w.prescription, expected_version=1),
        lambda g, w: g.renew_prescription(prescription_id=w.prescription, expected_version=3),
    ),
    "record_allergy": (
        "physician",
        lambda g, w: g.record_allergy(
            data=AllergyInput(
                patient_id=w.patient, substance_code="N02BA", substance_display="AINS", criticality="low"
            )
        ),
        lambda g, w: g.record_allergy(
            data=AllergyInput(
                patient_id=MISSING, substance_code="N02BA", substance_display="AINS", criticality="low"
            )
        ),
    ),
    "record_encounter": (
        "physician",
        lambda g, w: g.record_encounter(data=_visit(w.patient)),
        lambda g, w: g.record_encounter(data=_visit(MISSING)),
    ),
    "record_prescription": (
        "physician",
        lambda g, w: g.record_prescription(data=_received_order(w.patient)),
        lambda g, w: g.record_prescription(data=_received_order(MISSING)),
    ),
    "keep_directory_entries": (
        "physician",
        lambda g, w: g.keep_directory_entries(
            resources=[{"resourceType": "Practitioner", "identifier": [{"system": "urn:x", "value": "1"}]}],
            rewrite=lambda r, _known: r,
            names=lambda _i: [],
        ),
        lambda g, w: g.keep_directory_entries(
            resources=[{"resourceType": "Patient"}], rewrite=lambda r, _known: r, names=lambda _i: []
        ),
    ),
    "admit_patient": (
        "physician",
        lambda g, w: g.admit_patient(
            data=EncounterInput(patient_id=w.no_stay, kind="inpatient", location_id=w.ward)
        ),
        lambda g, w: g.admit_patient(data=EncounterInput(patient_id=MISSING, kind="inpatient")),
    ),
    "transfer_encounter": (
        "physician",
        lambda g, w: g.transfer_encounter(encounter_id=w.encounter, expected_version=1, location_id=w.ward),
        lambda g, w: g.transfer_encounter(encounter_id=w.encounter, expected_version=9, location_id=w.ward),
    ),
    "discharge_encounter": (
        "physician",
        lambda g, w: g.discharge_encounter(encounter_id=w.encounter, expected_version=1),
        lambda g, w: g.discharge_encounter(encounter_id=w.encounter, expected_version=9),
    ),
    "record_observation": (
        "physician",
        lambda g, w: g.record_observation(data=_result(w.patient)),
        lambda g, w: g.record_observation(data=_result(MISSING)),
    ),
    "amend_observation": (
        "physician",
        lambda g, w: g.amend_observation(
            observation_id=w.observation,
            expected_version=1,
            status="corrected",
            value_number=12.9,
            unit="g/dL",
        ),
        lambda g, w: g.amend_observation(
            observation_id=w.observation, expected_version=9, status="entered-in-error"
        ),
    ),
    "amend_diagnostic_report": (
        "physician",
        lambda g, w: g.amend_diagnostic_report(
            report_id=w.report,
            expected_version=1,
            status="corrected",
            conclusion="Revu.",
            result_ids=[w.observation],
        ),
        lambda g, w: g.amend_diagnostic_report(
            report_id=w.report, expected_version=9, status="entered-in-error"
        ),
    ),
    "mark_encounter_entered_in_error": (
        "physician",
        lambda g, w: g.mark_encounter_entered_in_error(encounter_id=w.encounter, expected_version=1),
        lambda g, w: g.mark_encounter_entered_in_error(encounter_id=w.encounter, expected_version=9),
    ),
    "record_condition": (
        "physician",
        lambda g, w: g.record_condition(data=_problem(w.patient, "E11.9")),
        lambda g, w: g.record_condition(data=_problem(MISSING)),
    ),
    "amend_condition": (
        "physician",
        lambda g, w: g.amend_condition(
            condition_id=w.condition, expected_version=1, clinical_status="resolved"
        ),
        lambda g, w: g.amend_condition(condition_id=w.condition, expected_version=1, clinical_status="cured"),
    ),
    "read_condition": (
        "physician",
        lambda g, w: g.read_condition(condition_id=w.condition),
        lambda g, w: g.read_condition(condition_id=MISSING),
    ),
    "record_diagnostic_report": (
        "physician",
        lambda g, w: g.record_diagnostic_report(data=_report(w.patient, [w.observation])),
        lambda g, w: g.record_diagnostic_report(data=_report(w.patient, [MISSING])),
    ),
    "read_appointment": (
        "physician",
        lambda g, w: g.read_appointment(appointment_id=w.appointment),
        lambda g, w: g.read_appointment(appointment_id=MISSING),
    ),
    "read_note": (
        "physician",
        lambda g, w: g.read_note(note_id=w.note),
        lambda g, w: g.read_note(note_id=MISSING),
    ),
    "read_allergy": (
        "physician",
        lambda g, w: g.read_allergy(allergy_id=w.allergy),
        lambda g, w: g.read_allergy(allergy_id=MISSING),
    ),
    "read_prescription": (
        "physician",
        lambda g, w: g.read_prescription(prescription_id=w.prescription),
        lambda g, w: g.read_prescription(prescription_id=MISSING),
    ),
    "list_encounters": (
        "physician",
        lambda g, w: g.list_encounters(patient_id=w.patient),
        lambda g, w: g.list_encounters(patient_id=MISSING),
    ),
    "read_observation": (
        "physician",
        lambda g, w: g.read_observation(observation_id=w.observation),
        lambda g, w: g.read_observation(observation_id=MISSING),
    ),
    "read_encounter": (
        "physician",
        lambda g, w: g.read_encounter(encounter_id=w.encounter),
        lambda g, w: g.read_encounter(encounter_id=MISSING),
    ),
    "list_care_team": (
        "physician",
        lambda g, w: g.list_care_team(patient_id=w.patient),
        lambda g, w: g.list_care_team(patient_id=MISSING),
    ),
    "read_care_team": (
        "physician",
        lambda g, w: g.read_care_team(care_team_id=w.care_team),
        lambda g, w: g.read_care_team(care_team_id=MISSING),
    ),
    "list_diagnostic_reports": (
        "physician",
        lambda g, w: g.list_diagnostic_reports(patient_id=w.patient),
        lambda g, w: g.list_diagnostic_reports(patient_id=MISSING),
    ),
    "read_diagnostic_report": (
        "physician",
        lambda g, w: g.read_diagnostic_report(report_id=w.report),
        lambda g, w: g.read_diagnostic_report(report_id=MISSING),
    ),
    "refer_patient": (
        "physician",
        lambda g, w: g.refer_patient(data=_referral(w, days=30)),
        lambda g, w: g.refer_patient(data=_referral(w, days=400)),  # beyond the longest referral
    ),
    "add_care_team_member": (
        "physician",
        lambda g, w: g.add_care_team_member(data=_referral(w, days=30)),
        lambda g, w: g.add_care_team_member(data=_referral(w, days=None)),  # no end date
    ),
    "end_care_relationship": (
        "physician",
        lambda g, w: g.end_care_relationship(care_team_id=w.care_team, expected_version=1),
        lambda g, w: g.end_care_relationship(care_team_id=w.care_team, expected_version=9),
    ),
    "list_consents": (
        "physician",
        lambda g, w: g.list_consents(patient_id=w.patient),
        lambda g, w: g.list_consents(patient_id=MISSING),
    ),
    "read_consent": (
        "physician",
        lambda g, w: g.read_consent(consent_id=w.consent),
        lambda g, w: g.read_consent(consent_id=MISSING),
    ),
    "record_consent": (
        "physician",
        lambda g, w: g.record_consent(patient_id=w.patient),
        lambda g, w: g.record_consent(patient_id=w.patient, kind="research-opt-out"),
    ),
    "withdraw_consent": (
        "physician",
        lambda g, w: g.withdraw_consent(consent_id=w.consent, expected_version=1),
        lambda g, w: g.withdraw_consent(consent_id=w.consent, expected_version=9),
    ),
    "list_provenance": (
        "physician",
        lambda g, w: g.list_provenance(target_type="AllergyIntolerance", target_id=w.allergy),
        lambda g, w: g.list_provenance(target_type="Unknown", target_id=w.allergy),
    ),
    "list_patient_provenance": (
        "physician",
        lambda g, w: g.list_patient_provenance(patient_id=w.patient),
        lambda g, w: g.list_patient_provenance(patient_id=MISSING),
    ),
    "read_provenance": (
        "physician",
        lambda g, w: g.read_provenance(provenance_id=w.provenance),
        lambda g, w: g.read_provenance(provenance_id=MISSING),
    ),
    "patient_history": (
        "physician",
        lambda g, w: g.patient_history(patient_id=w.patient, resource_types=["AllergyIntolerance"], count=5),
        lambda g, w: g.patient_history(patient_id=MISSING, resource_types=["AllergyIntolerance"], count=5),
    ),
    "check_write": (
        "physician",
        lambda g, w: g.check_write(resource_type="Observation", mode="create"),
        lambda g, w: g.check_write(resource_type="Observation", mode="destroy"),
    ),
    "kick_off_export": (
        "physician",
        lambda g, w: g.kick_off_export(export_id=w.export),
        lambda g, w: g.kick_off_export(export_id="not-an-id"),
    ),
    "start_export_job": (
        "physician",
        lambda g, w: g.start_export_job(job_id=w.job),
        lambda g, w: g.start_export_job(job_id=MISSING),
    ),
    "queue_export": (
        "physician",
        lambda g, w: g.queue_export(export_id=w.export),
        lambda g, w: g.queue_export(export_id="not-an-id"),
    ),
    "run_export_job": (
        "physician",
        lambda g, w: g.run_export_job(job_id=w.job, render=lambda _e: "{}\n"),
        lambda g, w: g.run_export_job(job_id=w.done, render=lambda _e: "{}\n"),
    ),
    "run_bulk_export_job": (
        "physician",
        lambda g, w: g.run_bulk_export_job(job_id=w.job, render=lambda _e: {"Patient": "{}\n"}),
        lambda g, w: g.run_bulk_export_job(job_id=w.done, render=lambda _e: {"Patient": "{}\n"}),  # run
    ),
    "download_export_file": (
        "physician",
        lambda g, w: g.download_export_file(job_id=w.bulk_done, resource_type="Patient"),
        lambda g, w: g.download_export_file(job_id="not-an-id", resource_type="Patient"),
    ),
    "abandon_export_job": (
        "physician",
        lambda g, w: g.abandon_export_job(job_id=w.job, reason="the worker stopped"),
        lambda g, w: g.abandon_export_job(job_id=w.done, reason="too late"),
    ),
    "export_job": (
        "physician",
        lambda g, w: g.export_job(job_id=w.job),
        lambda g, w: g.export_job(job_id=MISSING),
    ),
    "download_export": (
        "physician",
        lambda g, w: g.download_export(job_id=w.done),
        lambda g, w: g.download_export(job_id=MISSING),
    ),
    "deactivate_patient": (
        "physician",
        lambda g, w: g.deactivate_patient(patient_id=w.patient, expected_version=1),
        lambda g, w: g.deactivate_patient(patient_id=w.patient, expected_version=9),
    ),
    "merge_patients": (
        "desk",
        lambda g, w: g.merge_patients(
            source_id=w.stranger, target_id=w.patient, source_version=1, target_version=1, reason="doublon"
        ),
        lambda g, w: g.merge_patients(
            source_id=w.stranger, target_id=w.patient, source_version=9, target_version=1, reason="doublon"
        ),
    ),
    "unmerge_patients": (
        "desk",
        lambda g, w: g.unmerge_patients(
            source_id=w.merged, target_id=w.kept, source_version=2, target_version=2, reason="pas un doublon"
        ),
        lambda g, w: g.unmerge_patients(
            source_id=w.merged, target_id=w.kept, source_version=2, target_version=9, reason="pas un doublon"
        ),
    ),
    "record_observations": (
        "physician",
        lambda g, w: g.record_observations(
            results=[_result(w.patient), _result(w.patient)],
            report=_report(w.patient, []).model_copy(update={"order_id": w.order}),
        ),
        lambda g, w: g.record_observations(results=[_result(w.patient), _result(w.stranger)]),
    ),
    "list_orders": (
        "physician",
        lambda g, w: g.list_orders(patient_id=w.patient),
        lambda g, w: g.list_orders(patient_id=MISSING),
    ),
    "read_order": (
        "physician",
        lambda g, w: g.read_order(order_id=w.order),
        lambda g, w: g.read_order(order_id=MISSING),
    ),
    "order_test": (
        "physician",
        lambda g, w: g.order_test(data=_lab_order(w.patient)),
        lambda g, w: g.order_test(data=_lab_order(MISSING)),
    ),
    "revoke_order": (
        "physician",
        lambda g, w: g.revoke_order(order_id=w.order, expected_version=1),
        lambda g, w: g.revoke_order(order_id=w.order, expected_version=9),
    ),
    "apply_hl7_message": (
        "interface",
        lambda g, w: g.apply_hl7_message(**_hl7(w, _files_a_result(w))),
        lambda g, w: g.apply_hl7_message(**_hl7(w, _refuses)),
    ),
    "apply_hl7_merge": (
        "interface",
        lambda g, w: g.apply_hl7_merge(**_hl7(w, lambda work: None)),
        lambda g, w: g.apply_hl7_merge(**_hl7(w, _refuses)),
    ),
    "apply_hl7_messages": (
        "interface",
        lambda g, w: _alone(g.apply_hl7_messages([_hl7(w, _files_a_result(w))])),
        lambda g, w: _alone(g.apply_hl7_messages([_hl7(w, _refuses)])),
    ),
    "run_transaction": (
        "physician",
        lambda g, w: g.run_transaction(
            steps=[
                ("record_allergy", lambda _r: {"data": _allergy(w.patient)}),
                (
                    "write_note",
                    lambda _r: {"patient_id": w.patient, "kind": "11506-3", "title": "T", "text": "ok"},
                ),
            ]
        ),
        lambda g, w: g.run_transaction(
            steps=[
                ("record_allergy", lambda _r: {"data": _allergy(w.patient)}),
                ("record_allergy", lambda _r: {"data": _allergy(MISSING)}),
            ]
        ),
    ),
    "break_glass": (
        "physician",
        lambda g, w: g.break_glass(
            patient_id=w.stranger, reason="emergency", justification="arrêt cardiaque aux urgences"
        ),
        lambda g, w: g.break_glass(
            patient_id=w.stranger, reason="curiosity", justification="arrêt cardiaque aux urgences"
        ),
    ),
    "practitioner_schedule": (
        "physician",
        lambda g, w: g.practitioner_schedule(
            practitioner_id=str(w.physician.practitioner_id),
            day_from=dt.date.today(),
            day_to=dt.date.today() + dt.timedelta(days=6),
        ),
        lambda g, w: g.practitioner_schedule(
            practitioner_id=MISSING, day_from=dt.date.today(), day_to=dt.date.today()
        ),
    ),
    "reveal_appointment_patient": (
        "physician",
        lambda g, w: g.reveal_appointment_patient(appointment_id=w.appointment),
        lambda g, w: g.reveal_appointment_patient(appointment_id="not-an-id"),
    ),
    "record_card_reading": (
        "billing",
        lambda g, w: g.record_card_reading(data=_card(w.patient)),
        lambda g, w: g.record_card_reading(data=_card(MISSING)),
    ),
    "record_payment": (
        "billing",
        lambda g, w: g.record_payment(
            data=PaymentInput(invoice_id=w.invoice, expected_version=1, amount_cents=500, method="card")
        ),
        lambda g, w: g.record_payment(
            data=PaymentInput(invoice_id=w.invoice, expected_version=7, amount_cents=500, method="card")
        ),
    ),
    "issue_invoice": (
        "billing",
        lambda g, w: g.issue_invoice(data=_bill(w.patient)),
        lambda g, w: g.issue_invoice(data=_bill(MISSING)),
    ),
    "read_invoice": (
        "billing",
        lambda g, w: g.read_invoice(invoice_id=w.invoice),
        lambda g, w: g.read_invoice(invoice_id=MISSING),
    ),
    "read_payment": (
        "billing",
        lambda g, w: g.read_payment(payment_id=w.payment),
        lambda g, w: g.read_payment(payment_id=MISSING),
    ),
    "finalize_invoice": (
        "billing",
        lambda g, w: g.finalize_invoice(invoice_id=w.draft, expected_version=1),
        lambda g, w: g.finalize_invoice(invoice_id=w.invoice, expected_version=1),  # not a draft
    ),
    "cancel_invoice": (
        "billing",
        lambda g, w: g.cancel_invoice(invoice_id=w.invoice, expected_version=1, reason="erreur de saisie"),
        lambda g, w: g.cancel_invoice(invoice_id=w.invoice, expected_version=4, reason="erreur de saisie"),
    ),
    "print_prescription": (
        "physician",
        lambda g, w: g.print_prescription(prescription_id=w.prescription),
        lambda g, w: g.print_prescription(prescription_id=MISSING),
    ),
    "print_discharge_letter": (
        "physician",
        lambda g, w: g.print_discharge_letter(encounter_id=w.encounter, language="en"),
        lambda g, w: g.print_discharge_letter(encounter_id=MISSING),
    ),
    "print_invoice": (
        "billing",
        lambda g, w: g.print_invoice(invoice_id=w.invoice),
        lambda g, w: g.print_invoice(invoice_id=w.draft),  # a draft is not printed
    ),
    "print_receipt": (
        "billing",
        lambda g, w: g.print_receipt(payment_id=w.payment),
        lambda g, w: g.print_receipt(payment_id=MISSING),
    ),
    "export": (
        "physician",
        lambda g, w: g.export(export_id=w.export),
        lambda g, w: g.export(export_id=MISSING),
    ),
}
CALLS.update(_intervention_calls())


def _outcomes(runtime: Runtime, actor: Actor) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(AuditEvent.kind, AuditEvent.outcome)
            .where(AuditEvent.actor_ref == actor.actor_ref)
            .order_by(AuditEvent.seq)
        ).all()
    return [(k, o) for k, o in rows]


def _exposed(runtime: Runtime, actor: Actor) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).select_from(Exposure).where(Exposure.actor_ref == actor.actor_ref)
            )
            or 0
        )


def test_every_public_gate_method_is_a_classified_guarded_operation() -> None:
    operations = public_operations()
    assert set(operations) == set(CALLS), "add the new Gate method to CALLS (allow, deny, error)"
    assert all(kind is not None for kind in operations.values()), "a public Gate method is not @guarded"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_operation_is_audited_on_allow_deny_and_error(
    sqlite_runtime: Runtime, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = sqlite_runtime
    world = _world(runtime)
    kind = public_operations()[name].value
    who, allowed, failing = CALLS[name]
    actor = {
        "physician": world.physician,
        "billing": world.billing,
        "desk": world.desk,
        "interface": world.interface,
        "nurse": world.nurse,
    }[who]
    assert actor is not None

    # allow
    before = len(_outcomes(runtime, actor))
    allowed(Gate(runtime, actor), world)
    assert _outcomes(runtime, actor)[before:] == [(kind, "success")]

    # deny: a system administrator with a fresh session (and one claiming a role it was not granted)
    admin = f.make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=world.facility)
    with pytest.raises((NotFound, Forbidden)):
        allowed(Gate(runtime, admin), world)
    assert _outcomes(runtime, admin) == [(kind, "denied")]
    assert _exposed(runtime, admin) == 0

    # error: bad input, a stale version, a missing record -- or, when nothing can be wrong with
    # the input, the exposure ledger failing: nothing is returned and the error is audited.
    before = len(_outcomes(runtime, actor))
    if failing is None:

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("ledger down")

        monkeypatch.setattr(runtime.ledger, "record", broken)
        with pytest.raises(RuntimeError):
            allowed(Gate(runtime, actor), world)
    else:
        with pytest.raises(CarnetError):
            failing(Gate(runtime, actor), world)
    assert _outcomes(runtime, actor)[before:] == [(kind, "error")]


@pytest.mark.parametrize("role", [Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER])
def test_administrators_get_zero_patient_data_from_every_operation(runtime: Runtime, role: Role) -> None:
    world = _world(runtime)
    # Even an administrator whose session claims clinical roles: only granted roles count.
    admin = f.make_account(runtime, roles=[role], facility_id=world.facility)
    claiming = dataclasses.replace(
        admin, roles=frozenset({role, Role.PHYSICIAN, Role.FRONT_DESK, Role.BILLING})
    )
    for actor in (admin, claiming):
        gate = Gate(runtime, actor)
        for _who, allowed, _failing in CALLS.values():
            # Refused, or contained by detection after repeated refusals: no data either way.
            with pytest.raises((NotFound, Forbidden, AccountContained)):
                allowed(gate, world)
        for query in (
            {"identifier": "1700575000001"},
            {"family": "Meta", "birth_date": dt.date(1970, 5, 17)},
            {"family": "Meta"},
        ):
            with pytest.raises((Forbidden, AccountContained)):
                gate.search_patients(**query)  # type: ignore[arg-type]
        assert _exposed(runtime, actor) == 0
    outcomes = [(k, o) for k, o in _outcomes(runtime, admin) if k.startswith("phi:")]
    assert outcomes and all(outcome == "denied" for _kind, outcome in outcomes)
