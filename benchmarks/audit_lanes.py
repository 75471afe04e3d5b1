"""The audit chain's lanes measured alone with pgbench (never in `make test`).

A throwaway database holds `audit_chain_head`, the `audit_event_seq` sequence, a narrow events
table and the chain's two functions as migrations 0012 and 0013 left them, with the number of
lanes replaced; each pgbench transaction is BEGIN, one event linked and inserted by
`carnet_audit_link` (as the writer's one-statement append does), COMMIT. Shapes, interleaved
round by round: one lane (the old single head, same function), 4, 8 and 16 lanes, and no chain
at all (a sequence number only).

    .venv/bin/python -m benchmarks.audit_lanes --clients 64 --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import tempfile
from typing import Any

import sqlalchemy as sa

import carnet.db
from benchmarks._db import empty_database
from carnet.db.engine import make_engine


def _migration(name: str) -> Any:
    path = os.path.join(os.path.dirname(carnet.db.__file__), "migrations", "versions", name)
    spec = importlib.util.spec_from_file_location(f"carnet_migration_{name[:4]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lanes_migration = _migration("0012_audit_lanes.py")  # carnet_audit_lane
link_migration = _migration("0013_read_cpu.py")  # carnet_audit_link as it runs today


SCHEMA = """
CREATE TABLE audit_chain_head (id integer PRIMARY KEY, seq bigint NOT NULL, hash varchar(64) NOT NULL);
CREATE TABLE audit_events (seq bigint PRIMARY KEY, lane smallint NOT NULL, prev_seq bigint,
                           prev_hash varchar(64) NOT NULL, hash varchar(64) NOT NULL, body text NOT NULL);
CREATE SEQUENCE audit_event_seq AS bigint CACHE 1;
"""

CHAINED = (
    "BEGIN;\n"
    "WITH link AS (SELECT * FROM carnet_audit_link(convert_to(repeat('x', 400), 'UTF8')))"
    " INSERT INTO audit_events SELECT seq, lane, prev_seq, prev_hash, hash, repeat('x', 400) FROM link;\n"
    "COMMIT;\n"
)
UNCHAINED = (
    "BEGIN;\n"
    "INSERT INTO audit_events SELECT nextval('audit_event_seq'), 1, NULL, repeat('0', 64),"
    " encode(sha256(convert_to(repeat('x', 400), 'UTF8')), 'hex'), repeat('x', 400);\n"
    "COMMIT;\n"
)


def _functions(lanes: int) -> list[str]:
    lane_sql = lanes_migration.LANE_FUNCTION.replace(
        f"BETWEEN 1 AND {lanes_migration.LANES}", f"BETWEEN 1 AND {lanes}"
    ).replace(f"% {lanes_migration.LANES} + 1", f"% {lanes} + 1")
    lane_sql = lane_sql.replace(
        f"generate_series(1, {lanes_migration.LANES})", f"generate_series(1, {lanes})"
    )
    return [
        "DROP FUNCTION IF EXISTS carnet_audit_link(bytea)",
        "DROP FUNCTION IF EXISTS carnet_audit_lane(integer)",
        lane_sql,
        link_migration.LINK_FUNCTION.replace(
            f"BETWEEN 1 AND {link_migration.LANES}", f"BETWEEN 1 AND {lanes}"
        ),
    ]


def _reset(url: str, lanes: int) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE audit_events, audit_chain_head"))
        for statement in _functions(max(lanes, 1)):
            conn.execute(sa.text(statement))
    engine.dispose()


def _pgbench(dsn: str, script: str, *, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", path, dsn],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(path)
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lanes", default="1,4,8,16")
    args = parser.parse_args()
    with empty_database("lanes") as url:
        _measure(url, args)


def _measure(url: str, args: argparse.Namespace) -> None:
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in SCHEMA.strip().split(";\n"):
            conn.execute(sa.text(statement))
    engine.dispose()
    shapes = [(f"{n} lane(s)", n) for n in (int(x) for x in args.lanes.split(","))] + [("no chain", 0)]
    results: dict[str, list[float]] = {label: [] for label, _ in shapes}
    loads = []
    for round_ in range(args.rounds):
        for label, lanes in shapes:
            _reset(url, lanes)
            tps = _pgbench(dsn, CHAINED if lanes else UNCHAINED, clients=args.clients, seconds=args.seconds)
            results[label].append(tps)
            load = os.getloadavg()[0]
            loads.append(load)
            print(f"round {round_ + 1} {label:>12}: {tps:8.0f} tx/s (load {load:.1f})", flush=True)
    base = statistics.median(results[shapes[0][0]])
    span = f"load {min(loads):.1f}-{max(loads):.1f}"
    print(f"\n{args.clients} clients, {args.seconds} s x {args.rounds} rounds, {span}")
    for label, _ in shapes:
        values = results[label]
        print(
            f"{label:>12}: median {statistics.median(values):8.0f} tx/s"
            f" ({', '.join(f'{v:.0f}' for v in values)}),"
            f" {statistics.median(values) / base:.2f}x one lane"
        )


if __name__ == "__main__":
    main()
