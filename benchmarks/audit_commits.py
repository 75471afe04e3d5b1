"""Audited commits per second through `SqlAuditWriter.append` (one event per transaction, the
one-statement link the gate and the HL7 groups use), from many threads, on PostgreSQL.

Run it from two trees (main and a branch) interleaved to compare the chain's designs:

    .venv/bin/python -m benchmarks.audit_commits --threads 32 --seconds 10

Creates and drops its own database on the local server.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.writer import SqlAuditWriter
from carnet.db import migrate
from carnet.db.engine import make_engine, make_session_factory

ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    name = f"carnet_commits_{uuid.uuid4().hex[:6]}"
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=args.threads, max_overflow=0)
    try:
        migrate.upgrade(engine)
        factory = make_session_factory(engine)
        writer = SqlAuditWriter()
        actor = Actor(
            kind=ActorKind.STAFF, username="bench", roles=frozenset({Role.NURSE}), account_id=uuid.uuid4()
        )
        stop = time.monotonic() + args.seconds
        counts = [0] * args.threads

        def work(index: int) -> None:
            record = AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=actor,
                patient_ids=[uuid.uuid4()],
                detail={"thread": str(index)},
            )
            while time.monotonic() < stop:
                with factory.begin() as session:
                    writer.append(session, record)
                counts[index] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{sum(counts) / args.seconds:.0f} audited commits/s, load {os.getloadavg()[0]:.1f}")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
