"""Referrals and care-team members as writable CareTeams, driven by fhirpy.

A care relationship opens the chart to the practitioner it names, so making one is as guarded as
reading the chart and more: a physician in the patient's care (not by break-the-glass, not by a
referral), for an active colleague of the same facility, never themself, with a bounded end.
Ending one is kept (end set) and its access stops at once. Every refusal is audited and writes
nothing; bad input is an OperationOutcome that writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from sqlalchemy import func, select, update

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.errors import Conflict
from carnet.org.models import Practitioner
from carnet.patients.models import CareRelationship, ResourceVersion
from carnet.phi.gate import Gate
from carnet.phi.schemas import CareRelationshipInput
from carnet.runtime import Runtime
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    make_practitioner,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows

CARE_KIND = "https://carnet.example.org/fhir/CodeSystem/care-relationship"


@dataclass
class Clinic:
    facility: uuid.UUID
    doctor: Actor  # in the patient's care (care team)
    colleague: Actor  # a physician of the same facility, not in the patient's care
    patient: str


def _clinic(runtime: Runtime) -> Clinic:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    colleague = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Renvoi")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return Clinic(facility, doctor, colleague, patient.id)


def _care_team(
    patient: str,
    practitioner: uuid.UUID | str | None,
    *,
    kind: str = "referral",
    days: float | None = 30,
    reason: str | None = "avis cardiologique",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "active",
        "category": [{"coding": [{"system": CARE_KIND, "code": kind}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "participant": [{"member": {"reference": f"Practitioner/{practitioner}"}}],
    }
    if days is not None:
        body["period"] = {"end": (clock.now() + dt.timedelta(days=days)).isoformat()}
    if reason is not None:
        body["reasonCode"] = [{"text": reason}]
    body.update(extra)
    return body


def _with_if_match(server: Server, actor: Actor, version: int) -> SyncFHIRClient:
    client = server.client_for(actor)
    return SyncFHIRClient(
        f"{server.url}/fhir", extra_headers={**(client.extra_headers or {}), "If-Match": f'W/"{version}"'}
    )


def _relationships(runtime: Runtime, patient: str) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CareRelationship)
                .where(CareRelationship.patient_id == uuid.UUID(patient))
            )
            or 0
        )


def _last_event(runtime: Runtime, actor: Actor) -> AuditEvent:
    with runtime.session_factory() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.actor_ref == actor.actor_ref).order_by(AuditEvent.seq.desc())
        ).first()
        assert event is not None
        return event


def test_a_referral_opens_the_chart_to_the_colleague_until_it_is_ended(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    c = _clinic(fhir_server.runtime)
    doctor = fhir_server.client_for(c.doctor)
    colleague = fhir_server.client_for(c.colleague)
    # Before: the colleague has no reason to see the patient (as if they did not exist).
    with pytest.raises(ResourceNotFound):
        colleague.reference("Patient", c.patient).to_resource()

    referral = doctor.resource("CareTeam", **_care_team(c.patient, c.colleague.practitioner_id))
    referral.save()
    assert referral["status"] == "active" and referral["meta"]["versionId"] == "1"
    assert referral["category"][0]["coding"][0]["code"] == "referral"
    assert referral["participant"][0]["member"]["reference"] == f"Practitioner/{c.colleague.practitioner_id}"
    assert referral["reasonCode"][0]["text"] == "avis cardiologique"
    # Success audited with the patient, and the referrer's write is an exposure of the patient.
    event = _last_event(runtime, c.doctor)
    assert (event.kind, event.outcome, event.resource_type) == ("phi:resource:create", "success", "CareTeam")
    assert json.loads(event.patient_ids) == [c.patient]
    assert referral.id in json.loads(event.resource_ids)
    assert f"referral to Practitioner/{c.colleague.practitioner_id}" in (event.policy_reason or "")
    with runtime.session_factory() as session:
        channels = session.scalars(
            select(Exposure.channel).where(
                Exposure.actor_ref == c.doctor.actor_ref, Exposure.resource_type == "CareTeam"
            )
        ).all()
    assert channels == ["write"]

    # The colleague now reads the chart and sees why they were referred.
    assert colleague.reference("Patient", c.patient).to_resource()["name"][0]["family"] == "Renvoi"
    seen = colleague.reference("CareTeam", referral.id).to_resource()
    assert seen["reasonCode"][0]["text"] == "avis cardiologique"

    # Ended by the referrer with the version read: kept, inactive, version 2.
    referral["status"] = "inactive"
    stale = doctor.resource("CareTeam", **dict(referral, meta={"versionId": "7"}))
    with pytest.raises(MultipleResourcesFound):  # 412
        stale.save()
    referral.save()
    assert referral["status"] == "inactive" and referral["meta"]["versionId"] == "2"
    assert referral["period"]["end"]

    # The access stopped at once: refused like a missing record, and the refusal audited.
    with pytest.raises(ResourceNotFound):
        colleague.reference("Patient", c.patient).to_resource()
    assert audit_rows(runtime, c.colleague.account_id)[-1] == ("phi:resource:read", "denied", "Patient")
    # Kept, never deleted: the referrer still sees it, and every version.
    teams = doctor.resources("CareTeam").search(patient=c.patient, category="referral").fetch()
    assert [(t.id, t["status"]) for t in teams] == [(referral.id, "inactive")]
    history = doctor.execute(f"CareTeam/{referral.id}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
    assert all(e["resource"]["reasonCode"][0]["text"] == "avis cardiologique" for e in history["entry"])
    first = doctor.execute(f"CareTeam/{referral.id}/_history/1", method="get")
    assert first["status"] == "active"


def test_the_referred_colleague_may_end_it_but_not_refer_onward(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    c = _clinic(runtime)
    third = make_practitioner(runtime, c.facility)
    referral = fhir_server.client_for(c.doctor).resource(
        "CareTeam", **_care_team(c.patient, c.colleague.practitioner_id)
    )
    referral.save()
    colleague = fhir_server.client_for(c.colleague)
    before = _relationships(runtime, c.patient)
    # A consultant answers the physician who referred the patient; they do not widen the circle.
    with pytest.raises(ResourceNotFound):
        colleague.resource("CareTeam", **_care_team(c.patient, third)).save()
    assert _relationships(runtime, c.patient) == before
    assert audit_rows(runtime, c.colleague.account_id)[-1] == ("phi:resource:create", "denied", "CareTeam")
    # ... but may end their own referral (DELETE: kept, ended), and ending it again changes nothing.
    colleague.execute(f"CareTeam/{referral.id}", method="delete")
    again = fhir_server.client_for(c.doctor).execute(f"CareTeam/{referral.id}", method="delete")
    assert again["status"] == "inactive" and again["meta"]["versionId"] == "2"
    with runtime.session_factory() as session:
        versions = session.scalars(
            select(ResourceVersion.version_id).where(ResourceVersion.resource_id == uuid.UUID(referral.id))
        ).all()
        row = session.get(CareRelationship, uuid.UUID(referral.id))
    assert sorted(versions) == [1, 2]
    assert row is not None and row.end_at is not None
    with pytest.raises(ResourceNotFound):
        colleague.reference("Patient", c.patient).to_resource()


def test_a_care_team_member_is_added_for_a_term_and_a_seeded_one_ended_keeps_its_first_version(
    fhir_server: Server,
) -> None:
    runtime = fhir_server.runtime
    c = _clinic(runtime)
    nurse = make_nurse(runtime, c.facility)
    doctor = fhir_server.client_for(c.doctor)
    member = doctor.resource(
        "CareTeam", **_care_team(c.patient, nurse.practitioner_id, kind="care_team", days=180)
    )
    member.save()
    assert member["category"][0]["coding"][0]["code"] == "care_team"
    nurse_client = fhir_server.client_for(nurse)
    assert nurse_client.reference("Patient", c.patient).to_resource()["name"][0]["family"] == "Renvoi"
    # A second active membership of the same nurse: refused (412), nothing written.
    before = _relationships(runtime, c.patient)
    with pytest.raises(MultipleResourcesFound):
        doctor.resource("CareTeam", **_care_team(c.patient, nurse.practitioner_id, kind="care_team")).save()
    assert _relationships(runtime, c.patient) == before

    # The colleague's seeded membership (never versioned) ended by DELETE with If-Match 1: its
    # state as made is kept as version 1, the end as version 2; a stale If-Match changes nothing.
    assert c.colleague.practitioner_id is not None
    link_care(
        runtime, patient_id=c.patient, practitioner_id=c.colleague.practitioner_id, facility_id=c.facility
    )
    seeded = [
        t
        for t in doctor.resources("CareTeam").search(patient=c.patient, category="care_team").fetch()
        if t["participant"][0]["member"]["reference"] == f"Practitioner/{c.colleague.practitioner_id}"
    ]
    assert len(seeded) == 1 and seeded[0]["meta"]["versionId"] == "1"
    with pytest.raises(MultipleResourcesFound):
        _with_if_match(fhir_server, c.doctor, 2).execute(f"CareTeam/{seeded[0].id}", method="delete")
    ended = _with_if_match(fhir_server, c.doctor, 1).execute(f"CareTeam/{seeded[0].id}", method="delete")
    assert ended["status"] == "inactive" and ended["meta"]["versionId"] == "2"
    history = doctor.execute(f"CareTeam/{seeded[0].id}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(c.colleague).reference("Patient", c.patient).to_resource()

    # A physician who ends their own last relationship to the patient loses the chart with it:
    # the answer shows them nothing more of it.
    own = [
        t
        for t in doctor.resources("CareTeam").search(patient=c.patient, category="care_team").fetch()
        if t["participant"][0]["member"]["reference"] == f"Practitioner/{c.doctor.practitioner_id}"
    ]
    gone = doctor.execute(f"CareTeam/{own[0].id}", method="delete")
    assert set(gone) <= {"resourceType", "id", "meta"}
    with pytest.raises(ResourceNotFound):
        doctor.reference("Patient", c.patient).to_resource()


@pytest.mark.parametrize("who", ["nurse", "front_desk", "billing", "admin", "break_glass"])
def test_wrong_roles_cannot_refer_and_the_refusal_is_audited(fhir_server: Server, who: str) -> None:
    runtime = fhir_server.runtime
    c = _clinic(runtime)
    if who == "nurse":
        actor = make_nurse(runtime, c.facility)
        assert actor.practitioner_id is not None  # in the patient's care: still not hers to open
        link_care(
            runtime, patient_id=c.patient, practitioner_id=actor.practitioner_id, facility_id=c.facility
        )
    elif who == "break_glass":
        actor = make_physician(runtime, c.facility)
        Gate(runtime, actor).break_glass(
            patient_id=c.patient, reason="emergency", justification="inconscient aux urgences"
        )
    else:
        role = {"front_desk": Role.FRONT_DESK, "billing": Role.BILLING, "admin": Role.SYSTEM_ADMINISTRATOR}[
            who
        ]
        actor = make_account(runtime, roles=[role], facility_id=c.facility)
    client = fhir_server.client_for(actor)
    before = _relationships(runtime, c.patient)
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.resource("CareTeam", **_care_team(c.patient, c.colleague.practitioner_id)).save()
    assert _relationships(runtime, c.patient) == before
    assert audit_rows(runtime, actor.account_id)[-1] == ("phi:resource:create", "denied", "CareTeam")
    # Nor may they end someone else's relationship: the doctor's stays active.
    own = (
        fhir_server.client_for(c.doctor)
        .resources("CareTeam")
        .search(patient=c.patient, participant=f"Practitioner/{c.doctor.practitioner_id}")
        .fetch()
    )
    assert len(own) == 1
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.execute(f"CareTeam/{own[0].id}", method="delete")
    assert audit_rows(runtime, actor.account_id)[-1] == ("phi:resource:update", "denied", "CareTeam")
    with runtime.session_factory() as session:
        row = session.get(CareRelationship, uuid.UUID(own[0].id))
        assert row is not None and row.end_at is None


def _other_facility_practitioner(runtime: Runtime, c: Clinic) -> uuid.UUID:
    return make_practitioner(runtime, make_facility(runtime, "Clinique Ailleurs"))


def _inactive_practitioner(runtime: Runtime, c: Clinic) -> uuid.UUID:
    pid = make_practitioner(runtime, c.facility)
    with runtime.session_factory.begin() as session:
        session.execute(update(Practitioner).where(Practitioner.id == pid).values(active=False))
    return pid


BAD: dict[str, Any] = {
    "no end date": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, days=None),
    "end beyond 90 days": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, days=91),
    "end in the past": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, days=-1),
    "care team beyond a year": lambda rt, c: _care_team(
        c.patient, c.colleague.practitioner_id, kind="care_team", days=400
    ),
    "other facility": lambda rt, c: _care_team(c.patient, _other_facility_practitioner(rt, c)),
    "unknown practitioner": lambda rt, c: _care_team(c.patient, uuid.uuid4()),
    "inactive practitioner": lambda rt, c: _care_team(c.patient, _inactive_practitioner(rt, c)),
    "self": lambda rt, c: _care_team(c.patient, c.doctor.practitioner_id),
    "no reason": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, reason=None),
    "no category": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, category=[]),
    "unknown category": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, kind="consult"),
    "a start of its own": lambda rt, c: _care_team(
        c.patient,
        c.colleague.practitioner_id,
        period={"start": "2020-01-01T00:00:00Z", "end": "2020-02-01T00:00:00Z"},
    ),
    "two participants": lambda rt, c: _care_team(
        c.patient,
        c.colleague.practitioner_id,
        participant=[
            {"member": {"reference": f"Practitioner/{c.colleague.practitioner_id}"}},
            {"member": {"reference": f"Practitioner/{c.doctor.practitioner_id}"}},
        ],
    ),
    "not FHIR": lambda rt, c: _care_team(c.patient, c.colleague.practitioner_id, status="ongoing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_an_operation_outcome_and_writes_nothing(fhir_server: Server, case: str) -> None:
    runtime = fhir_server.runtime
    c = _clinic(runtime)
    body = BAD[case](runtime, c)
    before = _relationships(runtime, c.patient)
    with pytest.raises(OperationOutcome) as raised:
        fhir_server.client_for(c.doctor).resource("CareTeam", **body).save()
    assert raised.value.resource["issue"][0]["diagnostics"]
    assert _relationships(runtime, c.patient) == before
    # Refused by the gate (audited as an error) or before it, by the mapping: never a success.
    assert ("phi:resource:create", "success", "CareTeam") not in audit_rows(runtime, c.doctor.account_id)


def test_an_update_may_only_end_it(fhir_server: Server) -> None:
    c = _clinic(fhir_server.runtime)
    doctor = fhir_server.client_for(c.doctor)
    referral = doctor.resource("CareTeam", **_care_team(c.patient, c.colleague.practitioner_id))
    referral.save()
    later = (clock.now() + dt.timedelta(days=60)).isoformat()
    for change in ({"period": {"end": later}}, {"status": "active"}):
        with pytest.raises(OperationOutcome):
            doctor.resource("CareTeam", **dict(referral, **change)).save()
    assert doctor.reference("CareTeam", referral.id).to_resource()["meta"]["versionId"] == "1"


def test_referrals_in_a_transaction_are_all_or_nothing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    c = _clinic(runtime)
    nurse = make_nurse(runtime, c.facility)
    doctor = fhir_server.client_for(c.doctor)
    good = _care_team(c.patient, c.colleague.practitioner_id)
    member = _care_team(c.patient, nurse.practitioner_id, kind="care_team")
    bad = _care_team(c.patient, c.colleague.practitioner_id, days=120)

    def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": dict(r, resourceType="CareTeam"),
                    "request": {"method": "POST", "url": "CareTeam"},
                }
                for r in resources
            ],
        }

    before = _relationships(runtime, c.patient)
    with pytest.raises(OperationOutcome):
        doctor.execute("", method="post", data=bundle(member, bad))
    assert _relationships(runtime, c.patient) == before
    answer = doctor.execute("", method="post", data=bundle(good, member))
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    assert _relationships(runtime, c.patient) == before + 2
    assert fhir_server.client_for(nurse).reference("Patient", c.patient).to_resource()["id"] == c.patient


def _two_referrers(runtime: Runtime) -> tuple[Clinic, Actor, CareRelationshipInput]:
    """The clinic, a second physician caring for its patient, and the referral both would make
    of that patient to the clinic's colleague."""
    c = _clinic(runtime)
    second = make_physician(runtime, c.facility)
    assert second.practitioner_id is not None
    link_care(runtime, patient_id=c.patient, practitioner_id=second.practitioner_id, facility_id=c.facility)
    data = CareRelationshipInput(
        patient_id=c.patient,
        practitioner_id=str(c.colleague.practitioner_id),
        reason="avis néphrologique",
        end_at=clock.now() + dt.timedelta(days=30),
    )
    return c, second, data


def test_concurrent_referrals_and_ends_have_exactly_one_winner(runtime: Runtime) -> None:
    """Two physicians refer the same patient to the same colleague at once: one referral, one
    Conflict. Two end it at once with the version they read: one end (version 2), one 412.
    On PostgreSQL the patient's (then the relationship's) row lock orders them."""
    from tests.phi.test_gate_writes import _race

    c, second, data = _two_referrers(runtime)
    before = _relationships(runtime, c.patient)
    outcomes = _race(
        [functools.partial(Gate(runtime, a).refer_patient, data=data) for a in (c.doctor, second)]
    )
    assert outcomes == ["conflict", "won"]
    assert _relationships(runtime, c.patient) == before + 1
    [made] = [
        t
        for t in Gate(runtime, c.doctor).list_care_team(patient_id=c.patient)
        if t.practitioner_id == str(c.colleague.practitioner_id)
    ]
    assert made.version_id == 1
    outcomes = _race(
        [
            functools.partial(
                Gate(runtime, a).end_care_relationship, care_team_id=made.id, expected_version=1
            )
            for a in (c.doctor, second)
        ]
    )
    assert outcomes == ["conflict", "won"]
    history = Gate(runtime, c.doctor).history(resource_type="CareTeam", resource_id=made.id)
    assert [(v.version_id, v.data["status"]) for v in history] == [(1, "active"), (2, "inactive")]


def test_a_referral_made_a_moment_later_by_a_concurrent_maker_is_still_a_duplicate(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """Two referrals racing: the one that waited for the patient's lock may have read its clock
    before the winner stamped its start. The winner's referral, starting "after" the loser's
    now, is still active for the duplicate check (found under load: both had won)."""
    c, second, data = _two_referrers(runtime)
    before = _relationships(runtime, c.patient)
    Gate(runtime, c.doctor).refer_patient(data=data)
    movable_clock.advance(dt.timedelta(seconds=-2))  # the loser's clock, read before the winner's
    with pytest.raises(Conflict):
        Gate(runtime, second).refer_patient(data=data)
    assert _relationships(runtime, c.patient) == before + 1


def test_many_referrals_alert_a_security_officer_without_refusing_them(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stolen physician account handing its patients to an accomplice, one referral at a time:
    each is allowed, the pattern raises an alert (merged per actor), naming no patient."""
    from carnet.detection import referrals
    from carnet.detection.config import DetectionConfig
    from carnet.detection.models import Alert

    monkeypatch.setattr(
        referrals,
        "get_detection_config",
        lambda: DetectionConfig(
            care_relationships_to_one_practitioner_24h=3, care_relationships_by_actor_24h=5
        ),
    )
    runtime = sqlite_runtime
    c = _clinic(runtime)
    assert c.doctor.practitioner_id is not None
    patients = [c.patient]
    for n in range(5):
        p = register_patient(runtime, c.facility, family=f"Lot{n}")
        link_care(runtime, patient_id=p.id, practitioner_id=c.doctor.practitioner_id, facility_id=c.facility)
        patients.append(p.id)
    others = [make_practitioner(runtime, c.facility) for _ in range(3)]
    gate = Gate(runtime, c.doctor)

    def alerts() -> list[Alert]:
        with runtime.session_factory() as session:
            return list(session.scalars(select(Alert).where(Alert.rule == "care-relationships")))

    def refer(patient: str, practitioner: uuid.UUID | str | None) -> None:
        gate.refer_patient(
            data=CareRelationshipInput(
                patient_id=patient,
                practitioner_id=str(practitioner),
                reason="avis",
                end_at=clock.now() + dt.timedelta(days=10),
            )
        )

    refer(patients[0], c.colleague.practitioner_id)
    refer(patients[1], c.colleague.practitioner_id)
    assert alerts() == []
    refer(patients[2], c.colleague.practitioner_id)  # the third to one practitioner in 24 h
    [alert] = alerts()
    assert (
        f"3 patients were referred to (or put in the care team of) Practitioner/{c.colleague.practitioner_id}"
        in (alert.sentence)
    )
    assert all(p not in alert.sentence for p in patients)
    assert alert.level == 1 and alert.status == "open" and alert.account_id == c.doctor.account_id
    assert str(alert.id) in json.loads(_last_event(runtime, c.doctor).resource_ids)  # named by the audit
    # Spread over other colleagues, the account's own count: the same open alert, updated.
    refer(patients[3], others[0])
    refer(patients[4], others[1])
    [alert] = alerts()
    assert alert.occurrences == 2 and "referred 5 patients to colleagues" in alert.sentence
    assert _relationships(runtime, c.patient) >= 2  # never refused
