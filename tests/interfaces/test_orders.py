"""ORU^R01 over a real MLLP connection, answering carnet's lab orders: the placer number
(OBR-2, or ORC-2) links the results and their report to the ServiceRequest and moves it on;
the laboratory's reference range (OBX-7) and abnormal flag (OBX-8) are served on the FHIR
Observation; corrections amend, never overwrite; another patient's order is never answered."""

from __future__ import annotations

import uuid

from carnet.access.actor import Actor
from carnet.fhir.resources.observation import INTERPRETATION, observation_to_fhir
from carnet.patients.models import ResourceVersion
from carnet.phi.gate import Gate
from carnet.phi.schemas import ServiceRequestInput, ServiceRequestView
from carnet.records.models import DiagnosticReport, Observation, ServiceRequest
from carnet.runtime import Runtime
from tests.factories import link_care, make_physician
from tests.interfaces.conftest import Hospital
from tests.interfaces.helpers import Obx, Person, adt, err, msa, oru, send
from tests.interfaces.records import audit_of, counts, log_line, rows

PANEL = [
    Obx("2823-3", "5.9", "mmol/L", reference="3.5-5.0", flags="H", display="Potassium"),
    Obx("2951-2", "139", "mmol/L", reference="135-145", flags="N", display="Sodium"),
    Obx("2160-0", "41", "umol/L", reference="45-110", flags="L", display="Creatinine"),
]


def _patient(runtime: Runtime, listener: int, person: Person) -> str:
    [answer] = send(listener, adt("A04", f"REG-{person.ipp}", person, klass="O", visit=f"V-{person.ipp}"))
    assert msa(answer)[1] == "AA", msa(answer)
    return log_line(runtime, f"REG-{person.ipp}").patient_ids


def _ordered(runtime: Runtime, hospital: Hospital, patient_id: str) -> tuple[Actor, ServiceRequestView]:
    doctor = make_physician(runtime, hospital.facility_id)
    assert doctor.practitioner_id is not None
    link_care(
        runtime,
        patient_id=patient_id,
        practitioner_id=doctor.practitioner_id,
        facility_id=hospital.facility_id,
    )
    order = Gate(runtime, doctor).order_test(
        data=ServiceRequestInput(
            patient_id=patient_id, code="24326-1", display="Ionogramme", priority="urgent"
        )
    )
    assert order.placer_number and order.status == "active"
    return doctor, order


def _order_row(runtime: Runtime, order_id: str) -> ServiceRequest:
    [row] = rows(runtime, ServiceRequest, id=uuid.UUID(order_id))
    return row


def test_results_answer_the_order_and_carry_the_labs_range_and_flag(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="ORD1")
    patient_id = _patient(runtime, listener, person)
    doctor, order = _ordered(runtime, hospital, patient_id)

    [answer] = send(listener, oru("O-1", person, PANEL, filler="K1", placer=order.placer_number))
    assert msa(answer)[1:3] == ["AA", "O-1"], msa(answer)
    observations = rows(runtime, Observation, facility_id=hospital.facility_id)
    [report] = rows(runtime, DiagnosticReport, facility_id=hospital.facility_id)
    assert {str(o.order_id) for o in observations} == {order.id} and str(report.order_id) == order.id
    by_code = {o.code: o for o in observations}
    assert (by_code["2823-3"].reference_range, by_code["2823-3"].interpretation) == ("3.5-5.0", "H")
    assert (by_code["2160-0"].reference_range, by_code["2160-0"].interpretation) == ("45-110", "L")
    # Final results: the order is completed, a new version, the first one kept.
    done = _order_row(runtime, order.id)
    assert (done.status, done.version_id) == ("completed", 2)
    assert sorted(v.version_id for v in rows(runtime, ResourceVersion, resource_id=done.id)) == [1, 2]
    # One audit event for the message, naming the order it moved on; the interface was shown nothing.
    [event] = [e for e in audit_of(runtime, "interface:LAB") if e.kind == "phi:resource:transaction"]
    assert event.outcome == "success" and order.id in event.resource_ids

    # The physician reads them as FHIR: basedOn the order, referenceRange, interpretation.
    gate = Gate(runtime, doctor)
    potassium = gate.read_observation(observation_id=str(by_code["2823-3"].id))
    fhir = observation_to_fhir(potassium.model_dump())
    assert fhir["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]
    assert fhir["interpretation"] == [{"coding": [{"system": INTERPRETATION, "code": "H"}]}]
    [reference] = fhir["referenceRange"]
    assert (reference["low"]["value"], reference["high"]["value"], reference["text"]) == (3.5, 5.0, "3.5-5.0")
    assert reference["low"]["unit"] == "mmol/L"
    assert [r.id for r in gate.list_diagnostic_reports(patient_id=patient_id) if r.order_id == order.id]


def test_preliminary_results_keep_the_order_active_until_final_and_corrections_amend(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="ORD2")
    patient_id = _patient(runtime, listener, person)
    _doctor, order = _ordered(runtime, hospital, patient_id)
    preliminary = [
        Obx(r.code, r.value, r.unit, reference=r.reference, flags=r.flags, status="P") for r in PANEL
    ]
    [answer] = send(
        listener,
        oru("P-1", person, preliminary, filler="K2", status="P", placer=order.placer_number, placer_in="ORC"),
    )
    assert msa(answer)[1] == "AA", msa(answer)
    assert _order_row(runtime, order.id).status == "active"
    [report] = rows(runtime, DiagnosticReport, facility_id=hospital.facility_id)
    assert (report.status, str(report.order_id)) == ("preliminary", order.id)

    # The final results (one value changed, its flag with it): the report is final, the order done.
    final = [Obx("2823-3", "4.1", "mmol/L", reference="3.5-5.0", flags="N", display="Potassium"), *PANEL[1:]]
    [answer] = send(listener, oru("P-2", person, final, filler="K2", placer=order.placer_number))
    assert msa(answer)[1] == "AA", msa(answer)
    [report] = rows(runtime, DiagnosticReport, facility_id=hospital.facility_id)
    assert report.status == "final"
    assert _order_row(runtime, order.id).status == "completed"
    potassium = next(
        o for o in rows(runtime, Observation, facility_id=hospital.facility_id) if o.code == "2823-3"
    )
    assert (potassium.value_number, potassium.interpretation, potassium.version_id) == (4.1, "N", 2)

    # A correction (OBX-11 C) amends: a new version, the value and flag before it kept in the history.
    corrected = [
        Obx("2823-3", "6.2", "mmol/L", reference="3.5-5.0", flags="HH", status="C", display="Potassium")
    ]
    [answer] = send(
        listener, oru("P-3", person, corrected, filler="K2", status="C", placer=order.placer_number)
    )
    assert msa(answer)[1] == "AA", msa(answer)
    potassium = next(
        o for o in rows(runtime, Observation, facility_id=hospital.facility_id) if o.code == "2823-3"
    )
    assert (potassium.value_number, potassium.status, potassium.interpretation, potassium.version_id) == (
        6.2,
        "corrected",
        "HH",
        3,
    )
    assert sorted(v.version_id for v in rows(runtime, ResourceVersion, resource_id=potassium.id)) == [1, 2, 3]
    assert len(rows(runtime, Observation, facility_id=hospital.facility_id)) == 3  # amended, not added


def test_another_patients_order_and_a_bad_flag_are_refused_and_change_nothing(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    mine, theirs = Person(ipp="ORD3"), Person(ipp="ORD4", given="PAUL", birth="19900101")
    _patient(runtime, listener, mine)
    other_id = _patient(runtime, listener, theirs)
    _doctor, order = _ordered(runtime, hospital, other_id)
    before = counts(runtime, hospital.facility_id)
    [crossed] = send(listener, oru("X-1", mine, PANEL, filler="K3", placer=order.placer_number))
    assert msa(crossed)[1] == "AE" and err(crossed)[2] == "OBR^1^2", crossed
    assert "another patient's order" in msa(crossed)[3]
    [flagged] = send(
        listener, oru("X-2", mine, [Obx("2823-3", "5.9", "mmol/L", flags="VERYHIGH")], filler="K4")
    )
    assert msa(flagged)[1] == "AE" and err(flagged)[2] == "OBX^1^8", flagged
    assert counts(runtime, hospital.facility_id) == before
    assert _order_row(runtime, order.id).status == "active"
    # A placer number carnet never issued (an order placed elsewhere): filed, linked to nothing.
    [elsewhere] = send(listener, oru("X-3", mine, PANEL[:1], filler="K5", placer="PAPER-123"))
    assert msa(elsewhere)[1] == "AA", msa(elsewhere)
    [result] = rows(runtime, Observation, facility_id=hospital.facility_id)
    assert result.order_id is None
