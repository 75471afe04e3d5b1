"""Signed checkpoints: written after commit every N events or T seconds, outside the database."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from carnet.audit.checkpoints import (
    CheckpointSigner,
    CheckpointVerifier,
    FileCheckpointStore,
    NatsCheckpointStore,
    public_path,
)
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.verify import verify
from carnet.kernel.errors import ConfigurationError
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.audit.helpers import DOCTOR, append_events

NATS_URL = os.environ.get("CARNET_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def make_runtime(sqlite_url: str, settings: Settings) -> Iterator[Callable[..., Runtime]]:
    built: list[Runtime] = []

    def make(**overrides: object) -> Runtime:
        runtime = build_runtime(settings.model_copy(update={"database_url": sqlite_url, **overrides}))
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()


def heads(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["checkpoint"]["head_seq"] for line in path.read_text().splitlines()]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_every_n_events_after_commit_never_inside_the_transaction(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(audit_checkpoint_every=5, audit_checkpoint_seconds=3600)
    path = runtime.settings.resolved_checkpoint_file
    with runtime.session_factory.begin() as session:
        for _ in range(7):
            runtime.audit.append(
                session, AuditRecord(kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=DOCTOR)
            )
        time.sleep(0.2)
        assert heads(path) == []  # nothing is signed while the transaction is open
    assert wait_for(lambda: heads(path) == [7])
    # A rolled-back transaction tells the checkpointer nothing.
    with pytest.raises(RuntimeError), runtime.session_factory.begin() as session:
        for _ in range(6):
            runtime.audit.append(
                session, AuditRecord(kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=DOCTOR)
            )
        raise RuntimeError("access failed")
    append_events(runtime, 2)
    time.sleep(0.3)
    assert heads(path) == [7]  # 2 new events < every
    append_events(runtime, 3)
    assert wait_for(lambda: heads(path) == [7, 12])


def test_every_t_seconds_and_on_close(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime(audit_checkpoint_every=1000, audit_checkpoint_seconds=0.2)
    path = runtime.settings.resolved_checkpoint_file
    append_events(runtime, 1)
    assert wait_for(lambda: heads(path) == [1])
    time.sleep(0.5)
    assert heads(path) == [1]  # no new event, no new checkpoint
    slow = make_runtime(audit_checkpoint_every=1000, audit_checkpoint_seconds=3600)
    append_events(slow, 2)
    slow.close()  # a clean shutdown pins what this worker wrote
    assert heads(path)[-1] == 3


def test_the_signing_key_is_private_and_production_needs_init_key(settings: Settings, tmp_path: Path) -> None:
    signer = CheckpointSigner.from_settings(settings)  # test mode: created on first use
    path = settings.resolved_signing_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CheckpointVerifier.load(public_path(path)).key_id == signer.key_id
    production = settings.model_copy(
        update={"env": Environment.PRODUCTION, "audit_signing_key_file": tmp_path / "absent.pem"}
    )
    with pytest.raises(ConfigurationError, match="carnet audit init-key"):
        CheckpointSigner.from_settings(production)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="readable by others"):
        CheckpointSigner.from_settings(settings.model_copy(update={"env": Environment.PRODUCTION}))


def test_checkpoints_in_a_nats_jetstream_stream(make_runtime: Callable[..., Runtime]) -> None:
    stream = f"CARNET_AUDIT_TEST_{uuid.uuid4().hex[:10]}"
    runtime = make_runtime(nats_url=NATS_URL, audit_nats_stream=stream)
    assert runtime.checkpointer is not None
    store = runtime.checkpointer.store
    assert isinstance(store, NatsCheckpointStore)
    try:
        append_events(runtime, 3)
        runtime.checkpointer.checkpoint()
        append_events(runtime, 2)
        runtime.checkpointer.checkpoint()
        runtime.checkpointer.checkpoint()  # same head: the stream keeps one copy
        stored = store.read_all()
        assert [json.loads(line)["checkpoint"]["head_seq"] for _, line in stored] == [3, 5]
        assert not runtime.settings.resolved_checkpoint_file.exists()
        report = verify(runtime.engine, store=store, verifier=runtime.checkpointer.signer.verifier())
        assert report.ok and report.last_checkpoint is not None
        assert report.last_checkpoint.checkpoint.head_seq == 5
        # The stream refuses to forget: deleting a checkpoint or purging the stream fails.
        assert asyncio.run(_try_to_erase(stream)) == (False, False)
        assert len(store.read_all()) == 2
    finally:
        asyncio.run(_drop(stream))


async def _try_to_erase(stream: str) -> tuple[bool, bool]:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        deleted = purged = False
        try:
            deleted = await js.delete_msg(stream, 1)
        except Exception:
            deleted = False
        try:
            purged = await js.purge_stream(stream)
        except Exception:
            purged = False
        return deleted, purged
    finally:
        await nc.close()


async def _drop(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def test_a_file_store_keeps_lines_whole_and_ordered(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path / "sub" / "cp.jsonl")
    assert not store.exists() and store.read_all() == []
    store.append(b'{"a":1}', dedupe_id="x")
    store.append(b'{"a":2}', dedupe_id="y")
    assert store.read_all() == [(1, b'{"a":1}'), (2, b'{"a":2}')]


def test_a_commit_below_the_signed_head_still_gets_signed(make_runtime: Callable[..., Runtime]) -> None:
    """With lanes, an event committed after a checkpoint can have a lower seq than the head that
    checkpoint signed (its lane's transaction took the seq first, another lane committed first):
    the checkpointer must still sign it, periodically and at shutdown."""
    runtime = make_runtime(audit_checkpoint_every=1000, audit_checkpoint_seconds=3600)
    checkpointer = runtime.checkpointer
    assert checkpointer is not None
    append_events(runtime, 3)
    checkpointer.checkpoint()
    path = runtime.settings.resolved_checkpoint_file
    assert heads(path) == [3]
    from carnet.audit.writer import SqlAuditWriter

    with runtime.session_factory.begin() as session:  # committed, the checkpointer not told
        SqlAuditWriter().append(
            session, AuditRecord(kind=AuditKind.LOGOUT, outcome=Outcome.SUCCESS, actor=DOCTOR)
        )
    checkpointer.note_committed(2)  # what a lane's late commit looks like to the checkpointer
    checkpointer.close()
    assert heads(path) == [3, 4]
    checkpointer.close()  # nothing new: no duplicate
    assert heads(path) == [3, 4]
