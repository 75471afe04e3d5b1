"""`carnet audit verify`: recompute the chain and hold it against the signed checkpoints.

On PostgreSQL it hashes the lines of `COPY ... TO STDOUT` as they arrive (the chain's canonical
encoding is that text format), so a million events verify in seconds.
The database is never trusted for hashing: every digest is recomputed here.
"""

from __future__ import annotations

import binascii
import hashlib
from binascii import unhexlify
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, text

from carnet.audit.chain import CHAINED_FIELDS, GENESIS_HASH, canonical_values
from carnet.audit.checkpoints import (
    CheckpointRejected,
    CheckpointStore,
    CheckpointType,
    CheckpointVerifier,
    SignedCheckpoint,
)

MAX_PROBLEMS = 100
BATCH = 10_000

_COLUMNS = ", ".join(CHAINED_FIELDS)
_PG_COLUMNS = (
    _COLUMNS.replace(
        "recorded_at",
        """to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""",
        1,
    )
    .replace("account_id", "account_id::text", 1)
    .replace("session_id", "session_id::text", 1)
)
_ACCOUNT = CHAINED_FIELDS.index("account_id")
_SESSION = CHAINED_FIELDS.index("session_id")
_RECORDED = CHAINED_FIELDS.index("recorded_at")
_N = len(CHAINED_FIELDS)


class ProblemKind(StrEnum):
    EDITED = "edited"  # an event's content no longer matches its hash
    BROKEN_LINK = "broken-link"  # an event does not follow the one before it
    MISSING = "missing"  # sequence numbers absent
    UNANCHORED_START = "unanchored-start"  # the oldest events are gone and no signed purge says why
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"  # the chain was rewritten since a checkpoint
    TRUNCATED = "truncated"  # events at the tail are gone
    INSERTED = "inserted"  # events beyond the chain head
    BAD_CHECKPOINT = "bad-checkpoint"  # a forged, altered or unreadable checkpoint
    NO_CHECKPOINTS = "no-checkpoints"  # nothing outside the database anchors the chain


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    message: str
    # The last checkpoint that still matched before this problem: the chain is sound up to it.
    since: SignedCheckpoint | None = None

    def describe(self) -> str:
        where = f"seq {self.seq}: " if self.seq is not None else ""
        since = f" (intact up to {self.since.describe()})" if self.since else " (since the first event)"
        if self.kind is ProblemKind.BAD_CHECKPOINT:
            since = ""
        return f"[{self.kind.value}] {where}{self.message}{since}"


@dataclass
class VerifyReport:
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint: SignedCheckpoint | None = None
    problems: list[Problem] = field(default_factory=list)
    # After a restore to a point in time: events the signed checkpoints knew of and the restored
    # database no longer holds, as (first seq, last seq, the checkpoint that pinned them).
    lost: list[tuple[int, int, SignedCheckpoint]] = field(default_factory=list)

    def lost_range(self) -> tuple[int, int] | None:
        if not self.lost:
            return None
        return min(first for first, _, _ in self.lost), max(last for _, last, _ in self.lost)

    @property
    def ok(self) -> bool:
        return not self.problems

    def tail_warning(self) -> str | None:
        """An unsigned tail is not tampering, but nothing outside the database vouches for it."""
        count = self.unanchored
        if not count or self.last_seq is None:
            return None
        first = self.last_seq - count + 1
        pinned = self.last_checkpoint.describe() if self.last_checkpoint else "no checkpoint"
        return (
            f"warning: unsigned tail: {count} event(s) (seq {first}..{self.last_seq}) after {pinned}"
            " are not pinned by a signed checkpoint yet"
        )

    @property
    def unanchored(self) -> int:
        """Events after the newest checkpoint: sound as a chain, not yet pinned outside."""
        if self.last_seq is None:
            return 0
        pinned = self.last_checkpoint.checkpoint.head_seq if self.last_checkpoint else 0
        return max(0, self.last_seq - max(pinned, (self.first_seq or 1) - 1))


def load_checkpoints(
    store: CheckpointStore, verifier: CheckpointVerifier
) -> tuple[list[SignedCheckpoint], list[Problem]]:
    good: list[SignedCheckpoint] = []
    bad: list[Problem] = []
    for position, line in store.read_all():
        try:
            good.append(verifier.parse(line, position))
        except CheckpointRejected as exc:
            bad.append(
                Problem(
                    ProblemKind.BAD_CHECKPOINT, None, f"checkpoint #{position} in {store.describe()}: {exc}"
                )
            )
    return good, bad


def verify(
    engine: Engine, *, store: CheckpointStore, verifier: CheckpointVerifier, restored: bool = False
) -> VerifyReport:
    """`restored`: the database was restored to a point in time on purpose, so checkpoints
    beyond its last event name the events the restore lost (reported, not a failure); every
    checkpoint up to that event must still match."""
    # Checkpoints first: each one names a head committed before it, so none can be newer than
    # the database state read afterwards unless the tail was truncated.
    checkpoints, problems = load_checkpoints(store, verifier)
    report = _Verifier(checkpoints, restored=restored).run(engine)
    report.problems[:0] = problems
    if not checkpoints and report.events and not store.exists():
        report.problems.append(
            Problem(
                ProblemKind.NO_CHECKPOINTS,
                None,
                f"no checkpoint store at {store.describe()}: nothing outside the database anchors the chain",
            )
        )
    return report


class _Verifier:
    def __init__(self, checkpoints: Sequence[SignedCheckpoint], *, restored: bool = False) -> None:
        self.restored = restored
        self.checkpoints = sorted(checkpoints, key=lambda c: (c.checkpoint.head_seq, c.position))
        self.at_seq: dict[int, list[SignedCheckpoint]] = {}
        self.anchors: dict[int, list[SignedCheckpoint]] = {}
        for cp in self.checkpoints:
            self.at_seq.setdefault(cp.checkpoint.head_seq, []).append(cp)
            if cp.checkpoint.type is CheckpointType.PURGE and cp.checkpoint.through_seq is not None:
                self.anchors.setdefault(cp.checkpoint.through_seq, []).append(cp)
        self.report = VerifyReport(checkpoints=len(self.checkpoints))
        self.since: SignedCheckpoint | None = None
        self.matched: set[int] = set()

    def problem(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(Problem(kind, seq, message, self.since))

    def run(self, engine: Engine) -> VerifyReport:
        with engine.connect() as conn:
            head = conn.execute(text("SELECT seq, hash FROM audit_chain_head WHERE id = 1")).first()
            head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            last_hash = self._walk(chain_lines(conn, head_seq))
            later = conn.execute(text("SELECT min(seq) FROM audit_events WHERE seq > :h"), {"h": head_seq})
            beyond = later.scalar()
            if beyond is not None:
                # An append may have committed meanwhile: only a head that does not cover it is wrong.
                now = conn.execute(text("SELECT seq FROM audit_chain_head WHERE id = 1")).scalar()
                if now is None or int(now) < int(beyond):
                    self.problem(
                        ProblemKind.INSERTED,
                        int(beyond),
                        "event beyond the chain head (inserted at the tail)",
                    )
            conn.rollback()
        self._finish(head_seq, head_hash, last_hash)
        return self.report

    def _walk(self, lines: Iterator[tuple[int, bytes, bytes, bytes]]) -> str | None:
        report = self.report
        prev_seq: int | None = None
        prev_hash = b""
        sha256 = hashlib.sha256
        at_seq = self.at_seq
        count = 0
        for seq, body, stored_prev, stored_hash in lines:
            count += 1
            if prev_seq is None:
                report.first_seq = seq
                self._check_start(seq, stored_prev.decode())
            else:
                if seq != prev_seq + 1:
                    self.problem(
                        ProblemKind.MISSING,
                        prev_seq + 1,
                        f"event {seq - 1} is missing (deleted)"
                        if seq - 1 == prev_seq + 1
                        else f"events {prev_seq + 1}..{seq - 1} are missing (deleted)",
                    )
                if stored_prev != prev_hash:
                    self.problem(
                        ProblemKind.BROKEN_LINK,
                        seq,
                        "does not follow the event before it (deleted, inserted or reordered events)",
                    )
            try:
                computed = sha256(unhexlify(stored_prev) + body).digest()
                intact = computed == unhexlify(stored_hash)
            except (binascii.Error, ValueError):
                computed, intact = b"", False
            if not intact:
                self.problem(ProblemKind.EDITED, seq, "content does not match its hash (edited or moved)")
            if seq in at_seq:
                self._check_checkpoints(seq, computed.hex())
            prev_seq, prev_hash = seq, stored_hash
        report.events = count
        report.last_seq = prev_seq
        return prev_hash.decode() if prev_seq is not None else None

    def _check_start(self, seq: int, stored_prev: str) -> None:
        if seq == 1:
            if stored_prev != GENESIS_HASH:
                self.problem(ProblemKind.BROKEN_LINK, seq, "the first event does not start the chain")
            return
        anchors = self.anchors.get(seq - 1, [])
        if not anchors:
            self.problem(
                ProblemKind.UNANCHORED_START,
                seq,
                f"events 1..{seq - 1} are gone and no signed purge checkpoint covers them",
            )
        elif all(a.checkpoint.anchor_hash != stored_prev for a in anchors):
            self.problem(ProblemKind.BROKEN_LINK, seq, "does not continue from the signed purge anchor")
        else:
            self.since = anchors[-1]

    def _check_checkpoints(self, seq: int, computed: str) -> None:
        for cp in self.at_seq[seq]:
            self.matched.add(id(cp))
            if cp.checkpoint.head_hash == computed:
                self.since = cp
            else:
                start = self.since.checkpoint.head_seq + 1 if self.since else 1
                self.problem(
                    ProblemKind.CHECKPOINT_MISMATCH,
                    seq,
                    f"the chain differs from {cp.describe()}: events {start}..{seq} were rewritten",
                )
        # A purge that has not run yet (or failed) leaves its anchor event in place: it must match.
        for cp in self.anchors.get(seq, []):
            if cp.checkpoint.anchor_hash != computed:
                self.problem(
                    ProblemKind.CHECKPOINT_MISMATCH, seq, f"differs from the anchor of {cp.describe()}"
                )

    def _finish(self, head_seq: int, head_hash: str, last_hash: str | None) -> None:
        report = self.report
        last = report.last_seq or 0
        first = report.first_seq or (last + 1)
        for cp in self.checkpoints:
            c = cp.checkpoint
            if c.head_seq > last and self.restored and c.type is CheckpointType.CHAIN:
                report.lost.append((last + 1, c.head_seq, cp))
            elif c.head_seq > last:
                self.problem(
                    ProblemKind.TRUNCATED,
                    last + 1,
                    f"{cp.describe()} covers up to seq {c.head_seq} but the database ends at seq {last}:"
                    f" events {last + 1}..{c.head_seq} were removed",
                )
            elif c.head_seq >= first and id(cp) not in self.matched:
                self.problem(
                    ProblemKind.CHECKPOINT_MISMATCH, c.head_seq, f"{cp.describe()} names a missing event"
                )
            if c.head_seq <= last and (
                report.last_checkpoint is None or c.head_seq >= report.last_checkpoint.checkpoint.head_seq
            ):
                report.last_checkpoint = cp
        if head_seq > last:
            self.problem(
                ProblemKind.TRUNCATED,
                last + 1,
                f"the chain head records seq {head_seq} but the last event is seq {last}:"
                f" events {last + 1}..{head_seq} were removed",
            )
        elif head_seq == last and last and head_hash != last_hash:
            self.problem(ProblemKind.TRUNCATED, last, "the chain head's hash does not match the last event")


def chain_lines(conn: Any, head_seq: int) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    """(seq, canonical bytes, prev_hash, hash) per event up to `head_seq`, in order.

    On PostgreSQL the canonical bytes are COPY's own output line, hashed as they arrive.
    """
    if conn.dialect.name != "postgresql":
        for values in plain_rows(conn, head_seq):
            yield values[0], canonical_values(values[:_N]), values[_N].encode(), values[_N + 1].encode()
        return
    raw = conn.connection.driver_connection
    sql = (
        f"COPY (SELECT {_PG_COLUMNS}, prev_hash, hash FROM audit_events"  # noqa: S608
        f" WHERE seq <= {int(head_seq)} ORDER BY seq) TO STDOUT"
    )
    with raw.cursor() as cur, cur.copy(sql) as copy:
        rest = b""
        for block in copy:
            data = bytes(block)
            if not rest and data[-1:] == b"\n" and data.count(b"\n") == 1:
                lines = [data[:-1]]  # libpq hands over one row per block: skip the splitting
            else:
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
            for line in lines:
                body, prev, digest = line.rsplit(b"\t", 2)
                yield int(body[: body.index(b"\t")]), body, prev, digest


def plain_rows(conn: Any, head_seq: int) -> Iterator[Sequence[Any]]:
    raw = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        sql = f"SELECT {_PG_COLUMNS}, prev_hash, hash FROM audit_events WHERE seq <= %s ORDER BY seq"  # noqa: S608
        with raw.cursor(name="carnet_audit_verify") as cur:
            cur.itersize = BATCH
            cur.execute(sql, (head_seq,))
            while batch := cur.fetchmany(BATCH):
                yield from batch
        return
    sql = f"SELECT {_COLUMNS}, prev_hash, hash FROM audit_events WHERE seq <= ? ORDER BY seq"  # noqa: S608
    cur = raw.cursor()
    try:
        cur.execute(sql, (head_seq,))
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                yield _sqlite_plain(row)
    finally:
        cur.close()


def _sqlite_plain(row: Sequence[Any]) -> list[Any]:
    """SQLite keeps datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) and uuids as 32 hex digits."""
    values = list(row)
    values[_RECORDED] = values[_RECORDED].replace(" ", "T", 1) + "+00:00"
    for index in (_ACCOUNT, _SESSION):
        h = values[index]
        if h is not None and len(h) == 32:
            values[index] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return values
