"""`carnet audit verify` finds every kind of tampering, on SQLite and PostgreSQL.

Each test writes a real chain, takes real signed checkpoints, tampers with the database (or the
checkpoint file) the way an attacker with database access would, then runs the real command.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from carnet.audit.chain import LANES, canonical_values, link
from carnet.audit.checkpoints import Checkpoint, CheckpointSigner, CheckpointType
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.verify import plain_rows
from carnet.cli import app
from carnet.kernel import clock
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from tests.audit.helpers import DOCTOR, append_events

COLUMNS = [
    "seq", "recorded_at", "kind", "outcome", "actor_ref", "actor_kind", "account_id", "username", "roles",
    "session_id", "client_id", "address", "user_agent", "purpose_of_use", "resource_type", "resource_ids",
    "patient_ids", "query", "policy_reason", "break_glass_reason", "detail", "prev_hash", "hash",
]  # fmt: skip


def run_cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("CARNET_ENV", "test")
    monkeypatch.setenv("CARNET_VAR_DIR", str(runtime.settings.var_dir))
    monkeypatch.setenv("CARNET_DATABASE_URL", runtime.settings.resolved_database_url)
    monkeypatch.delenv("CARNET_NATS_URL", raising=False)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["audit", *args])
    finally:
        reset_settings_cache()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def verify(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    return run_cli(runtime, monkeypatch, "verify")


def problems(output: str) -> list[tuple[str, int | None]]:
    found = []
    for kind, seq in re.findall(r"^\[([a-z-]+)\] (?:seq (\d+): )?", output, flags=re.MULTILINE):
        found.append((kind, int(seq) if seq else None))
    return found


def checkpoint(runtime: Runtime) -> None:
    assert runtime.checkpointer is not None
    assert runtime.checkpointer.checkpoint() is not None


def sql(runtime: Runtime, statement: str, **params: Any) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def rows(runtime: Runtime) -> dict[int, dict[str, Any]]:
    with runtime.engine.connect() as conn:
        return {r.seq: dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_events"))}


def rechain(runtime: Runtime, start: int) -> None:
    """What a careful attacker does after editing: recompute every later hash and the head."""
    with runtime.engine.connect() as conn:
        plain = [list(r) for r in plain_rows(conn, 10**9)]
        conn.rollback()
    prev = None
    with runtime.engine.begin() as conn:
        for values in plain:
            seq = values[0]
            if seq >= start:
                assert prev is not None
                digest = link(prev, dict(zip(COLUMNS[:21], values[:21], strict=True)))
                conn.execute(
                    sa.text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
                    {"p": prev, "h": digest, "s": seq},
                )
                prev = digest
            else:
                prev = values[22]
        conn.execute(sa.text("UPDATE audit_chain_head SET hash = :h WHERE id = 1"), {"h": prev})


def test_an_intact_chain_verifies(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 5)
    checkpoint(runtime)
    append_events(runtime, 3)
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
    assert "8 events (seq 1..8)" in out
    assert "intact" in out and "3 newer events not yet pinned" in out


def test_canonical_encoding_of_stored_rows_matches_the_writer(runtime: Runtime) -> None:
    append_events(runtime, 2)
    with runtime.engine.connect() as conn:
        plain = [list(r) for r in plain_rows(conn, 10)]
    for values in plain:
        assert canonical_values(values[:21]) == canonical_values(list(values[:21]))
        assert link(values[21], dict(zip(COLUMNS[:21], values[:21], strict=True))) == values[22]


def test_an_edited_event_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 6)
    checkpoint(runtime)
    append_events(runtime, 4)
    checkpoint(runtime)
    sql(runtime, "UPDATE audit_events SET username = 'someone.else' WHERE seq = 8")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out)[0] == ("edited", 8)
    assert "intact up to checkpoint #1 (seq 6" in out


def test_an_edited_and_rehashed_chain_is_found_by_its_checkpoint(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(runtime, 4)
    checkpoint(runtime)
    append_events(runtime, 6)
    checkpoint(runtime)
    sql(runtime, "UPDATE audit_events SET address = '192.0.2.1' WHERE seq = 6")
    rechain(runtime, 6)
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("checkpoint-mismatch", 10)]
    assert "events 5..10 were rewritten" in out
    assert "intact up to checkpoint #1 (seq 4" in out


def test_a_deleted_event_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 8)
    checkpoint(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq = 5")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert ("missing", 5) in found and ("broken-link", 6) in found


def test_deleting_the_oldest_events_without_a_signed_purge_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(runtime, 6)
    checkpoint(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq <= 2")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out)[0] == ("unanchored-start", 3)


def test_an_inserted_event_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 8)
    checkpoint(runtime)
    # Make room at seq 5 and slip in a forged event that links correctly to seq 4.
    old = rows(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq >= 5")
    forged = dict(old[5], username="nobody", query="innocent")
    with runtime.engine.connect() as conn:
        plain4 = next(iter(r for r in plain_rows(conn, 4) if r[0] == 4))
    forged_plain = dict(zip(COLUMNS[:21], plain4[:21], strict=True))
    forged_plain |= {"seq": 5, "username": "nobody", "query": "innocent"}
    forged["prev_hash"] = old[4]["hash"]
    forged["hash"] = link(old[4]["hash"], forged_plain)
    shifted = [forged] + [dict(old[s], seq=s + 1) for s in range(5, 9)]
    with runtime.engine.begin() as conn:
        conn.execute(sa.insert(sa.table("audit_events", *[sa.column(c) for c in COLUMNS])), shifted)
        conn.execute(sa.text("UPDATE audit_chain_head SET seq = 9 WHERE id = 1"))
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert found[0][1] in (5, 6)
    assert {k for k, _ in found} & {"broken-link", "edited", "checkpoint-mismatch"}


def test_reordered_events_are_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 6)
    checkpoint(runtime)
    old = rows(runtime)
    swap = [c for c in COLUMNS if c != "seq"]
    with runtime.engine.begin() as conn:
        for target, source in ((3, 4), (4, 3)):
            sets = ", ".join(f"{c} = :{c}" for c in swap)
            conn.execute(
                sa.text(f"UPDATE audit_events SET {sets} WHERE seq = :seq"),
                {**{c: old[source][c] for c in swap}, "seq": target},
            )
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out)[0] in (("broken-link", 3), ("edited", 3))


def test_a_tail_removed_after_its_checkpoint_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(runtime, 10)
    checkpoint(runtime)
    tail = rows(runtime)[7]
    sql(runtime, "DELETE FROM audit_events WHERE seq >= 8")
    sql(runtime, "UPDATE audit_chain_head SET seq = 7, hash = :h WHERE id = 1", h=tail["hash"])
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("truncated", 8)]
    assert (
        "covers lane 1 up to seq 10 but the lane ends at seq 7: its events after seq 7 through seq 10" in out
    )


def test_a_tail_removed_before_any_newer_checkpoint_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(runtime, 5)
    checkpoint(runtime)
    append_events(runtime, 5)
    sql(runtime, "DELETE FROM audit_events WHERE seq >= 9")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("truncated", 9)]
    assert "intact up to checkpoint #1 (seq 5" in out


def test_a_forged_checkpoint_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 4)
    checkpoint(runtime)
    path = runtime.settings.resolved_checkpoint_file
    # 1. an altered checkpoint (claims another head) with the original signature
    line = json.loads(path.read_text().splitlines()[0])
    line["checkpoint"]["head_seq"] = 3
    # 2. a checkpoint signed with the attacker's own key
    attacker = CheckpointSigner(Ed25519PrivateKey.generate())
    forged = attacker.sign(
        Checkpoint(type=CheckpointType.CHAIN, head_seq=4, head_hash="ab" * 32, count=4, at=clock.now())
    )
    # 3. garbage
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n" + forged.decode() + "\n" + "{not json\n")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert found == [("bad-checkpoint", None)] * 3
    assert "checkpoint #2" in out and "bad signature" in out and "checkpoint #4" in out


def test_a_missing_checkpoint_store_is_a_problem(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 3)
    checkpoint(runtime)
    runtime.settings.resolved_checkpoint_file.unlink()
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("no-checkpoints", None)]


def test_bad_input_exits_2(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    append_events(runtime, 1)
    code, out = run_cli(runtime, monkeypatch, "verify", "--public-key", str(tmp_path / "absent.pem"))
    assert code == 2 and "no audit public key" in out
    (tmp_path / "junk.pem").write_text("junk")
    code, out = run_cli(runtime, monkeypatch, "verify", "--public-key", str(tmp_path / "junk.pem"))
    assert code == 2 and "not a PEM" in out
    code, out = run_cli(runtime, monkeypatch, "init-key")
    assert code == 2 and "already exists" in out
    assert "Traceback" not in out


def test_an_event_appended_behind_the_writers_back_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(runtime, 3)
    checkpoint(runtime)
    extra = dict(rows(runtime)[3], seq=4)
    with runtime.engine.begin() as conn:
        conn.execute(sa.insert(sa.table("audit_events", *[sa.column(c) for c in COLUMNS])), [extra])
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("inserted", 4)]


def test_awkward_text_verifies_byte_for_byte(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tabs, newlines, backslashes, a literal \N, control characters, non-Latin text: the
    # writer's encoding must equal what PostgreSQL's COPY emits, or verify would cry wolf.
    awkward = "a\tb\nc\\d\\N\r\x0b\x08\x0c\x01 é 漢字 😀 \"q\" ''"
    actor = dataclasses.replace(DOCTOR, user_agent=awkward, username="x\\N")
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_SEARCH,
                outcome=Outcome.DENIED,
                actor=actor,
                query=awkward,
                policy_reason="\\",
                break_glass_reason=awkward,
                detail={awkward: awkward},
            ),
        )
    checkpoint(runtime)
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out


def test_init_key_checkpoint_and_verify_with_the_public_key_only(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    key = tmp_path / "ops" / "audit.pem"
    monkeypatch.setenv("CARNET_AUDIT_SIGNING_KEY_FILE", str(key))
    code, out = run_cli(runtime, monkeypatch, "init-key")
    assert code == 0, out
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    code, out = run_cli(runtime, monkeypatch, "checkpoint")
    assert code == 0 and "the audit trail is empty" in out
    append_events(runtime, 3)
    code, out = run_cli(runtime, monkeypatch, "checkpoint")
    assert code == 0 and "checkpoint signed: seq 3, 3 events" in out
    # A verifier holds only the public key.
    public = tmp_path / "verifier.pub"
    public.write_bytes(key.with_name("audit.pem.pub").read_bytes())
    key.unlink()
    code, out = run_cli(runtime, monkeypatch, "verify", "--public-key", str(public))
    assert code == 0 and "intact: the chain verifies up to checkpoint #1 (seq 3" in out


def test_an_unwritable_output_is_a_clear_error(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 1)
    code, out = run_cli(
        runtime, monkeypatch, "export", "--since", "2000-01-01", "--output", "/proc/nope/x.jsonl"
    )
    assert code == 2 and "/proc/nope/x.jsonl" in out and "Traceback" not in out


# --- Lanes: the chain is several hash chains (lanes); tampering with one of them is found. ---

postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def lanes_of(runtime: Runtime) -> dict[int, list[int]]:
    with runtime.engine.connect() as conn:
        found: dict[int, list[int]] = {}
        for seq, lane in conn.execute(sa.text("SELECT seq, lane FROM audit_events ORDER BY seq")):
            found.setdefault(lane, []).append(seq)
    return found


def two_lanes(runtime: Runtime) -> dict[int, list[int]]:
    """PostgreSQL: while one transaction holds lane 1, another appends in lane 2."""
    record = AuditRecord(kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=DOCTOR, detail={"x": "1"})
    # The lane rows, as the migration leaves them (the test harness empties the table; a lane row
    # created by a transaction still open would make the second append wait for its commit).
    sql(
        runtime,
        "INSERT INTO audit_chain_head (id, seq, hash) SELECT g, 0, repeat('0', 64)"
        f" FROM generate_series(1, {LANES}) AS g ON CONFLICT DO NOTHING",
    )
    with runtime.session_factory() as holder, holder.begin():
        runtime.audit.append(holder, record)
        append_events(runtime, 4)  # lane 2: lane 1 is held
        runtime.audit.append(holder, record)
        runtime.audit.append(holder, record)
    append_events(runtime, 2)  # lane 1 again: the lowest free lane
    lanes = lanes_of(runtime)
    assert lanes == {1: [1, 6, 7, 8, 9], 2: [2, 3, 4, 5]}
    return lanes


def set_head(runtime: Runtime, lane: int, seq: int) -> None:
    """What an attacker does after deleting a lane's newest events: move its head back."""
    digest = rows(runtime)[seq]["hash"] if seq else "0" * 64
    sql(runtime, "UPDATE audit_chain_head SET seq = :s, hash = :h WHERE id = :l", s=seq, h=digest, l=lane)


@postgres_only
def test_a_transaction_keeps_one_lane_and_lanes_verify(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
    assert "9 events (seq 1..9)" in out
    assert "2 lane(s): lane 1 5 events, head seq 9; lane 2 4 events, head seq 5" in out
    line = json.loads(runtime.settings.resolved_checkpoint_file.read_text().splitlines()[-1])
    assert line["checkpoint"]["format"] == "carnet-audit-checkpoint/2"
    assert [lane[:2] for lane in line["checkpoint"]["lanes"]] == [[1, 9], [2, 5]]


def test_an_event_moved_to_another_lane_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    append_events(runtime, 6)
    checkpoint(runtime)
    sql(runtime, "UPDATE audit_events SET lane = 3 WHERE seq = 4")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert ("broken-link", 5) in found  # lane 1 lost its event 4
    assert ("unanchored-start", 4) in found or ("inserted", 4) in found  # and lane 3 never had it


@postgres_only
def test_an_event_moved_between_used_lanes_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    # Event 7 moved into lane 2 after its last event, lane 2's head moved on to it, lane 1's back.
    sql(runtime, "UPDATE audit_events SET lane = 2, prev_seq = 5 WHERE seq = 7")
    set_head(runtime, 2, 7)
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert ("broken-link", 7) in found and ("broken-link", 8) in found


@postgres_only
def test_a_lanes_last_event_deleted_and_its_head_rewound_is_found_by_the_checkpoint(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq = 5")
    set_head(runtime, 2, 4)
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("truncated", 5)]
    assert "covers lane 2 up to seq 5 but the lane ends at seq 4" in out


@postgres_only
def test_the_middle_of_one_lane_deleted_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq IN (3, 4)")
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    found = problems(out)
    assert ("missing", 3) in found and ("broken-link", 5) in found
    assert "lane 2: the events between seq 2 and seq 5 are missing" in out


@postgres_only
def test_a_forged_lane_head_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    sql(runtime, "UPDATE audit_chain_head SET hash = :h WHERE id = 2", h="ab" * 32)
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("truncated", 5)]
    assert "head of lane 2's hash does not match" in out
    sql(runtime, "UPDATE audit_chain_head SET seq = 40 WHERE id = 2")
    code, out = verify(runtime, monkeypatch)
    assert code == 1 and problems(out) == [("truncated", 6)]


@postgres_only
def test_a_whole_lane_deleted_is_found(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE lane = 2")
    set_head(runtime, 2, 0)
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("truncated", 1)]
    assert "covers lane 2 up to seq 5 but the lane ends at seq 0" in out
    # Even with its head row gone.
    sql(runtime, "DELETE FROM audit_chain_head WHERE id = 2")
    code, out = verify(runtime, monkeypatch)
    assert code == 1 and problems(out) == [("truncated", 1)]


@postgres_only
def test_an_event_slipped_into_a_lane_behind_its_head_is_found(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_lanes(runtime)
    checkpoint(runtime)
    extra = dict(rows(runtime)[5], seq=10)
    with runtime.engine.begin() as conn:
        table = sa.table("audit_events", *[sa.column(c) for c in [*COLUMNS, "lane", "prev_seq"]])
        conn.execute(sa.insert(table), [extra])
    code, out = verify(runtime, monkeypatch)
    assert code == 1
    assert problems(out) == [("inserted", 10)]
    assert "beyond the head of lane 2" in out


def test_format_1_checkpoints_still_verify(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints signed before lanes pin what is now lane 1."""
    append_events(runtime, 4)
    assert runtime.checkpointer is not None
    signer = runtime.checkpointer.signer
    head = rows(runtime)[4]["hash"]
    old = Checkpoint(
        type=CheckpointType.CHAIN,
        head_seq=4,
        head_hash=head,
        count=4,
        at=clock.now(),
        format="carnet-audit-checkpoint/1",
    )
    runtime.checkpointer.store.append(signer.sign(old), dedupe_id="old")
    assert "lanes" not in json.loads(signer.sign(old))["checkpoint"]
    append_events(runtime, 2)
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
    assert "intact: the chain verifies up to checkpoint #1 (seq 4" in out and "2 newer events" in out
    sql(runtime, "UPDATE audit_events SET address = '192.0.2.1' WHERE seq = 3")
    rechain(runtime, 3)
    code, out = verify(runtime, monkeypatch)
    assert code == 1 and problems(out) == [("checkpoint-mismatch", 4)]


@postgres_only
def test_a_purge_anchors_every_lane_even_one_it_empties(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, movable_clock: Any
) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    movable_clock.set(now - dt.timedelta(days=365 * 8))
    two_lanes(runtime)  # seqs 1..9 in lanes 1 and 2, all old
    movable_clock.set(now)
    append_events(runtime, 2)  # lane 1: 10, 11
    checkpoint(runtime)
    before = (now - dt.timedelta(days=365 * 7)).date().isoformat()
    code, out = run_cli(runtime, monkeypatch, "purge", "--before", before, "--reason", "retention schedule")
    assert code == 0, out
    assert "purged 9 events (through seq 9)" in out
    lines = [
        json.loads(line)["checkpoint"]
        for line in runtime.settings.resolved_checkpoint_file.read_text().splitlines()
    ]
    purge = next(c for c in lines if c["type"] == "purge")
    assert [pin[:2] for pin in purge["lanes"]] == [[1, 9], [2, 5]]
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out  # lane 2 ends at its anchor: all its events were purged, signed
    # Lane 1 cut below what the purge covers, or lane 2's head moved off its anchor: found.
    set_head(runtime, 2, 0)
    code, out = verify(runtime, monkeypatch)
    assert code == 1 and ("truncated", 1) in problems(out)
