"""Cost of field encryption on PostgreSQL, as ratios against baselines measured in the same run.

1. A patient read by id, decrypting all seven identifying fields, against the same read without
   decrypting (and against a plaintext table, for scale).
2. A family name + birth date search through the blind indexes (two HMACs, the composite index,
   then decrypting the hits), against the same search on a plaintext table indexed on
   (normalised family, birth date).

    .venv/bin/python -m benchmarks.crypto_cost [--patients 100000] [--samples 3000]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from faker import Faker

from benchmarks._db import bench_runtime
from carnet.crypto.blind import IndexKind, normalize_name
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.phi.system import system_access
from carnet.runtime import Runtime

FIELDS = ("ins", "family", "given", "birth_date", "address", "phone", "email")
INDEXED = {
    "ins": IndexKind.IDENTIFIER,
    "family": IndexKind.FAMILY,
    "given": IndexKind.GIVEN,
    "birth_date": IndexKind.BIRTH_DATE,
    "phone": IndexKind.PHONE,
    "email": IndexKind.EMAIL,
}
CHUNK = 5000

plain_metadata = sa.MetaData()
plain_patients = sa.Table(
    "bench_plain_patients",
    plain_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("facility_id", sa.Uuid, nullable=False),
    *(sa.Column(f, sa.Text) for f in FIELDS),
    sa.Column("family_norm", sa.Text, nullable=False),
    sa.Index("ix_bench_plain_family_birth", "family_norm", "birth_date"),
)


def _people(count: int, seed: int) -> list[dict[str, str]]:
    """Realistic French identities; names from pools so lookups hit about one patient each."""
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    families = sorted({fake.last_name() for _ in range(4000)})
    givens = sorted({fake.first_name() for _ in range(1500)})
    start = dt.date(1920, 1, 1).toordinal()
    people = []
    for i in range(count):
        family, given = rng.choice(families), rng.choice(givens)
        birth = dt.date.fromordinal(start + rng.randrange(105 * 365))
        people.append(
            {
                "ins": f"{1 + i % 2}{birth:%y%m}{rng.randrange(10**10):010d}",
                "family": family,
                "given": given,
                "birth_date": birth.isoformat(),
                "address": json.dumps({"line": f"{rng.randrange(1, 200)} rue de la Paix", "city": "Paris"}),
                "phone": f"06 {rng.randrange(10**8):08d}",
                "email": f"p{i}@example.fr",
            }
        )
    return people


def _seed(runtime: Runtime, people: list[dict[str, str]]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Banc d'essai", finess="759999999", city="Paris")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        facility_id = facility.id
    keyring = runtime.keyring
    now = dt.datetime.now(dt.UTC)
    ids: list[uuid.UUID] = []
    for start in range(0, len(people), CHUNK):
        encrypted, plain = [], []
        for person in people[start : start + CHUNK]:
            row_id = uuid.uuid4()
            ids.append(row_id)
            row: dict[str, object] = {
                "id": row_id,
                "facility_id": facility_id,
                "gender": "unknown",
                "version_id": 1,
                "created_at": now,
                "updated_at": now,
                "opposes_other_facilities": False,
                "active": True,
            }
            for name in FIELDS:
                row[f"{name}_ct"] = keyring.encrypt(
                    person[name], facility_id=facility_id, table="patients", column=name, row_id=row_id
                )
                if name in INDEXED:
                    row[f"{name}_bi"] = keyring.index(INDEXED[name], person[name])
            encrypted.append(row)
            plain.append(
                {
                    "id": row_id,
                    "facility_id": facility_id,
                    "family_norm": normalize_name(person["family"]),
                    **person,
                }
            )
        with system_access(runtime, reason="benchmark: seed synthetic patients") as access:
            access.session.execute(sa.insert(Patient), encrypted)
            access.session.execute(sa.insert(plain_patients), plain)
    with runtime.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE patients"))
        conn.execute(sa.text("ANALYZE bench_plain_patients"))
    return facility_id, ids


def _time(fn: Callable[[], object], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def _row(label: str, values: list[float]) -> str:
    p50, p99 = statistics.median(values), _pct(values, 99)
    return f"| {label} | {p50 * 1e6:,.0f} µs | {p99 * 1e6:,.0f} µs |"


def run(patients: int, samples: int) -> str:
    with bench_runtime("crypto", extra=plain_metadata) as runtime:
        return _measure(runtime, patients, samples)


def _measure(runtime: Runtime, patients: int, samples: int) -> str:
    people = _people(patients, seed=42)
    t0 = time.perf_counter()
    _facility_id, ids = _seed(runtime, people)
    seed_seconds = time.perf_counter() - t0
    keyring = runtime.keyring
    rng = random.Random(7)
    pt = Patient.__table__
    cts = [pt.c[f"{f}_ct"] for f in FIELDS]
    by_id = sa.select(pt.c.id, *cts).where(pt.c.id == sa.bindparam("pid"))
    plain_by_id = sa.select(plain_patients).where(plain_patients.c.id == sa.bindparam("pid"))
    blind_search = sa.select(pt.c.id, *cts).where(
        pt.c.family_bi == sa.bindparam("f"), pt.c.birth_date_bi == sa.bindparam("b")
    )
    plain_search = sa.select(plain_patients).where(
        plain_patients.c.family_norm == sa.bindparam("f"), plain_patients.c.birth_date == sa.bindparam("b")
    )
    read_ids = [rng.choice(ids) for _ in range(samples)]
    lookups = [rng.choice(people) for _ in range(samples)]

    def decrypt_row(row: sa.Row[Any]) -> None:
        row_id: uuid.UUID = row[0]
        blobs = cast("tuple[bytes | None, ...]", tuple(row[1:]))
        for name, blob in zip(FIELDS, blobs, strict=True):
            keyring.decrypt(blob, table="patients", column=name, row_id=row_id)

    with runtime.engine.connect() as conn:
        it = iter(read_ids * 4)

        def read_plain() -> None:
            conn.execute(plain_by_id, {"pid": next(it)}).one()

        def read_no_decrypt() -> None:
            conn.execute(by_id, {"pid": next(it)}).one()

        def read_decrypt() -> None:
            decrypt_row(conn.execute(by_id, {"pid": next(it)}).one())

        looks = iter(lookups * 4)

        def search_plain() -> None:
            p = next(looks)
            rows = conn.execute(plain_search, {"f": normalize_name(p["family"]), "b": p["birth_date"]}).all()
            assert rows

        def search_blind() -> None:
            p = next(looks)
            f = keyring.blind.index(IndexKind.FAMILY, p["family"])
            b = keyring.blind.index(IndexKind.BIRTH_DATE, p["birth_date"])
            rows = conn.execute(blind_search, {"f": f, "b": b}).all()
            assert rows
            for row in rows:
                decrypt_row(row)

        # Warm caches and plans, then measure each pair back to back.
        for fn in (read_plain, read_no_decrypt, read_decrypt):
            _time(fn, min(200, samples))
        it = iter(read_ids * 4)
        plain_reads = _time(read_plain, samples)
        raw_reads = _time(read_no_decrypt, samples)
        dec_reads = _time(read_decrypt, samples)
        for fn in (search_plain, search_blind):
            _time(fn, min(200, samples))
        looks = iter(lookups * 4)
        plain_searches = _time(search_plain, samples)
        blind_searches = _time(search_blind, samples)
        fetched = [conn.execute(by_id, {"pid": pid}).one() for pid in read_ids]
        rows_iter = iter(fetched)
        decrypt_only = _time(lambda: decrypt_row(next(rows_iter)), samples)
        plan = conn.execute(
            sa.text("EXPLAIN SELECT id FROM patients WHERE family_bi = :f AND birth_date_bi = :b"),
            {"f": b"0" * 16, "b": b"0" * 16},
        ).scalars()
        uses_index = any("ix_patients_family_birth" in line for line in plan)

    lines = [
        f"PostgreSQL, {patients:,} patients (seeded in {seed_seconds:.0f} s),"
        f" {samples:,} samples per figure.",
        "",
        "| operation | p50 | p99 |",
        "|---|---|---|",
        _row("read by id, plaintext table", plain_reads),
        _row("read by id, ciphertexts not decrypted", raw_reads),
        _row("read by id, 7 fields decrypted", dec_reads),
        _row("family + birth date search, plaintext index", plain_searches),
        _row("family + birth date search, blind indexes + decrypt hits", blind_searches),
        "",
        f"- decrypting one patient's 7 fields alone: {statistics.median(decrypt_only) * 1e6:,.0f} µs at p50;"
        f" read with decrypt / without ="
        f" {statistics.median(dec_reads) / statistics.median(raw_reads):.2f}x (p50)",
        f"- blind-index search / plaintext-index search = "
        f"{statistics.median(blind_searches) / statistics.median(plain_searches):.2f}x (p50), "
        f"{_pct(blind_searches, 99) / _pct(plain_searches, 99):.2f}x (p99)",
        f"- the blind search uses ix_patients_family_birth: {'yes' if uses_index else 'NO'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    if args.patients < 100 or args.samples < 100:
        parser.error("use at least 100 patients and 100 samples")
    print(run(args.patients, args.samples))


if __name__ == "__main__":
    main()
