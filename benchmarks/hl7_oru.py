"""Throughput of ORU^R01 results through the MLLP listener, against a same-run baseline.

1. baseline: the same listener, the same messages over the same TCP connections, each parsed
   (python-hl7) and answered AA with nothing applied -- transport, framing, parsing and ACK.
2. carnet: each message (one patient, one order, 5 OBX) applied through the gate as the
   laboratory's interface: 5 Observations and a DiagnosticReport, their versions, links and
   log line, one audit event; the listener as served (group commit: the messages waiting
   while the workers are busy applied together, one transaction and one commit per group).
3. carnet, one transaction per message (`MllpListener(group=False)`, the listener before
   group commit), unless `--no-single`.

    .venv/bin/python -m benchmarks.hl7_oru [--patients 200] [--messages 2000] [--clients 8]
        [--workers 4] [--processes 1] [--rounds 2] [--sqlite] [--orders] [--no-single] [--uvloop] [--no-redis]

PostgreSQL by default (a throwaway database on CARNET_BENCH_POSTGRES_URL). The two are
interleaved round by round; the load average is printed before and after (a shared machine).
The SQL statements carnet sends per message are counted in the same run (a SQLAlchemy
`before_cursor_execute` listener). `--orders`: each message answers a lab order placed in carnet
beforehand (its placer number in OBR-2), which it links and completes. CPU per message is
this process's (clients, listener, carnet), with `--processes N` the other listener processes'
too, and the PostgreSQL backends' serving the run's database (/proc; not the WAL writer's),
each round apart.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event

from benchmarks._db import bench_runtime
from carnet.interfaces import hl7v2
from carnet.interfaces.budget import budget_for
from carnet.interfaces.hl7v2 import AckCode
from carnet.interfaces.mllp import MllpListener, send
from carnet.interfaces.registry import register_interface
from carnet.interfaces.service import InterfaceService, Peer, Registered
from carnet.kernel import clock
from carnet.org.models import Facility
from carnet.runtime import Runtime

OBX = (
    ("718-7", "Hemoglobin", "13.{n}", "g/dL", "12-16"),
    ("789-8", "Erythrocytes", "4.{n}", "10*6/uL", "4.2-5.4"),
    ("6690-2", "Leukocytes", "7.{n}", "10*3/uL", "4-10"),
    ("777-3", "Platelets", "25{n}", "10*3/uL", "150-400"),
    ("4544-3", "Hematocrit", "4{n}", "%", "36-46"),
)


def _stamp() -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y%m%d%H%M%S+0000")


def adt(n: int) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|ADT|HOSP|CARNET|CARNET|{_stamp()}||ADT^A04^ADT_A01|A{n}|P|2.5",
            f"EVN||{_stamp()}",
            f"PID|1||P{n}^^^HOSP^PI||BENCH{n}^ANNE||19700101|F",
            "PV1|1|O" + "|" * 17 + f"V{n}^^^HOSP^VN",
        ]
    )


def oru(tag: str, n: int, patient: int, placer: str = "") -> str:
    lines = [
        f"MSH|^~\\&|LAB|LABO|CARNET|CARNET|{_stamp()}||ORU^R01^ORU_R01|{tag}-{n}|P|2.5",
        f"PID|1||P{patient}^^^HOSP^PI||BENCH{patient}^ANNE",
        f"OBR|1|{placer}|{tag}-{n}^LABO|58410-2^CBC panel^LN|||{_stamp()}" + "|" * 18 + "F",
    ]
    for i, (code, name, value, unit, ref) in enumerate(OBX, start=1):
        lines.append(f"OBX|{i}|NM|{code}^{name}^LN||{value.format(n=n % 10)}|{unit}|{ref}|N|||F")
    return "\r".join(lines)


class ParseOnly:
    """The baseline's service: parse and acknowledge, apply nothing."""

    def receive_many(self, messages: list[tuple[str, Peer, list[Registered] | None]]) -> list[str]:
        return [self.receive(raw, peer=peer, candidates=candidates) for raw, peer, candidates in messages]

    def candidates(self, peer: Peer) -> list[Registered]:
        return []

    def receive(self, raw: str, *, peer: Peer, candidates: list[Registered] | None = None) -> str:
        message = hl7v2.parse(raw)
        head = hl7v2.header(message)
        hl7v2.check_structure(message, head)
        return hl7v2.ack(head, AckCode.ACCEPT, control_id="1", now=clock.now())


class _AnyPeer(ParseOnly):
    def candidates(self, peer: Peer) -> list[Registered]:
        return [None]  # type: ignore[list-item]  # any non-empty list keeps the connection


# The interfaces' volume budget, shared by the listener processes (as `serve --processes` needs).
REDIS_URL = os.environ.get("CARNET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
CHILDREN: list[int] = []  # the pids of the listener processes besides this one (--processes)


@contextmanager
def listening(
    service: object,
    workers: int,
    *,
    group: bool = True,
    fast_loop: bool = False,
    processes: int = 1,
    runtime: Runtime | None = None,
    redis_url: str | None = None,
) -> Iterator[int]:
    """A listener in this process on a free port; with `processes` > 1 (and the `runtime` whose
    settings they take), that many listener processes on it in all (SO_REUSEPORT)."""
    from carnet.interfaces.processes import ListenerOptions, start_processes, stop_processes

    if fast_loop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MllpListener(
        service,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        workers=workers,
        group=group,
        reuse_port=processes > 1,
    )
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    others: list[Any] = []
    try:
        if processes > 1 and runtime is not None:
            options = ListenerOptions("127.0.0.1", port, workers, group)
            settings = (
                runtime.settings.model_copy(update={"redis_url": redis_url})
                if redis_url
                else runtime.settings
            )
            others = start_processes(settings, options, processes - 1)
            CHILDREN[:] = [p.pid for p in others]
        yield port
    finally:
        stop_processes(others)
        CHILDREN.clear()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _clients(port: int, batches: list[list[str]]) -> list[str]:
    answers = await asyncio.gather(*(send("127.0.0.1", port, batch) for batch in batches))
    return [a for batch in answers for a in batch]


KINDS = ("baseline", "carnet", "single")
CPU: dict[str, list[float]] = {k: [] for k in KINDS}
DB_CPU: dict[str, list[float]] = {k: [] for k in KINDS}


def _backend_cpu(runtime: Runtime) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to the run's database."""
    if runtime.engine.dialect.name != "postgresql":
        return {}
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    # A connection of its own (not one of the pool's, which do the work) that it leaves out.
    engine = create_engine(runtime.engine.url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            pids = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            ).scalars()
            return {pid: _proc_cpu(pid) for pid in pids}
    finally:
        engine.dispose()


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # ended meanwhile
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SENDERS: concurrent.futures.ProcessPoolExecutor | None = None


def _timed_clients(port: int, batches: list[list[str]]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    answers = asyncio.run(_clients(port, batches))
    return time.perf_counter() - start, answers


def _run(
    port: int, messages: list[str], clients: int, kind: str = "", runtime: Runtime | None = None
) -> tuple[float, int]:
    batches = [messages[i::clients] for i in range(clients)]
    before = _backend_cpu(runtime) if runtime is not None else {}
    children = {pid: _proc_cpu(pid) for pid in CHILDREN}
    cpu = time.process_time()
    if SENDERS is not None:  # the clients in a process of their own: not this one's CPU or GIL
        elapsed, answers = SENDERS.submit(_timed_clients, port, batches).result()
    else:
        elapsed, answers = _timed_clients(port, batches)
    if kind:  # this process's CPU (the listener and carnet; with --same-process, the clients too)
        used = time.process_time() - cpu + sum(_proc_cpu(pid) - t for pid, t in children.items())
        CPU[kind].append(used / len(messages) * 1000)
    if runtime is not None and kind:  # the database's backends (a new backend counts whole)
        after = _backend_cpu(runtime)
        used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        DB_CPU[kind].append(used / len(messages) * 1000)
    accepted = sum(1 for a in answers if "\rMSA|AA|" in a)
    return elapsed, accepted


def _seed(runtime: Runtime, patients: int, port: int) -> None:
    asyncio.run(_clients(port, [[adt(n) for n in range(i, patients, 8)] for i in range(8)]))


def _place_orders(runtime: Runtime, facility_id: uuid.UUID, count: int, tag: str) -> list[str]:
    """`count` active lab orders, one per message to come (the n-th for patient n % patients),
    inserted as a fixture through the audited system door (ordering 500 tests through one
    physician's gate would rightly trip detection): their placer numbers, in that order."""
    from sqlalchemy import select

    from carnet.interfaces.models import InterfaceMessage
    from carnet.phi.system import system_access
    from carnet.records.models import ServiceRequest
    from tests.factories import make_practitioner

    requester = make_practitioner(runtime, facility_id)
    now = clock.now()
    with system_access(runtime, reason="benchmark fixture: lab orders to answer") as door:
        rows = door.session.execute(
            select(InterfaceMessage.control_id, InterfaceMessage.patient_ids).where(
                InterfaceMessage.message_type == "ADT^A04"
            )
        ).all()
        by_number = {int(control[1:]): uuid.UUID(pid) for control, pid in rows}
        placers = [f"{tag}-{n:06d}" for n in range(count)]
        door.session.add_all(
            ServiceRequest(
                facility_id=facility_id,
                patient_id=by_number[n % len(by_number)],
                requester_id=requester,
                placer_number=placer,
                category="laboratory",
                code="58410-2",
                display="NFS",
                priority="routine",
                status="active",
                authored_at=now,
                version_id=1,
                created_at=now,
                updated_at=now,
            )
            for n, placer in enumerate(placers)
        )
    return placers


class StatementCounter:
    """SQL statements sent to the database while counting (all threads)."""

    def __init__(self, runtime: Runtime) -> None:
        self.count = 0
        self.on = False
        self._lock = threading.Lock()
        sa_event.listen(runtime.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: object) -> None:
        if self.on:
            with self._lock:
                self.count += 1


def bench_interfaces(runtime: Runtime) -> uuid.UUID:
    """The benchmark's facility (with its data key) and its two interfaces, the admission
    system (ADT^A04) and the laboratory (ORU^R01), registered with a budget no run reaches."""
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Bench", finess="759999998", city="Paris")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        for name, sender, types in (("ADT", "HOSP", ["ADT^A04"]), ("LAB", "LABO", ["ORU^R01"])):
            register_interface(
                session,
                name=name,
                sending_facility=sender,
                facility_id=facility.id,
                message_types=types,
                source_addresses=["127.0.0.1"],
                client_cert_sha256=None,
                per_minute=100_000,
            )
        return facility.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--orders", action="store_true", help="each message answers a carnet lab order")
    parser.add_argument("--no-single", action="store_true", help="skip one transaction per message")
    parser.add_argument("--uvloop", action="store_true", help="the listener's event loop is uvloop's")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="carnet's listener processes on the port (SO_REUSEPORT), each with --workers",
    )
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="each listener process counts the volume budget alone (as before session 9)",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="the clients in the listener's process (as before session 6)",
    )
    args = parser.parse_args()
    global SENDERS
    if not args.same_process:
        SENDERS = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    load_before = os.getloadavg()
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    with bench_runtime("hl7", sqlite=args.sqlite) as runtime:
        facility_id = bench_interfaces(runtime)
        redis_url = None if args.no_redis else REDIS_URL
        service = InterfaceService(runtime, budget=budget_for(redis_url))
        with listening(service, args.workers) as port:
            _seed(runtime, args.patients, port)
        counter = StatementCounter(runtime)
        statements: dict[str, list[float]] = {"carnet": [], "single": []}
        for r in range(args.rounds):
            placers = (
                _place_orders(runtime, facility_id, args.messages, f"O{r}")
                if args.orders
                else [""] * args.messages
            )
            messages = [oru(f"B{r}", n, n % args.patients) for n in range(args.messages)]
            with listening(_AnyPeer(), args.workers, fast_loop=args.uvloop) as port:
                elapsed, accepted = _run(port, messages, args.clients, "baseline")
            assert accepted == len(messages), f"baseline accepted {accepted} of {len(messages)}"
            results["baseline"].append(len(messages) / elapsed)
            for kind in ("carnet", "single"):
                if kind == "single" and args.no_single:
                    continue
                placers = (
                    _place_orders(runtime, facility_id, args.messages, f"O{kind[0]}{r}")
                    if args.orders and kind == "single"
                    else placers
                )
                messages = [
                    oru(f"R{kind[0]}{r}", n, n % args.patients, placers[n]) for n in range(args.messages)
                ]
                with listening(
                    service,
                    args.workers,
                    group=kind == "carnet",
                    fast_loop=args.uvloop,
                    processes=args.processes,
                    runtime=runtime,
                    redis_url=redis_url,
                ) as port:
                    counter.count, counter.on = 0, True
                    elapsed, accepted = _run(port, messages, args.clients, kind, runtime)
                    counter.on = False
                assert accepted == len(messages), f"{kind} accepted {accepted} of {len(messages)}"
                results[kind].append(len(messages) / elapsed)
                if args.processes == 1:  # the other processes' statements are not counted
                    statements[kind].append(counter.count / len(messages))
    best = {k: max(v) for k, v in results.items() if v}
    print(
        json.dumps(
            {
                "database": "sqlite" if args.sqlite else "postgresql",
                "messages_per_round": args.messages,
                "obx_per_message": len(OBX),
                "clients": args.clients,
                "workers": args.workers,
                "processes": args.processes,
                "messages_per_second": {k: [round(x, 1) for x in v] for k, v in results.items()},
                "best": {k: round(v, 1) for k, v in best.items()},
                "ratio_to_baseline": {k: round(v / best["baseline"], 4) for k, v in best.items()},
                "sql_statements_per_message": {k: [round(x, 1) for x in v] for k, v in statements.items()},
                "process_cpu_ms_per_message": {k: [round(x, 2) for x in v] for k, v in CPU.items()},
                "postgres_backends_cpu_ms_per_message": {
                    k: [round(x, 2) for x in v] for k, v in DB_CPU.items()
                },
                "uvloop": args.uvloop,
                "volume_budget": "redis" if redis_url else "per process",
                "clients_in_their_own_process": not args.same_process,
                "orders": args.orders,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
