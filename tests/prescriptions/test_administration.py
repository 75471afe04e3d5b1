"""The nurse's administration record: a dose of an active prescription given, or not given with
a reason from the list, recorded through the gate as a MedicationAdministration naming the
prescription; anything else refused, audited, with nothing written."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.interventions.administering import check_administration
from carnet.kernel import clock
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import PrescriptionInput
from carnet.runtime import Runtime
from tests import factories as f

# (status, expired, given, reason, dose, note) -> what is kept, or the words of the refusal.
CASES: list[tuple[tuple[str, bool, bool, str | None, str | None, str | None], Any]] = [
    (("active", False, True, None, None, None), (None, None, None)),
    (("active", False, True, "", " 1  g ", "  calme "), (None, "1 g", "calme")),
    (("active", False, False, "refused", None, None), ("refused", None, None)),
    (("active", False, False, "held-by-physician", None, "avis"), ("held-by-physician", None, "avis")),
    (("active", False, False, None, None, None), "needs a reason from the list"),
    (("active", False, False, "tired", None, None), "needs a reason from the list"),
    (("active", False, True, "asleep", None, None), "only for a dose not given"),
    (("on-hold", False, True, None, None, None), "on hold"),
    (("stopped", False, True, None, None, None), "stopped"),
    (("completed", False, False, "absent", None, None), "completed"),
    (("entered-in-error", False, True, None, None, None), "only an active prescription"),
    (("active", True, True, None, None, None), "expired"),
    (("active", False, True, None, "x" * 101, None), "at most 100"),
    (("active", False, True, None, None, "x" * 501), "at most 500"),
]


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_the_rule(given: tuple[str, bool, bool, str | None, str | None, str | None], expected: Any) -> None:
    status, expired, is_given, reason, dose, note = given

    def run() -> Any:
        return check_administration(
            status=status, expired=expired, given=is_given, reason=reason, dose=dose, note=note
        )

    if isinstance(expected, str):
        with pytest.raises(InvalidInput, match=expected):
            run()
    else:
        assert run() == expected


def _rx(patient: str, atc: str = "N02BE01", display: str = "Paracétamol 1 g") -> PrescriptionInput:
    return PrescriptionInput(
        patient_id=patient,
        medication_code=atc,
        medication_display=display,
        substance_code=atc,
        dosage_text="1 g x 3",
    )


@pytest.fixture
def ward(sqlite_runtime: Runtime) -> tuple[Runtime, Actor, Actor, str, Any]:
    facility = f.make_facility(sqlite_runtime)
    doctor = f.make_physician(sqlite_runtime, facility)
    nurse = f.make_nurse(sqlite_runtime, facility)
    patient = f.register_patient(sqlite_runtime, facility, family="Perfusé")
    for who in (doctor, nurse):
        f.link_care(
            sqlite_runtime, patient_id=patient.id, practitioner_id=who.practitioner_id, facility_id=facility
        )
    return sqlite_runtime, doctor, nurse, patient.id, facility


def _events(runtime: Runtime, actor: Actor) -> list[tuple[str, str, str | None]]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.account_id == actor.account_id).order_by(AuditEvent.seq)
        )
        return [(e.kind, e.outcome, e.resource_type) for e in rows]


def test_a_nurse_records_a_dose_given_and_one_not_given(ward: tuple[Runtime, Actor, Actor, str, Any]) -> None:
    runtime, doctor, nurse, patient, facility = ward
    stay = f.admit(runtime, patient_id=patient, facility_id=facility, location_id=None)
    rx = Gate(runtime, doctor).prescribe(data=_rx(patient))
    gate = Gate(runtime, nurse)
    given = gate.administer_prescription(prescription_id=rx.id or "", given=True, dose="1 g", note="per os")
    assert given.status == "completed" and given.recorded_by == str(nurse.practitioner_id)
    kept = given.received or {}
    assert kept["request"] == {"reference": f"MedicationRequest/{rx.id}"}
    assert kept["subject"] == {"reference": f"Patient/{patient}"}
    assert kept["context"] == {"reference": f"Encounter/{stay}"}
    assert kept["performer"][0]["actor"]["reference"] == f"Practitioner/{nurse.practitioner_id}"
    assert kept["medicationCodeableConcept"]["coding"][0] == {
        "system": "http://www.whocc.no/atc",
        "code": "N02BE01",
        "display": "Paracétamol 1 g",
    }
    assert kept["dosage"] == {"text": "1 g"} and kept["note"] == [{"text": "per os"}]
    assert dt.datetime.fromisoformat(kept["effectiveDateTime"]).tzinfo is not None
    assert "statusReason" not in kept

    missed = gate.administer_prescription(prescription_id=rx.id or "", given=False, reason="vomited")
    assert missed.status == "not-done"
    assert (missed.received or {})["statusReason"][0]["coding"][0]["code"] == "vomited"
    listed = gate.list_medication_administrations(patient_id=patient)
    assert [a.status for a in listed] == ["completed", "not-done"]
    assert _events(runtime, nurse)[-3][:2] == ("phi:resource:create", "success")
    assert _events(runtime, nurse)[-3][2] == "MedicationAdministration"


def test_held_stopped_and_reasonless_doses_are_refused_with_nothing_written(
    ward: tuple[Runtime, Actor, Actor, str, Any],
) -> None:
    runtime, doctor, nurse, patient, _facility = ward
    prescriber = Gate(runtime, doctor)
    held = prescriber.prescribe(data=_rx(patient))
    prescriber.hold_prescription(prescription_id=held.id or "", expected_version=1, reason="bloc")
    stopped = prescriber.prescribe(data=_rx(patient, "C08CA01", "Amlodipine 5 mg"))
    prescriber.stop_prescription(prescription_id=stopped.id or "", expected_version=1, reason="fin")
    active = prescriber.prescribe(data=_rx(patient, "A02BC01", "Oméprazole 20 mg"))
    gate = Gate(runtime, nurse)
    with pytest.raises(InvalidInput, match="on hold"):
        gate.administer_prescription(prescription_id=held.id or "", given=True)
    with pytest.raises(InvalidInput, match="stopped"):
        gate.administer_prescription(prescription_id=stopped.id or "", given=True)
    with pytest.raises(InvalidInput, match="needs a reason"):
        gate.administer_prescription(prescription_id=active.id or "", given=False)
    assert gate.list_medication_administrations(patient_id=patient) == []
    assert [o for k, o, _t in _events(runtime, nurse) if k == "phi:resource:create"] == ["error"] * 3


def test_the_wrong_role_or_no_care_relationship_is_refused_and_audited(
    ward: tuple[Runtime, Actor, Actor, str, Any],
) -> None:
    runtime, doctor, _nurse, patient, facility = ward
    rx = Gate(runtime, doctor).prescribe(data=_rx(patient))
    desk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = f.make_nurse(runtime, facility)  # same hospital, not in this patient's care
    for actor in (desk, billing, stranger):
        with pytest.raises((Forbidden, NotFound)):
            Gate(runtime, actor).administer_prescription(prescription_id=rx.id or "", given=True)
        assert _events(runtime, actor)[-1][:2] == ("phi:resource:create", "denied")
    assert Gate(runtime, doctor).list_medication_administrations(patient_id=patient) == []


def test_a_physician_in_care_may_record_one_until_the_prescription_expires(
    ward: tuple[Runtime, Actor, Actor, str, Any], movable_clock: clock.MovableClock
) -> None:
    runtime, doctor, _nurse, patient, _facility = ward
    gate = Gate(runtime, doctor)
    until = clock.now() + dt.timedelta(days=2)
    rx = gate.prescribe(data=_rx(patient).model_copy(update={"valid_until": until}))
    done = gate.administer_prescription(prescription_id=rx.id or "", given=True)
    assert done.status == "completed" and "context" not in (done.received or {})  # no stay
    movable_clock.set(until + dt.timedelta(minutes=1))
    with pytest.raises(InvalidInput, match="expired"):
        gate.administer_prescription(prescription_id=rx.id or "", given=True)
