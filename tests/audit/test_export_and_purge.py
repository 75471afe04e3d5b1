"""SIEM export (JSON lines, pseudonymous) and the retention purge (audited, anchored, refused when
younger than the legal minimum), through the real command on both databases."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel.clock import MovableClock
from carnet.runtime import Runtime
from tests.audit.helpers import DOCTOR, EMERGENCY, append_events
from tests.audit.test_verify import problems, run_cli, sql, verify

PATIENT_ACTOR = Actor(
    kind=ActorKind.PATIENT,
    username="lucie.martin@example.org",
    roles=frozenset({Role.PATIENT}),
    account_id=uuid.uuid4(),
)


def test_export_gives_json_lines_without_free_text_or_patient_names(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, movable_clock: MovableClock, tmp_path: Path
) -> None:
    patient = uuid.uuid4()
    movable_clock.set(dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))
    append_events(runtime, 2, patients=[patient])
    movable_clock.set(dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC))
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.BREAK_GLASS_START,
                outcome=Outcome.SUCCESS,
                actor=EMERGENCY,
                patient_ids=[patient],
                break_glass_reason="Lucie Martin unconscious in the ER",
                detail={"note": "Lucie Martin"},
            ),
        )
        runtime.audit.append(
            session, AuditRecord(kind=AuditKind.LOGIN_SUCCESS, outcome=Outcome.SUCCESS, actor=PATIENT_ACTOR)
        )
    movable_clock.set(dt.datetime(2026, 3, 3, 12, tzinfo=dt.UTC))
    append_events(runtime, 1)

    code, out = run_cli(runtime, monkeypatch, "export", "--since", "2026-03-02", "--until", "2026-03-03")
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in lines] == [3, 4]
    glass, login = lines
    assert glass["kind"] == "access:break-glass:start" and glass["break_glass"] is True
    assert glass["patient_ids"] == [str(patient)]
    assert glass["detail_keys"] == ["note"]
    assert "Martin" not in out and "Lucie" not in out  # free text stays in carnet
    assert login["actor"]["username"] is None and login["actor"]["account_id"] == str(
        PATIENT_ACTOR.account_id
    )
    assert "lucie.martin" not in out
    assert glass["time"].startswith("2026-03-02T12:00:00") and glass["time"].endswith("+00:00")
    assert len(glass["hash"]) == 64 and glass["prev_hash"] != glass["hash"]

    target = tmp_path / "siem.jsonl"
    code, out = run_cli(
        runtime, monkeypatch, "export", "--since", "2026-01-01T00:00:00+01:00", "--output", str(target)
    )
    # 5 events, then each export's own audit event (written before its data leaves).
    assert code == 0 and "7 events written" in out
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["kind"] for e in exported[5:]] == [AuditKind.AUDIT_EVENTS_READ.value] * 2
    assert exported[6]["query"] == "siem-export" and exported[6]["detail_keys"] == [
        "since",
        "target",
        "until",
    ]
    first = json.loads(target.read_text().splitlines()[0])
    assert first["actor"]["username"] == DOCTOR.username and first["actor"]["roles"] == ["physician"]
    # Format 2: each event's lane and the seq it follows in that lane, for a SIEM to re-verify.
    assert first["format"] == "carnet-audit-siem/2" and first["lane"] == 1 and first["prev_seq"] is None

    for bad in (["--since", "yesterday"], ["--since", "2026-03-03", "--until", "2026-03-01"]):
        code, out = run_cli(runtime, monkeypatch, "export", *bad)
        assert code == 2 and "error" in out and "Traceback" not in out


def test_purge_keeps_the_legal_minimum_is_audited_and_verify_still_passes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, movable_clock: MovableClock
) -> None:
    now = dt.datetime.now(dt.UTC)
    movable_clock.set(now - dt.timedelta(days=365 * 8))
    append_events(runtime, 4, patients=[uuid.uuid4()])
    movable_clock.set(now - dt.timedelta(days=365 * 5))
    append_events(runtime, 3)
    movable_clock.set(now)
    assert runtime.checkpointer is not None
    runtime.checkpointer.checkpoint()

    # Younger than the minimum (6 years by default): refused, nothing changed.
    code, out = run_cli(
        runtime,
        monkeypatch,
        "purge",
        "--before",
        (now - dt.timedelta(days=365 * 4)).isoformat(),
        "--reason",
        "tidy",
    )
    assert code == 2 and "legal minimum of 6 years" in out
    code, out = run_cli(runtime, monkeypatch, "purge", "--before", "2001-01-01", "--reason", "")
    assert code == 2 and "stated reason" in out

    cutoff = (now - dt.timedelta(days=365 * 7)).date().isoformat()
    code, out = run_cli(
        runtime, monkeypatch, "purge", "--before", cutoff, "--reason", "retention schedule 2026"
    )
    assert code == 0, out
    assert "purged 4 events (through seq 4)" in out and "audited as seq 8" in out
    with runtime.engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq")).scalars().all()
        purge_event = conn.execute(sa.text("SELECT kind, detail FROM audit_events WHERE seq = 8")).one()
        indexed = conn.execute(sa.text("SELECT count(*) FROM audit_event_patients")).scalar()
    assert seqs == [5, 6, 7, 8] and indexed == 0
    assert purge_event.kind == AuditKind.AUDIT_PURGED.value
    assert json.loads(purge_event.detail)["reason"] == "retention schedule 2026"

    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
    assert "4 events (seq 5..8)" in out

    # Deleting beyond what the signed purge covers is still caught.
    sql(runtime, "DELETE FROM audit_events WHERE seq = 5")
    code, out = verify(runtime, monkeypatch)
    assert code == 1 and problems(out)[0] == ("unanchored-start", 6)


def test_a_purge_that_stopped_after_its_checkpoint_still_verifies(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carnet.audit.checkpoints import Checkpoint, CheckpointType

    append_events(runtime, 5)
    assert runtime.checkpointer is not None
    runtime.checkpointer.checkpoint()
    with runtime.engine.connect() as conn:
        anchor = conn.execute(sa.text("SELECT hash FROM audit_events WHERE seq = 3")).scalar_one()
    signed = Checkpoint(
        type=CheckpointType.PURGE,
        head_seq=3,
        head_hash=anchor,
        count=3,
        at=dt.datetime.now(dt.UTC),
        through_seq=3,
        anchor_hash=anchor,
        reason="crash test",
    )
    runtime.checkpointer.publish(signed)  # the process died before deleting anything
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
    sql(runtime, "DELETE FROM audit_events WHERE seq <= 3")  # and the purge completed later
    code, out = verify(runtime, monkeypatch)
    assert code == 0, out
