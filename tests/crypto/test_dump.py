"""A database dump is not a breach (DESIGN.md invariant 9): 1,000 patients, none readable."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
import sqlalchemy as sa

from carnet.identity.models import WebAuthnChallenge
from carnet.runtime import Runtime
from tests.crypto.helpers import PlainPatient, create_facility, insert_patients, make_patients

PATIENTS = 1000
FACILITY_NAME = "Hôpital Saint-Exemple"
# Stored as raw bytes in a binary column that is not encrypted: proves the search looks inside them.
BYTEA_CONTROL = b"Controle-positif-binaire"
GRAM = 6


def _pg_dump() -> str:
    found = shutil.which("pg_dump") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None
    )
    if found is None:
        pytest.fail("pg_dump is not installed")
    return found


def _dump_postgres(url: str) -> bytes:
    parsed = sa.engine.make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    result = subprocess.run(
        [
            _pg_dump(),
            "--no-owner",
            "--format=plain",
            "-h",
            parsed.host or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.database or "",
        ],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    # bytea values appear as \\x<hex> in COPY text: decode them so plaintext kept in a binary
    # column would be found too.
    return re.sub(rb"\\\\x([0-9a-fA-F]*)", lambda m: bytes.fromhex(m.group(1).decode()), result.stdout)


def _dump_sqlite(url: str) -> bytes:
    path = Path(sa.engine.make_url(url).database or "")
    parts = [path, path.with_name(path.name + "-wal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def _needles(patients: Iterable[PlainPatient]) -> dict[bytes, str]:
    """Every identifying value to look for, and what it is (never the value itself)."""
    out: dict[bytes, str] = {}
    for p in patients:
        for kind, value in (
            ("family name", p.family),
            ("normalised family name", p.family.lower()),
            ("phone", p.phone),
            ("phone digits", p.phone.replace(" ", "")),
            ("email", p.email),
            ("identifier", p.ins),
        ):
            out[value.encode()] = kind
        if len(p.given) >= GRAM:
            out[p.given.encode()] = "given name"
    return out


def _found(dump: bytes, needles: dict[bytes, str]) -> list[str]:
    """Which needles occur in the dump: a set of 6-byte windows filters, `in` confirms."""
    grams = {dump[i : i + GRAM] for i in range(len(dump) - GRAM + 1)}
    hits = [kind for needle, kind in needles.items() if needle[:GRAM] in grams and needle in dump]
    return sorted(hits)


def test_a_database_dump_reveals_none_of_the_patients(runtime: Runtime) -> None:
    facility_id = create_facility(runtime, name=FACILITY_NAME)
    patients = make_patients(PATIENTS, facility_id, seed=11)
    insert_patients(runtime, patients)
    with runtime.session_factory.begin() as session:
        session.add(
            WebAuthnChallenge(
                purpose="register",
                challenge=BYTEA_CONTROL,
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            )
        )
    url = runtime.settings.resolved_database_url
    if url.startswith("postgresql"):
        dump = _dump_postgres(url)
    else:
        runtime.engine.dispose()  # checkpoint and close, as a copied file would be
        dump = _dump_sqlite(url)

    # Positive controls: the search does find plaintext, in text and in binary columns.
    assert _found(dump, {FACILITY_NAME.encode(): "facility", BYTEA_CONTROL: "bytea"}) == ["bytea", "facility"]
    assert len(dump) > PATIENTS * 500, "the dump should hold the encrypted patients"

    needles = _needles(patients)
    assert len(needles) >= PATIENTS * 4  # family names repeat; phones, emails, identifiers do not
    assert _found(dump, needles) == []
