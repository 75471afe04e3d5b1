"""Prescribing through the gate: the class-based allergy and duplicate checks stop a
prescription unless overridden with a reason (kept and audited); hold, resume, renew."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from carnet.access.actor import Actor
from carnet.audit.models import AuditEvent
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import AllergyWarning, Gate
from carnet.phi.schemas import AllergyInput, PrescriptionInput
from carnet.runtime import Runtime
from tests import factories as f


def _rx(patient: str, atc: str, display: str, override: str | None = None) -> PrescriptionInput:
    return PrescriptionInput(
        patient_id=patient,
        medication_code=atc,
        medication_display=display,
        substance_code=atc,
        dosage_text="1 cp x 3 / jour",
        allergy_override_reason=override,
    )


@pytest.fixture
def ward(sqlite_runtime: Runtime) -> tuple[Runtime, Actor, Actor, str]:
    facility = f.make_facility(sqlite_runtime)
    doctor = f.make_physician(sqlite_runtime, facility)
    nurse = f.make_nurse(sqlite_runtime, facility)
    patient = f.register_patient(sqlite_runtime, facility, family="Allergique")
    for who in (doctor, nurse):
        f.link_care(
            sqlite_runtime, patient_id=patient.id, practitioner_id=who.practitioner_id, facility_id=facility
        )
    Gate(sqlite_runtime, doctor).record_allergy(
        data=AllergyInput(
            patient_id=patient.id, substance_code="J01C", substance_display="Pénicillines", criticality="high"
        )
    )
    return sqlite_runtime, doctor, nurse, patient.id


def _events(runtime: Runtime, actor: Actor) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.account_id == actor.account_id).order_by(AuditEvent.seq)
        )
        return [(e.kind, e.outcome) for e in rows]


def test_amoxicillin_for_a_penicillin_allergy_is_stopped_naming_the_allergen(
    ward: tuple[Runtime, Actor, Actor, str],
) -> None:
    runtime, doctor, _nurse, patient = ward
    gate = Gate(runtime, doctor)
    with pytest.raises(AllergyWarning) as stopped:
        gate.prescribe(data=_rx(patient, "J01CA04", "Amoxicilline 1 g"))
    assert "Pénicillines (J01C)" in str(stopped.value)
    [finding] = stopped.value.findings
    assert finding.kind == "allergy" and "Pénicillines" in finding.fr and "pénicillines (J01C)" in finding.fr
    assert _events(runtime, doctor)[-1] == ("phi:resource:create", "error")
    assert gate.list_prescriptions(patient_id=patient) == []  # nothing written

    # A cephalosporin: the documented cross-reaction, with its source.
    with pytest.raises(AllergyWarning) as cross:
        gate.prescribe(data=_rx(patient, "J01DD04", "Ceftriaxone 1 g"))
    assert "beta-lactam" in str(cross.value) and cross.value.findings[0].source

    # With a stated reason: written, the reason and the warnings kept in the audited version.
    done = gate.prescribe(
        data=_rx(patient, "J01CA04", "Amoxicilline 1 g", override="Tolérée en 2023, avis allergologue")
    )
    assert done.allergy_override_reason == "Tolérée en 2023, avis allergologue"
    assert _events(runtime, doctor)[-1] == ("phi:resource:create", "success")
    [version] = gate.history(resource_type="MedicationRequest", resource_id=done.id or "")
    assert any("Pénicillines" in w for w in version.data["warnings"])


def test_an_unrelated_drug_passes_and_a_duplicate_is_stopped(ward: tuple[Runtime, Actor, Actor, str]) -> None:
    runtime, doctor, _nurse, patient = ward
    gate = Gate(runtime, doctor)
    first = gate.prescribe(data=_rx(patient, "C10AA05", "Atorvastatine 20 mg"))
    assert first.allergy_override_reason is None
    with pytest.raises(AllergyWarning) as twice:
        gate.prescribe(data=_rx(patient, "C10AA07", "Rosuvastatine 10 mg"))
    assert twice.value.findings[0].kind == "duplicate" and "Atorvastatine 20 mg" in str(twice.value)
    assert len(gate.list_prescriptions(patient_id=patient)) == 1


def test_an_allergy_in_free_text_is_read_or_surfaced(sqlite_runtime: Runtime) -> None:
    facility = f.make_facility(sqlite_runtime)
    doctor = f.make_physician(sqlite_runtime, facility)
    patient = f.register_patient(sqlite_runtime, facility, family="Texte")
    f.link_care(
        sqlite_runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    gate = Gate(sqlite_runtime, doctor)
    for code, display in (("7980", "Penicillin G"), ("LATEX", "latex")):
        gate.record_allergy(
            data=AllergyInput(
                patient_id=patient.id, substance_code=code, substance_display=display, criticality="high"
            )
        )
    with pytest.raises(AllergyWarning) as stopped:
        gate.prescribe(data=_rx(patient.id, "J01CA04", "Amoxicilline 1 g"))
    kinds = sorted(x.kind for x in stopped.value.findings)
    assert kinds == ["allergy", "unchecked"]
    # Paracetamol: the latex allergy is shown with the prescription, not a reason to refuse it.
    done = gate.prescribe(data=_rx(patient.id, "N02BE01", "Paracétamol 1 g"))
    [version] = gate.history(resource_type="MedicationRequest", resource_id=done.id or "")
    assert any("latex" in w for w in version.data["warnings"])


def test_hold_resume_renew_and_stop(ward: tuple[Runtime, Actor, Actor, str]) -> None:
    runtime, doctor, _nurse, patient = ward
    gate = Gate(runtime, doctor)
    rx = gate.prescribe(data=_rx(patient, "C09AA05", "Ramipril 5 mg"))
    rid = rx.id or ""
    with pytest.raises(InvalidInput):
        gate.hold_prescription(prescription_id=rid, expected_version=1, reason="  ")
    held = gate.hold_prescription(prescription_id=rid, expected_version=1, reason="Bloc opératoire demain")
    assert held.status == "on-hold" and held.stop_reason == "Bloc opératoire demain"
    with pytest.raises(Conflict):
        gate.hold_prescription(prescription_id=rid, expected_version=2, reason="encore")
    resumed = gate.resume_prescription(prescription_id=rid, expected_version=2)
    assert resumed.status == "active" and resumed.stop_reason is None
    with pytest.raises(Conflict):  # stale version
        gate.renew_prescription(prescription_id=rid, expected_version=1)
    renewed = gate.renew_prescription(prescription_id=rid, expected_version=3)
    assert renewed.status == "active" and renewed.id != rid and renewed.medication_display == "Ramipril 5 mg"
    statuses = {p.id: p.status for p in gate.list_prescriptions(patient_id=patient)}
    assert statuses == {rid: "completed", renewed.id: "active"}  # not a duplicate of what it renews
    stopped = gate.stop_prescription(prescription_id=renewed.id or "", expected_version=1, reason="Toux")
    assert stopped.status == "stopped"
    with pytest.raises(Conflict):
        gate.renew_prescription(prescription_id=renewed.id or "", expected_version=2)


def test_a_nurse_cannot_prescribe_hold_or_renew_and_is_audited(
    ward: tuple[Runtime, Actor, Actor, str],
) -> None:
    runtime, doctor, nurse, patient = ward
    rx = Gate(runtime, doctor).prescribe(data=_rx(patient, "C08CA01", "Amlodipine 5 mg"))
    gate = Gate(runtime, nurse)
    calls = (
        lambda: gate.prescribe(data=_rx(patient, "N02BE01", "Paracétamol 1 g")),
        lambda: gate.hold_prescription(prescription_id=rx.id or "", expected_version=1, reason="x"),
        lambda: gate.renew_prescription(prescription_id=rx.id or "", expected_version=1),
    )
    for call in calls:
        with pytest.raises((Forbidden, NotFound)):
            call()
    assert [o for _k, o in _events(runtime, nurse)][-3:] == ["denied", "denied", "denied"]
