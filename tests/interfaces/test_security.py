"""An interface writes and reads nothing back; a staff session cannot act as one; volume and
types outside its registration are throttled, then contained with an alert; an unregistered
peer gets no answer at all."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from carnet.access.actor import ActorKind
from carnet.audit.models import AuditEvent
from carnet.detection.models import Alert, Exposure
from carnet.identity.models import Account
from carnet.interfaces.budget import RedisBudget
from carnet.interfaces.models import Interface
from carnet.interfaces.service import InterfaceService, Peer
from carnet.kernel.errors import AuthenticationRequired, Forbidden, NotFound
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests.interfaces.conftest import Hospital, make_hospital, serve
from tests.interfaces.helpers import Obx, Person, adt, msa, oru, send
from tests.interfaces.records import counts, log_line, patient_by_ins, rows

INS = "270057512345678"


def _registered(runtime: Runtime, name: str) -> tuple[Interface, Account]:
    with runtime.session_factory() as s:
        interface = s.scalar(select(Interface).where(Interface.name == name))
        assert interface is not None
        account = s.get(Account, interface.account_id)
        assert account is not None
        return interface, account


def test_an_interface_reads_nothing_and_exposes_no_patient(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="SEC1", ins=INS)
    [answer] = send(listener, adt("A01", "SEC-1", person))
    assert msa(answer)[1] == "AA"
    patient = patient_by_ins(runtime, hospital.facility_id, INS)
    assert patient is not None
    [registered] = [i for i in InterfaceService(runtime).interfaces() if i.name == "ADT"]
    gate = Gate(runtime, registered.actor("127.0.0.1"))
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=str(patient.id))
    with pytest.raises(NotFound):
        gate.list_encounters(patient_id=str(patient.id))
    with pytest.raises(Forbidden):
        gate.search_patients(identifier=INS)
    _, account = _registered(runtime, "ADT")
    with runtime.session_factory() as s:
        shown = s.scalars(select(Exposure).where(Exposure.actor_ref == f"account:{account.id}")).all()
        refused = s.scalars(
            select(AuditEvent).where(AuditEvent.username == "interface:ADT", AuditEvent.outcome == "denied")
        ).all()
    assert shown == []  # its writes showed it nothing: no exposure, nothing for detection to count
    assert len(refused) == 3  # each refused read is audited
    # A staff session naming the interface's account is not the interface.
    staff = registered.actor("127.0.0.1")
    from dataclasses import replace

    with pytest.raises(AuthenticationRequired):
        Gate(runtime, replace(staff, kind=ActorKind.STAFF)).read_patient(patient_id=str(patient.id))


def test_types_outside_the_registration_are_refused_then_contained(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="SEC2")
    assert msa(send(listener, adt("A04", "SEC-2", person, klass="O"))[0])[1] == "AA"
    before = counts(runtime, hospital.facility_id)
    # The laboratory's interface sends admissions: refused, an alert; the third time, contained.
    answers = send(
        listener,
        *(
            adt("A01", f"LAB-ADT-{n}", Person(ipp=f"X{n}"), sending="LAB").replace("|HOSP|", "|LABO|", 1)
            for n in range(3)
        ),
    )
    assert [msa(a)[1] for a in answers] == ["AR", "AR", "AR"]
    assert all("not registered" in msa(a)[3] for a in answers)
    _, account = _registered(runtime, "LAB")
    assert account.status == "suspended"
    alerts = rows(runtime, Alert, actor_ref=f"account:{account.id}")
    assert [a.rule for a in alerts] == ["interface-budget"] and alerts[0].level == 4
    assert any(
        e.kind == "detection:actor:contained" for e in rows(runtime, AuditEvent, username="interface:LAB")
    )
    # Contained: even what it is registered for is refused now, saying why.
    [results] = send(listener, oru("LAB-R-1", person, [Obx("718-7", "13")]))
    assert msa(results)[1] == "AR" and "suspended" in msa(results)[3]
    assert counts(runtime, hospital.facility_id) == before


@pytest.fixture
def small_budget(runtime: Runtime) -> Iterator[tuple[Hospital, int]]:
    hospital = make_hospital(runtime, per_minute=2)
    for port in serve(runtime):
        yield hospital, port


def test_volume_over_the_registration_is_throttled_then_contained(
    runtime: Runtime, small_budget: tuple[Hospital, int]
) -> None:
    hospital, port = small_budget
    messages = [
        adt("A04", f"VOL-{n}", Person(ipp=f"V{n}", given=f"G{n}"), klass="O", visit=f"VV{n}")
        for n in range(7)
    ]
    answers = [msa(a)[1] for a in send(port, *messages)]
    assert answers[:2] == ["AA", "AA"]
    assert answers[2:] == ["AR"] * 5
    _, account = _registered(runtime, "ADT")
    assert account.status == "suspended"  # contained at three times its volume
    alerts = rows(runtime, Alert, actor_ref=f"account:{account.id}")
    assert alerts and alerts[0].rule == "interface-budget"
    assert counts(runtime, hospital.facility_id)["patients"] == 2


def test_a_connection_from_an_unregistered_address_gets_no_answer(runtime: Runtime) -> None:
    hospital = make_hospital(runtime, sources=["10.9.9.9"])
    for port in serve(runtime):
        with pytest.raises(ConnectionError):
            send(port, adt("A01", "NOPE-1", Person(ipp="N1")))
    assert counts(runtime, hospital.facility_id)["patients"] == 0


def test_only_an_interface_runs_the_message_operation(runtime: Runtime, hospital: Hospital) -> None:
    import uuid as _uuid

    from carnet.interfaces.operation import LogEntry
    from carnet.kernel import clock
    from tests.factories import make_physician

    doctor = make_physician(runtime, hospital.facility_id)
    entry = LogEntry(_uuid.uuid4(), "FORGED-1", "0" * 64, "ORU^R01", clock.now())
    ran: list[object] = []
    with pytest.raises(Forbidden):
        Gate(runtime, doctor).apply_hl7_message(
            log=entry, facility_id=hospital.facility_id, handler=ran.append
        )
    assert ran == []
    [event] = [
        e
        for e in rows(runtime, AuditEvent, kind="phi:resource:transaction")
        if e.account_id == doctor.account_id
    ]
    assert event.outcome == "denied" and "only a registered HL7 interface" in (event.policy_reason or "")


REDIS_URL = "redis://127.0.0.1:6379/0"


def _shared_budget() -> RedisBudget:
    """A Redis budget of its own (a prefix per test), as every listener process would share."""
    return RedisBudget.from_url(REDIS_URL, prefix=f"carnet:test-hl7:{uuid.uuid4().hex}")


def test_two_listeners_share_the_volume_budget_through_redis(runtime: Runtime) -> None:
    """Two listeners (two processes' services: each its own budget object, one Redis) are
    throttled together at the registered volume, then contained at three times it, as one."""
    hospital = make_hospital(runtime, per_minute=2)
    budget = _shared_budget()
    messages = [
        adt("A04", f"SHV-{n}", Person(ipp=f"SH{n}", given=f"G{n}"), klass="O", visit=f"SV{n}")
        for n in range(7)
    ]
    first = InterfaceService(runtime, budget=budget)
    second = InterfaceService(runtime, budget=RedisBudget(budget._redis, prefix=budget._prefix))
    answers: list[str] = []
    for port_a in serve(runtime, first):
        for port_b in serve(runtime, second):
            for n, message in enumerate(messages):  # alternately, each on a connection of its own
                [answer] = send(port_a if n % 2 == 0 else port_b, message)
                answers.append(msa(answer)[1])
    assert answers[:2] == ["AA", "AA"]  # each listener alone would have taken two more
    assert answers[2:] == ["AR"] * 5
    _, account = _registered(runtime, "ADT")
    assert account.status == "suspended"  # three times its volume, across both
    alerts = rows(runtime, Alert, actor_ref=f"account:{account.id}")
    assert alerts and {a.rule for a in alerts} == {"interface-budget"} and max(a.level for a in alerts) == 4
    assert counts(runtime, hospital.facility_id)["patients"] == 2


def test_a_group_is_counted_in_one_round_trip(runtime: Runtime, hospital: Hospital) -> None:
    """A batch of messages of one interface costs its shared budget one call (one script, one
    round trip), and each message is judged at its own place in the count."""
    calls: list[int] = []

    class Counting(RedisBudget):
        def count(self, interface_id: uuid.UUID, at: dt.datetime, n: int = 1) -> int:
            calls.append(n)
            return super().count(interface_id, at, n)

    shared = _shared_budget()
    service = InterfaceService(runtime, budget=Counting(shared._redis, prefix=shared._prefix))
    with runtime.session_factory.begin() as s:
        s.execute(update(Interface).where(Interface.name == "ADT").values(per_minute=3))
    peer = Peer("127.0.0.1")
    candidates = service.candidates(peer)
    batch = [
        (
            adt("A04", f"GRP-{n}", Person(ipp=f"GR{n}", given=f"G{n}"), klass="O", visit=f"GV{n}"),
            peer,
            candidates,
        )
        for n in range(5)
    ]
    answers = [msa(a)[1] for a in service.receive_many(batch)]
    assert calls == [5]
    assert answers == ["AA", "AA", "AA", "AR", "AR"]
    assert counts(runtime, hospital.facility_id)["patients"] == 3


def test_the_volume_not_counted_is_refused(runtime: Runtime, hospital: Hospital) -> None:
    """Redis down: the message is refused (AR, resend later), nothing applied, and logged."""
    down = RedisBudget.from_url("redis://127.0.0.1:1/0")
    service = InterfaceService(runtime, budget=down)
    peer = Peer("127.0.0.1")
    message = adt("A04", "DOWN-1", Person(ipp="DN1"), klass="O", visit="DV1")
    for answer in (
        service.receive(message, peer=peer),
        service.receive_many([(message, peer, None)])[0],
    ):
        assert msa(answer)[1] == "AR" and "could not be counted" in msa(answer)[3]
    assert counts(runtime, hospital.facility_id)["patients"] == 0
    line = log_line(runtime, "DOWN-1")
    assert (line.status, line.ack_code) == ("rejected", "AR")
    # A type it is not registered for is refused all the same (its strike not counted either).
    wrong = oru("DOWN-2", Person(ipp="DN1"), [Obx("718-7", "13")]).replace("|LAB|LABO|", "|ADT|HOSP|", 1)
    assert msa(service.receive(wrong, peer=peer))[1] == "AR"
