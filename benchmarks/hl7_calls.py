"""What one ORU^R01 message costs carnet in Python work, counted: function calls and SQL
statements per message and where the CPU goes, measured in process with a CPU clock (the figure
holds at any load, unlike throughput on a shared machine).

    .venv/bin/python -m benchmarks.hl7_calls [--messages 300] [--group 8] [--profile /tmp/oru.prof]

On PostgreSQL (a throwaway database): 50 patients registered by ADT^A04, 100 ORU^R01 to warm up,
then `--messages` ORU^R01 (5 OBX each) applied by `InterfaceService.receive_many` in batches of
`--group` (1: `InterfaceService.receive`, one transaction per message) under cProfile with
`time.thread_time`. The report gives the exact Python calls and SQL statements per message, the
share of the profiled time of each step, and the self time by package.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import time
from pathlib import Path
from typing import Any

from benchmarks._db import bench_runtime
from benchmarks.hl7_oru import StatementCounter, adt, bench_interfaces, oru
from carnet.interfaces.service import InterfaceService, Peer

PATIENTS = 50

# (label, function name, file ending): the steps of a message, as shares of the profiled time.
STEPS = (
    ("parse (python-hl7)", "parse", "interfaces/hl7v2.py"),
    ("identify (header, digest, stripe)", "_identify", "interfaces/service.py"),
    ("replay lookup", "_replays", "interfaces/service.py"),
    ("replay lookup (one)", "_replay", "interfaces/service.py"),
    ("admit (budget, structure)", "_admit", "interfaces/service.py"),
    ("group (one transaction)", "run_group", "phi/grouped.py"),
    ("one path (one transaction)", "_run", "phi/kernel.py"),
    ("  context", "_context", "phi/kernel.py"),
    ("  message body", "_apply", "interfaces/operation.py"),
    ("    handler: results", "results", "interfaces/handlers.py"),
    ("      link prefetch", "prefetch", "interfaces/operation.py"),
    ("      result inputs (OBX fields, pydantic)", "_result_input", "interfaces/handlers.py"),
    ("      record_observations", "record_observations", "records/operations.py"),
    ("        patient lock", "patient_for_write", "phi/kernel.py"),
    ("        authorize", "authorize", "phi/kernel.py"),
    ("        versions (encrypt, insert)", "snapshots", "phi/kernel.py"),
    ("        relationships", "relationships_of", "phi/care.py"),
    ("    links", "write_links", "interfaces/operation.py"),
    ("  ledger", "record", "detection/ledger.py"),
    ("  audit append", "append", "audit/writer.py"),
    ("  group's rows and audit appends, one pipeline", "_send_and_audit", "phi/grouped.py"),
    ("  commit", "commit", "orm/session.py"),
    ("ACK", "ack", "interfaces/hl7v2.py"),
)
PACKAGES = (
    "psycopg",
    "sqlalchemy",
    "hl7/",
    "pydantic",
    "cryptography",
    "opentelemetry",
    "carnet/",
)


def run(messages: int, group: int, profile_out: Path | None) -> str:
    with bench_runtime("hl7calls") as runtime:
        bench_interfaces(runtime)
        service = InterfaceService(runtime)
        peer = Peer("127.0.0.1")
        candidates = service.candidates(peer)
        for n in range(PATIENTS):
            service.receive(adt(n), peer=peer, candidates=candidates)

        def apply(batch: list[str]) -> list[str]:
            if group == 1:
                return [service.receive(m, peer=peer, candidates=candidates) for m in batch]
            answers: list[str] = []
            for i in range(0, len(batch), group):
                chunk = [(m, peer, candidates) for m in batch[i : i + group]]
                answers.extend(service.receive_many(chunk))  # type: ignore[arg-type]
            return answers

        warm = [oru("W", n, n % PATIENTS) for n in range(100)]
        assert all("\rMSA|AA|" in a for a in apply(warm))
        batch = [oru("P", n, n % PATIENTS) for n in range(messages)]
        counter = StatementCounter(runtime)
        pipelined = _count_pipelined(counter)
        lines = [f"load average {os.getloadavg()[0]:.2f} at the start (2 cores)"]
        began = time.process_time()
        counter.on = True
        unprofiled = apply(batch[: messages // 2])
        counter.on = False
        half = messages // 2
        lines.append(
            f"process CPU, not profiled: {1000 * (time.process_time() - began) / half:.2f} ms per message;"
            f" {counter.count / half:.2f} SQL statements per message ({pipelined[0] / half:.2f} of them"
            f" in {pipelined[1] / half:.2f} pipelines of carnet.db.prepared.insert_rows, audit appends"
            " included; an audit append sent alone by psycopg is not counted)"
        )
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        answers = apply(batch[half:])
        profile.disable()
        assert all("\rMSA|AA|" in a for a in unprofiled + answers), "not all accepted"
        lines.append(f"load average {os.getloadavg()[0]:.2f} at the end")
    stats = pstats.Stats(profile)
    if profile_out is not None:
        stats.dump_stats(profile_out)
    return "\n".join([*lines, "", _report(stats, messages - half)])


def _count_pipelined(counter: StatementCounter) -> list[int]:
    """Count the statements `insert_rows` sends in its pipelines (psycopg's own, which
    SQLAlchemy's cursor events do not see) with the others: [statements, pipelines]."""
    try:
        from carnet.phi import kernel
    except ImportError:
        return [0, 0]
    seen = [0, 0]
    real = getattr(kernel, "insert_rows", None)
    if real is None:  # a checkout before insert_rows
        return seen

    def counting(connection: Any, batches: Any, **then: Any) -> Any:
        sent = sum(1 for _, rows in batches if rows) + len(then.get("then", ()))
        if counter.on and sent:
            seen[0] += sent
            seen[1] += 1
            counter.count += sent
        return real(connection, batches, **then)

    kernel.insert_rows = counting  # type: ignore[attr-defined]
    from carnet.db import prepared

    select_all = prepared.PreparedSelect.all

    def counting_select(self: Any, connection: Any, params: Any) -> Any:
        if counter.on:  # psycopg's own prepared statements: not seen by SQLAlchemy's events
            counter.count += 1
        return select_all(self, connection, params)

    prepared.PreparedSelect.all = counting_select  # type: ignore[method-assign]

    if hasattr(prepared, "DeferredRows"):  # a group's rows, sent together at its end
        prepared.insert_rows = counting  # type: ignore[assignment]
    return seen


def _report(stats: pstats.Stats, n: int) -> str:
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    calls = sum(v[1] for v in entries.values())
    out = [f"**{calls / n:,.0f} Python function calls per message** ({n} messages profiled)", ""]
    out += ["| step | share of profiled CPU | calls of it per message |", "|---|---|---|"]
    for label, function, where in STEPS:
        found = [v for k, v in entries.items() if k[2] == function and k[0].endswith(where)]
        if found:
            cumulative = sum(v[3] for v in found)
            count = sum(v[1] for v in found)
            out.append(f"| {label} | {cumulative / total:.1%} | {count / n:.2f} |")
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _line, _name), v in entries.items():
        package = next((p for p in PACKAGES if p in filename), "interpreter built-ins, stdlib")
        by_package[package.rstrip("/")] += v[2]
    out += ["", "| self time by package | share |", "|---|---|"]
    out += [f"| {p} | {t / total:.1%} |" for p, t in by_package.most_common()]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--profile", type=Path, default=None, help="also write the cProfile stats here")
    args = parser.parse_args()
    print(run(args.messages, args.group, args.profile))


if __name__ == "__main__":
    main()
