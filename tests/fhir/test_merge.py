"""FHIR Patient $merge through fhirpy: two records of one person made one, history kept.

The duplicate (source) becomes inactive, replaced-by the record kept (target); its records move
to the target; both get a new version; the merge is audited with both patients and exposes each
once. Wrong roles are refused and audited; a stale version is 412; bad input is an
OperationOutcome; and in every refusal nothing changes.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.patients.models import Patient
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.phi.schemas import AllergyInput, AppointmentInput, PatientChanges
from carnet.runtime import Runtime
from tests.factories import (
    admit,
    link_care,
    make_account,
    make_facility,
    make_location,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows

INS = "urn:oid:1.2.250.1.213.1.4.8"
MERGE = "phi:patient:merge"


def _parameters(
    source: str, target: str, *, versions: tuple[int, int] = (1, 1), reason: str | None = None
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "source-patient",
            "valueReference": {"reference": f"Patient/{source}/_history/{versions[0]}"},
        },
        {
            "name": "target-patient",
            "valueReference": {"reference": f"Patient/{target}/_history/{versions[1]}"},
        },
    ]
    if reason is not None:
        parameters.append({"name": "reason", "valueString": reason})
    return {"resourceType": "Parameters", "parameter": parameters}


def _merge(client: SyncFHIRClient, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = client.execute("Patient/$merge", method="post", data=body)
    return result


def _state(runtime: Runtime, *ids: str) -> list[tuple[int, bool, uuid.UUID | None]]:
    with runtime.session_factory() as session:
        rows = [session.get(Patient, uuid.UUID(i)) for i in ids]
        return [(r.version_id, r.active, r.merged_into_id) for r in rows if r is not None]


def _exposures(runtime: Runtime, actor: Actor) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(Exposure.patient_id, Exposure.channel)
            .where(Exposure.actor_ref == actor.actor_ref)
            .order_by(Exposure.at, Exposure.id)
        ).all()
    return [(str(p), c) for p, c in rows]


def _duplicates(runtime: Runtime, facility: uuid.UUID, clerk: Actor) -> tuple[str, str]:
    """The same woman registered twice: once with her INS, once (a typo in her given name) without."""
    source = register_patient(
        runtime, facility, family="Dubreuil", given="Anne-Sophie", ins="2800575123456", by=clerk
    )
    target = register_patient(runtime, facility, family="Dubreuil", given="Sophie", by=clerk)
    return source.id, target.id


def test_merge_moves_the_records_and_keeps_the_history(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    # The physician looked after the duplicate: a care relationship, a note, an allergy, an appointment.
    link_care(runtime, patient_id=source, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    note = gate.write_note(patient_id=source, kind="11506-3", title="Consultation", text="Toux sèche.")
    allergy = gate.record_allergy(
        data=AllergyInput(
            patient_id=source, substance_code="J01CA", substance_display="Pénicillines", criticality="high"
        )
    )
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    appointment = gate.book_appointment(
        data=AppointmentInput(
            patient_id=source,
            practitioner_id=str(doctor.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
        )
    )

    desk = fhir_server_both.client_for(clerk)
    before = _exposures(runtime, clerk)
    merged = _merge(desk, _parameters(source, target, reason="même personne, prénom mal saisi"))
    # The merge exposes each patient once, like opening each chart.
    assert sorted(_exposures(runtime, clerk)[len(before) :]) == sorted([(source, "chart"), (target, "chart")])
    assert merged["resourceType"] == "Patient" and merged["id"] == target
    assert merged["meta"]["versionId"] == "2" and merged["active"] is True
    assert merged["link"] == [{"other": {"reference": f"Patient/{source}"}, "type": "replaces"}]
    # The record kept took the INS it lacked; its own names stay.
    assert merged["identifier"] == [{"system": INS, "value": "2800575123456"}]
    assert merged["name"][0]["given"] == ["Sophie"]

    old = desk.reference("Patient", source).to_resource().serialize()
    assert old["active"] is False and old["meta"]["versionId"] == "2"
    assert old["link"] == [{"other": {"reference": f"Patient/{target}"}, "type": "replaced-by"}]

    # The source's history shows the merge as its newest version; its first version is intact.
    history = desk.execute(f"Patient/{source}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][0]["resource"]["link"][0]["type"] == "replaced-by"
    assert history["entry"][1]["resource"]["active"] is True and "link" not in history["entry"][1]["resource"]
    target_history = desk.execute(f"Patient/{target}/_history", method="get")
    assert target_history["entry"][0]["resource"]["link"][0]["type"] == "replaces"

    # Search by the INS finds the record kept, not the merged duplicate.
    found = desk.resources("Patient").search(identifier=f"{INS}|2800575123456").fetch()
    assert [p.id for p in found] == [target]
    by_name = desk.resources("Patient").search(family="Dubreuil", birthdate="1970-05-17").fetch()
    assert [p.id for p in by_name] == [target]

    # The physician's care moved with the records: the target's chart holds them all.
    clinic = fhir_server_both.client_for(doctor)
    assert clinic.reference("Patient", target).to_resource()["id"] == target
    notes = clinic.resources("DocumentReference").search(patient=target).fetch()
    assert [n.id for n in notes] == [note.id]
    allergies = clinic.resources("AllergyIntolerance").search(patient=target).fetch()
    assert [a.id for a in allergies] == [allergy.id]
    assert clinic.reference("Appointment", appointment.id).to_resource()["participant"]
    with pytest.raises(ResourceNotFound):  # the duplicate is no longer in anyone's care
        clinic.resources("DocumentReference").search(patient=source).fetch()
    # A moved record's history is still readable by whoever may read it now; its first version
    # still says under which record it was written.
    note_history = clinic.execute(f"DocumentReference/{note.id}/_history", method="get")
    assert note_history["entry"][-1]["resource"]["subject"]["reference"] == f"Patient/{source}"
    current = clinic.reference("DocumentReference", note.id).to_resource()
    assert current["subject"]["reference"] == f"Patient/{target}"
    # Provenance?patient= of the record kept lists the moved records' versions too.
    provenance = clinic.execute("Provenance", method="get", params={"patient": target})
    targets = {t["reference"] for e in provenance.get("entry", []) for t in e["resource"]["target"]}
    assert f"DocumentReference/{note.id}/_history/1" in targets
    assert f"AllergyIntolerance/{allergy.id}/_history/1" in targets
    assert not any(t.startswith(f"Patient/{source}") for t in targets)  # not the duplicate's identity
    # A write to the merged duplicate is refused: the physician no longer reaches it, and the
    # desk, which does, is told to write to the record kept.
    with pytest.raises(NotFound):
        gate.record_allergy(
            data=AllergyInput(
                patient_id=source, substance_code="N02BA", substance_display="Aspirine", criticality="low"
            )
        )
    with pytest.raises(InvalidInput, match="merged into"):
        Gate(runtime, clerk).update_patient(
            patient_id=source, expected_version=2, changes=PatientChanges(phone="06 00 00 00 02")
        )

    # Audited once, naming both patients and the records moved.
    with runtime.session_factory() as session:
        events = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.account_id == clerk.account_id, AuditEvent.kind == MERGE)
        ).all()
        assert [(e.outcome, e.resource_type) for e in events] == [("success", "Patient")]
        assert set(json.loads(events[0].patient_ids)) == {source, target}
        assert note.id in json.loads(events[0].resource_ids)


def test_wrong_roles_are_refused_audited_and_change_nothing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    for pid in (source, target):  # even in the physician's care: identity is not a clinical act
        link_care(runtime, patient_id=pid, practitioner_id=doctor.practitioner_id, facility_id=facility)
    refused = [
        doctor,
        make_nurse(runtime, facility),
        make_account(runtime, roles=[Role.BILLING], facility_id=facility),
        make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility),
        make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility),
    ]
    for actor in refused:
        with pytest.raises(ResourceNotFound):  # a refused target answers like a missing one
            _merge(fhir_server.client_for(actor), _parameters(source, target, reason="doublon évident"))
        assert (MERGE, "denied", "Patient") in audit_rows(runtime, actor.account_id)
        with runtime.session_factory() as session:
            count = session.scalar(
                sa.select(sa.func.count()).select_from(Exposure).where(Exposure.actor_ref == actor.actor_ref)
            )
        if actor is not doctor:
            assert count == 0
    assert _state(runtime, source, target) == [(1, True, None), (1, True, None)]


def test_stale_version_is_412_and_changes_nothing(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    desk = fhir_server_both.client_for(clerk)
    kept = desk.reference("Patient", target).to_resource()
    kept["telecom"] = [{"system": "phone", "value": "06 00 00 00 01"}]
    kept.save()  # someone changed the target since the clerk read version 1
    with pytest.raises(MultipleResourcesFound):  # fhirpy's name for HTTP 412
        _merge(desk, _parameters(source, target, versions=(1, 1), reason="doublon évident"))
    with pytest.raises(MultipleResourcesFound):
        _merge(desk, _parameters(source, target, versions=(2, 2), reason="doublon évident"))
    assert _state(runtime, source, target) == [(1, True, None), (2, True, None)]
    assert (MERGE, "error", "Patient") in audit_rows(runtime, clerk.account_id)
    # With the versions read now, it goes through.
    assert (
        _merge(desk, _parameters(source, target, versions=(1, 2), reason="doublon évident"))["id"] == target
    )
    assert _state(runtime, source, target) == [(2, False, uuid.UUID(target)), (3, True, None)]


def test_bad_input_is_an_operation_outcome_and_changes_nothing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    other_facility = make_facility(runtime, name="Clinique Autre")
    elsewhere = register_patient(runtime, other_facility, family="Dubreuil").id
    desk = fhir_server.client_for(clerk)
    reason = "doublon évident"
    bad_requests = [
        _parameters(source, source, reason=reason),  # the same record twice
        _parameters(source, target),  # no reason
        _parameters(source, target, reason="   "),
        {"resourceType": "Parameters", "parameter": [{"name": "source-patient", "valueString": source}]},
        {  # an unversioned reference: the clerk must say which version they read
            "resourceType": "Parameters",
            "parameter": [
                {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
                {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}},
                {"name": "reason", "valueString": reason},
            ],
        },
        dict(_parameters(source, target, reason=reason), resourceType="Patient"),
        {"resourceType": "Parameters", "parameter": [{"name": "preview", "valueBoolean": True}]},
    ]
    for body in bad_requests:
        with pytest.raises(OperationOutcome):
            _merge(desk, body)
    missing = str(uuid.uuid4())
    for body in (_parameters(source, missing, reason=reason), _parameters(source, elsewhere, reason=reason)):
        with pytest.raises(ResourceNotFound):  # unknown, or another facility's: the same answer
            _merge(desk, body)
    assert _state(runtime, source, target) == [(1, True, None), (1, True, None)]
    assert _state(runtime, elsewhere) == [(1, True, None)]

    # Already merged: neither record can be merged again, in either direction.
    assert _merge(desk, _parameters(source, target, reason=reason))["id"] == target
    third = register_patient(runtime, facility, family="Dubreuil", given="Anne", by=clerk).id
    for body in (
        _parameters(source, third, versions=(2, 1), reason=reason),
        _parameters(third, source, versions=(1, 2), reason=reason),
    ):
        with pytest.raises(OperationOutcome):
            _merge(desk, body)
    assert _state(runtime, source, target, third) == [
        (2, False, uuid.UUID(target)),
        (2, True, None),
        (1, True, None),
    ]


def test_two_stays_in_progress_are_refused(fhir_server: Server) -> None:
    """A person is in one stay at a time: the desk discharges (or voids) one stay first. A stay
    in progress on one record only moves with the merge (care goes on, on the record kept)."""
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    ward = make_location(runtime, facility)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    stay = admit(runtime, patient_id=source, facility_id=facility, location_id=ward)
    admit(runtime, patient_id=target, facility_id=facility, location_id=ward)
    desk = fhir_server.client_for(clerk)
    with pytest.raises(OperationOutcome) as refused:
        _merge(desk, _parameters(source, target, reason="doublon aux urgences"))
    assert "stay in progress" in str(refused.value)
    assert _state(runtime, source, target) == [(1, True, None), (1, True, None)]

    third = register_patient(runtime, facility, family="Dubreuil", given="A.-S.", by=clerk).id
    assert _merge(desk, _parameters(source, third, reason="doublon aux urgences"))["id"] == third
    from carnet.scheduling.models import Encounter

    with runtime.session_factory() as session:
        moved = session.get(Encounter, stay)
        assert moved is not None and str(moved.patient_id) == third and moved.status == "in-progress"


def test_capability_statement_declares_merge(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    statement = fhir_server.client_for(clerk).execute("metadata", method="get")
    operations = {o["name"]: o["definition"] for o in statement["rest"][0]["operation"]}
    assert operations["merge"] == "http://hl7.org/fhir/OperationDefinition/Patient-merge"


def test_a_merge_in_error_is_reversed_from_its_merge_record(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=source, practitioner_id=doctor.practitioner_id, facility_id=facility)
    link_care(runtime, patient_id=target, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    before = gate.write_note(patient_id=source, kind="11506-3", title="Avant", text="Écrit sur le doublon.")
    desk = fhir_server_both.client_for(clerk)
    _merge(desk, _parameters(source, target, reason="même personne ?"))
    after = gate.write_note(patient_id=target, kind="11506-3", title="Après", text="Écrit après la fusion.")

    unmerge = dict(_parameters(source, target, versions=(2, 2), reason="deux sœurs jumelles, pas un doublon"))
    # Wrong roles are refused and audited; a stale version is 412; nothing changes.
    for actor in (doctor, make_account(runtime, roles=[Role.BILLING], facility_id=facility)):
        with pytest.raises(ResourceNotFound):
            desk_less = fhir_server_both.client_for(actor)
            desk_less.execute("Patient/$unmerge", method="post", data=unmerge)
        assert ("phi:patient:unmerge", "denied", "Patient") in audit_rows(runtime, actor.account_id)
    with pytest.raises(MultipleResourcesFound):
        desk.execute(
            "Patient/$unmerge",
            method="post",
            data=_parameters(source, target, versions=(1, 2), reason="x" * 10),
        )
    with pytest.raises(OperationOutcome):  # the target must be the record it was merged into
        desk.execute(
            "Patient/$unmerge",
            method="post",
            data=_parameters(source, source, versions=(2, 2), reason="x" * 10),
        )
    assert _state(runtime, source, target) == [(2, False, uuid.UUID(target)), (2, True, None)]

    restored = desk.execute("Patient/$unmerge", method="post", data=unmerge)
    assert restored["id"] == source and restored["active"] is True and "link" not in restored
    assert restored["identifier"] == [{"system": INS, "value": "2800575123456"}]
    kept = desk.reference("Patient", target).to_resource().serialize()
    assert "link" not in kept and "identifier" not in kept  # the INS it took is given back
    assert kept["meta"]["versionId"] == "3"
    assert _state(runtime, source, target) == [(3, True, None), (3, True, None)]
    # What moved goes back; what was written on the target since stays there.
    notes_source = (
        fhir_server_both.client_for(doctor).resources("DocumentReference").search(patient=source).fetch()
    )
    notes_target = (
        fhir_server_both.client_for(doctor).resources("DocumentReference").search(patient=target).fetch()
    )
    assert [n.id for n in notes_source] == [before.id]
    assert [n.id for n in notes_target] == [after.id]
    assert [p.id for p in desk.resources("Patient").search(identifier="2800575123456").fetch()] == [source]
    history = desk.execute(f"Patient/{source}/_history", method="get")
    assert [e["resource"]["active"] for e in history["entry"]] == [True, False, True]
    assert ("phi:patient:unmerge", "success", "Patient") in audit_rows(runtime, clerk.account_id)
    # Not merged any more: a second reversal has nothing to reverse.
    with pytest.raises(OperationOutcome):
        desk.execute(
            "Patient/$unmerge",
            method="post",
            data=_parameters(source, target, versions=(3, 3), reason="x" * 10),
        )


def _race(clients: list[SyncFHIRClient], bodies: list[dict[str, Any]]) -> list[str]:
    barrier = threading.Barrier(len(bodies))
    outcomes: list[str] = []

    def merge(i: int) -> None:
        barrier.wait()
        try:
            _merge(clients[i], bodies[i])
            outcomes.append("won")
        except MultipleResourcesFound:  # HTTP 412
            outcomes.append("412")

    threads = [threading.Thread(target=merge, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return sorted(outcomes)


def test_concurrent_merges_exactly_one_wins(fhir_server_both: Server) -> None:
    """Two clerks merge the same duplicate into two records at once, then two cross two records
    (A into B, B into A) at once: in each pair exactly one merge is done, the other is 412."""
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    clerks = [make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility) for _ in range(2)]
    clients = [fhir_server_both.client_for(c) for c in clerks]
    duplicate = register_patient(runtime, facility, family="Concurrent", given="Dup").id
    first = register_patient(runtime, facility, family="Concurrent", given="Un").id
    second = register_patient(runtime, facility, family="Concurrent", given="Deux").id
    same = [_parameters(duplicate, first, reason="doublon"), _parameters(duplicate, second, reason="doublon")]
    assert _race(clients, same) == ["412", "won"]
    assert _state(runtime, duplicate)[0][1] is False
    (v1, _a, _m), (v2, _b, _n) = _state(runtime, first, second)
    crossing = [
        _parameters(first, second, versions=(v1, v2), reason="doublon"),
        _parameters(second, first, versions=(v2, v1), reason="doublon"),
    ]
    assert _race(clients, crossing) == ["412", "won"]
    assert [active for _v, active, _m in _state(runtime, first, second)].count(False) == 1


def test_an_import_files_nothing_on_a_merged_record(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source, target = _duplicates(runtime, facility, clerk)
    Gate(runtime, clerk).merge_patients(
        source_id=source, target_id=target, source_version=1, target_version=1, reason="doublon évident"
    )

    def heart_rate(subject: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": subject},
            "effectiveDateTime": "2026-01-02T10:00:00+00:00",
            "valueQuantity": {"value": 72, "unit": "/min"},
        }

    path = tmp_path / "Observation.ndjson"
    path.write_text(
        "".join(json.dumps(heart_rate(f"Patient/{p}")) + "\n" for p in (source, target)), encoding="utf-8"
    )
    report = import_files(runtime, paths=[path], facility_id=facility, operator="test-import")
    assert report.accepted == {"Observation": 1}
    assert [r.source for r in report.rejected] == ["Observation.ndjson:1"]
    assert "merged into" in json.dumps(report.rejected[0].outcome)
