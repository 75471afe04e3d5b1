"""CPU per ORU^R01 message in carnet's own process, one transaction per message against group
commit, without sockets, threads or clients in the way (what a loaded machine distorts least).

    .venv/bin/python -m benchmarks.hl7_group_cpu [--messages 400] [--group 8] [--rounds 2]

On PostgreSQL (a throwaway database): 50 patients registered by ADT^A04, then rounds of
`--messages` ORU^R01 (5 OBX each) applied one after the other by `InterfaceService.receive`
(one guarded transaction each), and the same number by `InterfaceService.receive_many` in
batches of `--group` (one transaction per batch, a savepoint and an audit event per message),
interleaved. Prints process CPU and wall time per message, and the PostgreSQL backends' CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks._db import bench_runtime
from benchmarks.hl7_oru import _backend_cpu, adt, bench_interfaces, oru
from carnet.interfaces.service import InterfaceService, Peer

PATIENTS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    out: dict[str, list[dict[str, float]]] = {"one_by_one": [], "grouped": []}
    with bench_runtime("hl7cpu") as runtime:
        bench_interfaces(runtime)
        service = InterfaceService(runtime)
        peer = Peer("127.0.0.1")
        candidates = service.candidates(peer)
        for n in range(PATIENTS):
            service.receive(adt(n), peer=peer, candidates=candidates)
        for r in range(args.rounds):
            for kind in ("one_by_one", "grouped"):
                messages = [oru(f"{kind[0]}{r}", n, n % PATIENTS) for n in range(args.messages)]
                before = _backend_cpu(runtime)
                start, cpu = time.perf_counter(), time.process_time()
                if kind == "grouped":
                    answers = []
                    for i in range(0, len(messages), args.group):
                        batch = [(m, peer, candidates) for m in messages[i : i + args.group]]
                        answers.extend(service.receive_many(batch))  # type: ignore[arg-type]
                else:
                    answers = [service.receive(m, peer=peer, candidates=candidates) for m in messages]
                wall, used = time.perf_counter() - start, time.process_time() - cpu
                after = _backend_cpu(runtime)
                database = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
                assert all("\rMSA|AA|" in a for a in answers), f"{kind}: not all accepted"
                n = len(messages)
                out[kind].append(
                    {
                        "process_cpu_ms": round(used / n * 1000, 2),
                        "postgres_cpu_ms": round(database / n * 1000, 2),
                        "wall_ms": round(wall / n * 1000, 2),
                    }
                )
    print(
        json.dumps(
            {
                "messages": args.messages,
                "group": args.group,
                "per_message": out,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
