"""Several listener processes on one port (carnet/interfaces/processes.py, `carnet interfaces
serve --processes N`): a connection stays on one process, so a sender's messages are applied in
the order sent; twins of one message sent at once on connections of different processes are
applied once, every copy acknowledged."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select

from carnet.detection.models import Alert
from carnet.identity.models import Account
from carnet.interfaces.budget import budget_for
from carnet.interfaces.mllp import MllpListener
from carnet.interfaces.models import Interface
from carnet.interfaces.processes import ListenerOptions, start_processes, stop_processes
from carnet.interfaces.service import InterfaceService, Peer, Registered
from carnet.records.models import DiagnosticReport, Observation
from carnet.runtime import Runtime
from tests.interfaces.conftest import Hospital, make_hospital
from tests.interfaces.helpers import Obx, Person, adt, msa, oru, send
from tests.interfaces.records import audit_of, log_line

# The kernel hands each connection to one of the two processes by a keyed hash of its
# addresses: with 24, all on one process is a chance in 2**23 (with 12, CI met the one in 2**11).
CONNECTIONS = 24


class _Counted(InterfaceService):
    """This process's service, counting the messages it applies."""

    seen = 0

    def receive_many(self, messages: list[tuple[str, Peer, list[Registered] | None]]) -> list[str]:
        _Counted.seen += len(messages)
        return super().receive_many(messages)


@contextmanager
def _two_processes(runtime: Runtime, redis_url: str | None = None) -> Iterator[int]:
    """A listener in this process and one in another, both on one port (SO_REUSEPORT); with
    `redis_url`, both count the interfaces' volume there."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = runtime.settings.model_copy(update={"redis_url": redis_url}) if redis_url else runtime.settings
    service = _Counted(runtime, budget=budget_for(redis_url)) if redis_url else _Counted(runtime)
    server = MllpListener(service, host="127.0.0.1", port=0, workers=1, reuse_port=True)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    others = start_processes(settings, ListenerOptions("127.0.0.1", port, workers=1), 1)
    try:
        yield port
    finally:
        stop_processes(others)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_twins_on_two_processes_are_applied_once_and_each_sender_in_its_order(
    runtime: Runtime, hospital: Hospital
) -> None:
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("several listener processes write to PostgreSQL")
    _Counted.seen = 0
    service = InterfaceService(runtime)
    candidates = service.candidates(Peer("127.0.0.1"))
    people = [Person(ipp=f"M-P{n}", family="MULTI", given=f"G{n}") for n in range(CONNECTIONS)]
    for person in people:
        registered = adt("A04", f"REG-{person.ipp}", person, klass="O", visit=f"V-{person.ipp}")
        assert msa(service.receive(registered, peer=Peer("127.0.0.1"), candidates=candidates))[1] == "AA"
    twin = oru("M-TWIN", people[0], [Obx("718-7", "13.5"), Obx("789-8", "4.6", "10*6/uL")], filler="M-FT")
    answers: dict[int, list[str]] = {}
    start = threading.Barrier(CONNECTIONS)

    def sender(n: int) -> None:
        # Each connection: the same twin as every other, then its patient's preliminary result
        # and its final (a later value): applied in that order, the final is what stays.
        own = [
            oru(f"M-{n}-P", people[n], [Obx("718-7", "11.0", status="P")], filler=f"M-F{n}", status="P"),
            oru(f"M-{n}-F", people[n], [Obx("718-7", f"12.{n:02d}")], filler=f"M-F{n}"),
        ]
        start.wait(30)
        answers[n] = send(port, twin, *own)

    with _two_processes(runtime) as port:
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(answers) == list(range(CONNECTIONS))
    assert 0 < _Counted.seen < 3 * CONNECTIONS  # both processes took connections
    assert all(msa(a)[1] == "AA" for batch in answers.values() for a in batch), answers
    line = log_line(runtime, "M-TWIN")
    assert (line.status, line.replays) == ("accepted", CONNECTIONS - 1)
    with runtime.session_factory() as s:
        reports = s.scalars(
            select(DiagnosticReport).where(DiagnosticReport.facility_id == hospital.facility_id)
        )
        by_status = sorted(r.status for r in reports)
        assert by_status == ["final"] * (CONNECTIONS + 1)  # the twin's once, each sender's final
        values = s.execute(
            select(Observation.value_number, func.count())
            .where(Observation.facility_id == hospital.facility_id, Observation.code == "718-7")
            .group_by(Observation.value_number)
        ).all()
    assert dict(values) == {13.5: 1, **{float(f"12.{n:02d}"): 1 for n in range(CONNECTIONS)}}
    events = [e for e in audit_of(runtime, "interface:LAB") if e.outcome == "success"]
    assert len(events) == 1 + 2 * CONNECTIONS  # the twin once; each sender's two messages


def test_two_processes_are_throttled_together_at_the_registered_volume(runtime: Runtime) -> None:
    """With Redis, the volume budget is the interface's, not each process's: senders spread
    over connections of two processes get the registered volume accepted in all, the rest
    refused; at three times it the interface is contained, with an alert."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("several listener processes write to PostgreSQL")
    per_minute = CONNECTIONS // 3
    hospital = make_hospital(runtime, per_minute=per_minute)
    _Counted.seen = 0
    answers: list[str] = []
    with _two_processes(runtime, redis_url="redis://127.0.0.1:6379/0") as port:
        for n in range(CONNECTIONS):  # one after the other, each on a connection of its own
            person = Person(ipp=f"T-P{n}", family="THROTTLE", given=f"G{n}")
            [answer] = send(port, adt("A04", f"T-{n}", person, klass="O", visit=f"TV{n}"))
            answers.append(msa(answer)[1])
    assert 0 < _Counted.seen < CONNECTIONS  # both processes took connections
    # Each process alone would have accepted up to `per_minute` of its own.
    assert answers[:per_minute] == ["AA"] * per_minute
    assert answers[per_minute:] == ["AR"] * (CONNECTIONS - per_minute)
    with runtime.session_factory() as s:
        interface = s.scalar(
            select(Interface).where(Interface.facility_id == hospital.facility_id, Interface.name == "ADT")
        )
        assert interface is not None
        account = s.get(Account, interface.account_id)
        assert account is not None and account.status == "suspended"  # 3 x the budget, across both
        alerts = s.scalars(select(Alert).where(Alert.actor_ref == f"account:{account.id}")).all()
    assert alerts and {a.rule for a in alerts} == {"interface-budget"} and max(a.level for a in alerts) == 4
