"""ADT over a real MLLP connection: admissions, transfers, discharges, their cancels, identity
updates and merges, each one guarded transaction; replays acknowledged, never applied twice."""

from __future__ import annotations

import datetime as dt

from carnet.access.roles import Role
from carnet.interfaces.models import InterfaceLink
from carnet.patients.models import Patient
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from tests.factories import make_account, register_patient
from tests.interfaces.conftest import Hospital
from tests.interfaces.helpers import Person, adt, err, merge, msa, send
from tests.interfaces.records import audit_of, counts, family, log_line, patient_by_ins, rows

INS = "270057512345678"


def test_a01_registers_and_admits_once_and_a_replay_changes_nothing(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="IPP1", ins=INS)
    message = adt("A01", "C-A01-1", person, attending=hospital.rpps)
    [answer] = send(listener, message)
    assert msa(answer)[1:3] == ["AA", "C-A01-1"]
    patient = patient_by_ins(runtime, hospital.facility_id, INS)
    assert patient is not None and family(runtime, patient) == "MARTIN"
    [stay] = rows(runtime, Encounter, patient_id=patient.id)
    assert (stay.status, stay.kind, stay.location_id, stay.attending_id) == (
        "in-progress",
        "inpatient",
        hospital.cardio,
        hospital.physician,
    )
    line = log_line(runtime, "C-A01-1")
    assert (line.status, line.ack_code, line.message_type, line.patient_ids) == (
        "accepted",
        "AA",
        "ADT^A01",
        str(patient.id),
    )
    events = [e for e in audit_of(runtime, "interface:ADT") if e.kind == "phi:resource:transaction"]
    assert [e.outcome for e in events] == ["success"]
    assert str(patient.id) in events[0].patient_ids and str(stay.id) in events[0].resource_ids
    before = counts(runtime, hospital.facility_id)

    # The same message again (a sender that lost the ACK): acknowledged, not applied.
    [again] = send(listener, message)
    assert msa(again)[1:3] == ["AA", "C-A01-1"]
    assert counts(runtime, hospital.facility_id) == before
    assert log_line(runtime, "C-A01-1").replays == 1
    assert len([e for e in audit_of(runtime, "interface:ADT") if e.kind == "phi:resource:transaction"]) == 1

    # Another message reusing the control id is refused.
    [reused] = send(listener, adt("A01", "C-A01-1", Person(ipp="IPP9"), visit="VN9"))
    assert msa(reused)[1] == "AE" and err(reused)[3].startswith("205^")
    assert "MSH-10" in msa(reused)[3]
    assert counts(runtime, hospital.facility_id) == before


def test_transfer_discharge_and_their_cancels_keep_every_version(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="IPP2")
    answers = send(
        listener,
        adt("A01", "S-1", person, attending=hospital.rpps),
        adt("A02", "S-2", person, location="NEURO"),
        adt("A12", "S-3", person, location="CARDIO"),
        adt("A03", "S-4", person),
    )
    assert [msa(a)[1] for a in answers] == ["AA"] * 4, [msa(a) for a in answers]
    [patient] = rows(runtime, Patient, facility_id=hospital.facility_id)
    [stay] = rows(runtime, Encounter, patient_id=patient.id)
    assert (stay.status, stay.location_id, stay.version_id) == ("finished", hospital.cardio, 4)

    # A13: the discharge was a mistake: the finished stay is kept (entered-in-error), the stay
    # goes on as a new one under the same visit number; A11 then cancels that admission.
    [a13] = send(listener, adt("A13", "S-5", person))
    assert msa(a13)[1] == "AA", msa(a13)
    stays = {s.id: s for s in rows(runtime, Encounter, patient_id=patient.id)}
    assert stays[stay.id].status == "entered-in-error"
    [current] = [s for s in stays.values() if s.id != stay.id]
    assert (current.status, current.start_at, current.location_id) == (
        "in-progress",
        stay.start_at,
        hospital.cardio,
    )
    [a11] = send(listener, adt("A11", "S-6", person))
    assert msa(a11)[1] == "AA", msa(a11)
    assert {s.status for s in rows(runtime, Encounter, patient_id=patient.id)} == {"entered-in-error"}


def test_a08_updates_a_known_patient_and_refuses_an_unknown_one(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="IPP3", ins=INS)
    send(listener, adt("A04", "U-1", person, klass="O"))
    before = counts(runtime, hospital.facility_id)

    [unknown] = send(listener, adt("A08", "U-2", Person(ipp="NOBODY", family="DURAND")))
    assert msa(unknown)[1] == "AE"
    assert err(unknown)[2] == "PID^1^3" and err(unknown)[3].startswith("204^")
    assert "no patient with these identifiers" in msa(unknown)[3]
    assert counts(runtime, hospital.facility_id) == before
    line = log_line(runtime, "U-2")
    assert (line.status, line.ack_code, line.patient_ids) == ("rejected", "AE", "")
    [refused] = [e for e in audit_of(runtime, "interface:ADT") if e.outcome == "error"]
    assert refused.kind == "phi:resource:transaction" and "no patient with these identifiers" in (
        refused.policy_reason or ""
    )

    renamed = Person(ipp="IPP3", ins=INS, family="MARTIN-DUPRE")
    [update] = send(listener, adt("A08", "U-3", renamed))
    assert msa(update)[1] == "AA", msa(update)
    patient = patient_by_ins(runtime, hospital.facility_id, INS)
    assert patient is not None and family(runtime, patient) == "MARTIN-DUPRE" and patient.version_id == 2


def test_a40_merges_the_duplicate_into_the_record_kept(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    kept = Person(ipp="IPP-K", family="BERNARD", given="ALICE", birth="19800101")
    duplicate = Person(ipp="IPP-D", family="BERNART", given="ALICE", birth="19800101")
    first = send(
        listener,
        adt("A04", "M-1", kept, klass="O", visit="VK"),
        adt("A04", "M-2", duplicate, klass="O", visit="VD"),
        adt("A03", "M-2b", duplicate, visit="VD"),  # one stay in progress per person
    )
    assert [msa(a)[1] for a in first] == ["AA", "AA", "AA"]
    [merged] = send(listener, merge("M-3", kept, duplicate))
    assert msa(merged)[1] == "AA", msa(merged)
    patients = rows(runtime, Patient, facility_id=hospital.facility_id)
    survivors = [p for p in patients if p.merged_into_id is None]
    assert len(patients) == 2 and len(survivors) == 1
    [gone] = [p for p in patients if p.merged_into_id is not None]
    assert gone.merged_into_id == survivors[0].id and not gone.active
    assert any(
        e.kind == "phi:patient:merge" and e.outcome == "success" for e in audit_of(runtime, "interface:ADT")
    )
    # The duplicate's local number now finds the record kept: a later A08 under it updates it.
    [later] = send(listener, adt("A08", "M-4", Person(ipp="IPP-D", family="BERNARD", given="ALICE")))
    assert msa(later)[1] == "AA", msa(later)
    assert rows(runtime, InterfaceLink, kind="patient")


def test_a_visit_number_of_another_patient_moves_nothing(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    alice, bob = Person(ipp="ALICE", given="ALICE"), Person(ipp="BOB", given="BOB", birth="19900101")
    first = send(listener, adt("A01", "X-1", alice, visit="VA"), adt("A01", "X-2", bob, visit="VB"))
    assert [msa(a)[1] for a in first] == ["AA", "AA"]
    before = counts(runtime, hospital.facility_id)
    [crossed] = send(listener, adt("A03", "X-3", alice, visit="VB"))  # Alice, but Bob's visit
    assert msa(crossed)[1] == "AE" and "another patient's stay" in msa(crossed)[3]
    assert err(crossed)[2] == "PV1^1^19"
    assert counts(runtime, hospital.facility_id) == before
    assert {s.status for s in rows(runtime, Encounter, facility_id=hospital.facility_id)} == {"in-progress"}


def test_a_local_number_and_an_ins_naming_two_patients_is_refused(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    first = send(
        listener,
        adt("A04", "I-1", Person(ipp="N1", ins=INS), klass="O", visit="W1"),
        adt("A04", "I-2", Person(ipp="N2", given="LUC", birth="19910101"), klass="O", visit="W2"),
    )
    assert [msa(a)[1] for a in first] == ["AA", "AA"]
    before = counts(runtime, hospital.facility_id)
    # The sender now says N2 has the INS of the first patient: a person must check who is who.
    [conflict] = send(listener, adt("A08", "I-3", Person(ipp="N2", ins=INS, given="LUC", birth="19910101")))
    assert msa(conflict)[1] == "AE" and "two different patients" in msa(conflict)[3]
    assert err(conflict)[2] == "PID^1^3" and err(conflict)[3].startswith("205^")
    assert counts(runtime, hospital.facility_id) == before


def test_a08_of_a_patient_kept_as_received_re_renders_what_it_changed(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    """A patient another system sent (kept whole): an A08 changes its name; the kept resource
    takes the new name and keeps every element carnet has no column for."""
    ins = "2800575123456"
    received = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": ins},
            {"system": "urn:x", "value": "9"},
        ],
        "name": [
            {"use": "official", "family": "MARTIN", "given": ["JEANNE"]},
            {"use": "nickname", "given": ["Jo"]},
        ],
        "gender": "female",
        "birthDate": "1970-05-17",
        "maritalStatus": {"text": "married"},
        "communication": [{"language": {"text": "French"}}],
    }
    desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id)
    pid = register_patient(
        runtime, hospital.facility_id, family="MARTIN", given="JEANNE", birth_date=dt.date(1970, 5, 17),
        ins=ins, by=desk, received=received,
    ).id  # fmt: skip
    [update] = send(listener, adt("A08", "K-1", Person(ipp="IPP-K8", ins=ins, family="MARTIN-DUPRE")))
    assert msa(update)[1] == "AA", msa(update)
    kept = Gate(runtime, desk).read_patient(patient_id=pid).received
    assert kept is not None
    assert kept["name"] == [
        {"use": "official", "family": "MARTIN-DUPRE", "given": ["JEANNE"]},
        {"use": "nickname", "given": ["Jo"]},
    ]
    for element in ("identifier", "maritalStatus", "communication", "birthDate", "gender"):
        assert kept[element] == received[element], element
