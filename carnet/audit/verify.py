"""`carnet audit verify`: recompute the chain, lane by lane, and hold it against the signed
checkpoints.

The chain is split into lanes (carnet.audit.chain.LANES), each its own hash chain; events are
read once in global seq order, keeping the previous hash of each lane, in one snapshot with the
lane heads (REPEATABLE READ on PostgreSQL), so appends committing meanwhile cause no false alarm.

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
class LaneSummary:
    """One lane as verify walked it: its events (up to its head), first and last seq, its head."""

    lane: int
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int = 0


@dataclass(frozen=True)
class Lost:
    """After a restore: events of `lane` after `after_seq` through `through_seq` that `checkpoint`
    pinned and the restored database no longer holds (seqs of other lanes fall between)."""

    lane: int
    after_seq: int
    through_seq: int
    checkpoint: SignedCheckpoint


@dataclass
class VerifyReport:
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint: SignedCheckpoint | None = None
    problems: list[Problem] = field(default_factory=list)
    # After a restore to a point in time: per lane, events the signed checkpoints knew of and the
    # restored database no longer holds.
    lost: list[Lost] = field(default_factory=list)
    lanes: dict[int, LaneSummary] = field(default_factory=dict)
    # Events after the newest checkpoint's pin of their lane: sound as a chain, not yet pinned
    # outside; and the lowest seq among them.
    unanchored: int = 0
    unanchored_first: int | None = None

    def lost_range(self) -> tuple[int, int] | None:
        """The seqs between which the restore lost events (other lanes' events fall between)."""
        if not self.lost:
            return None
        return min(lost.after_seq for lost in self.lost) + 1, max(lost.through_seq for lost in self.lost)

    @property
    def ok(self) -> bool:
        return not self.problems

    def tail_warning(self) -> str | None:
        """An unsigned tail is not tampering, but nothing outside the database vouches for it."""
        count = self.unanchored
        if not count or self.last_seq is None:
            return None
        pinned = self.last_checkpoint.describe() if self.last_checkpoint else "no checkpoint"
        return (
            f"warning: unsigned tail: {count} event(s) (seq {self.unanchored_first}..{self.last_seq})"
            f" after {pinned} are not pinned by a signed checkpoint yet"
        )


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
    beyond a lane's last event name the events the restore lost (reported, not a failure); every
    checkpoint up to that event must still match."""
    # Checkpoints first: each one names heads committed before it, so none can be newer than
    # the database state read afterwards unless a lane was truncated.
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
    """One pass over every event in seq order, keeping the previous hash of each lane.

    A checkpoint pins each lane at (seq, hash); it matches when every pin matches the event at
    that seq, in that lane. A purge checkpoint's pins are the anchors the lanes continue from."""

    def __init__(self, checkpoints: Sequence[SignedCheckpoint], *, restored: bool = False) -> None:
        self.restored = restored
        self.checkpoints = sorted(checkpoints, key=lambda c: (c.checkpoint.head_seq, c.position))
        # seq -> [(checkpoint, lane, hash)]: the pins to check when the walk reaches that seq.
        self.at_seq: dict[int, list[tuple[SignedCheckpoint, int, str]]] = {}
        # (lane, anchor hash) -> purge checkpoints a lane may continue from.
        self.anchors: dict[tuple[int, str], list[SignedCheckpoint]] = {}
        # lane -> its newest signed purge anchor (seq, hash): a lane may end there, its events gone.
        self.purged: dict[int, tuple[int, str]] = {}
        self.pins_left: dict[int, int] = {}
        for cp in self.checkpoints:
            pins = cp.checkpoint.pins()
            self.pins_left[id(cp)] = len(pins)
            for lane, seq, digest in pins:
                self.at_seq.setdefault(seq, []).append((cp, lane, digest))
                if cp.checkpoint.type is CheckpointType.PURGE:
                    self.anchors.setdefault((lane, digest), []).append(cp)
                    if seq > self.purged.get(lane, (0, ""))[0]:
                        self.purged[lane] = (seq, digest)
        self.report = VerifyReport(checkpoints=len(self.checkpoints))
        self.since: SignedCheckpoint | None = None
        self.matched: set[tuple[int, int]] = set()  # (id(checkpoint), lane)
        self.failed: set[int] = set()  # id(checkpoint) of those that did not match
        # Per (checkpoint, lane) pin reached: the lane's event count there, and the next seq in it.
        self.count_at: dict[tuple[int, int], int] = {}
        self.next_after: dict[tuple[int, int], int] = {}
        self.waiting: dict[int, list[tuple[int, int]]] = {}

    def problem(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(Problem(kind, seq, message, self.since))

    def run(self, engine: Engine) -> VerifyReport:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot for the heads and the events: every lane's committed events are
                # then exactly the prefix its head names, whatever commits meanwhile.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            heads = _heads(conn)
            for lane, (seq, _) in heads.items():
                self.report.lanes[lane] = LaneSummary(lane, head_seq=seq)
            last_hashes, beyond = self._walk(chain_lines(conn), heads)
            if beyond:
                # SQLite has no snapshot across statements: an append may have committed since the
                # heads were read. Only an event its lane's head does not cover now is inserted.
                now = _heads(conn)
                for lane, seq in sorted(beyond.items(), key=lambda item: item[1]):
                    if now.get(lane, (0, ""))[0] < seq:
                        self.problem(
                            ProblemKind.INSERTED,
                            seq,
                            f"event beyond the head of lane {lane} (inserted at the tail)",
                        )
            conn.rollback()
        self._finish(heads, last_hashes)
        return self.report

    def _walk(
        self, lines: Iterator[Line], heads: dict[int, tuple[int, str]]
    ) -> tuple[dict[int, bytes], dict[int, int]]:
        report = self.report
        sha256 = hashlib.sha256
        at_seq = self.at_seq
        waiting = self.waiting
        head_of = {lane: seq for lane, (seq, _) in heads.items()}
        last_seq: dict[int, int] = {}
        last_hash: dict[int, bytes] = {}
        counts: dict[int, int] = {}
        beyond: dict[int, int] = {}  # lane -> first seq beyond its head
        count = 0
        for seq, lane, prev_seq, body, stored_prev, stored_hash in lines:
            if seq > head_of.get(lane, 0):
                beyond.setdefault(lane, seq)
                continue
            count += 1
            if report.first_seq is None:
                report.first_seq = seq
            previous = last_hash.get(lane)
            if previous is None:
                self._check_start(lane, seq, prev_seq, stored_prev.decode())
            else:
                if prev_seq is not None:
                    if prev_seq > last_seq[lane]:
                        self._missing(lane, last_seq[lane], prev_seq + 1)
                elif seq != last_seq[lane] + 1:
                    # Events from before lanes carry no prev_seq: their seqs were gap-free.
                    self._missing(lane, last_seq[lane], seq)
                if stored_prev != previous:
                    self.problem(
                        ProblemKind.BROKEN_LINK,
                        seq,
                        f"does not follow the event before it in lane {lane}"
                        " (deleted, inserted, reordered or moved events)",
                    )
            try:
                computed = sha256(unhexlify(stored_prev) + body).digest()
                intact = computed == unhexlify(stored_hash)
            except (binascii.Error, ValueError):
                computed, intact = b"", False
            if not intact:
                self.problem(ProblemKind.EDITED, seq, "content does not match its hash (edited or moved)")
            counts[lane] = counts.get(lane, 0) + 1
            if waiting and lane in waiting:
                for key in waiting.pop(lane):
                    self.next_after[key] = seq
            if seq in at_seq:
                self._check_pins(seq, lane, computed.hex(), counts[lane])
            last_seq[lane] = seq
            last_hash[lane] = stored_hash
        report.events = count
        report.last_seq = max(last_seq.values(), default=None)
        for lane, n in counts.items():
            summary = report.lanes.setdefault(lane, LaneSummary(lane))
            summary.events = n
            summary.last_seq = last_seq[lane]
        self.counts = counts
        return last_hash, beyond

    def _missing(self, lane: int, after: int, before: int) -> None:
        self.problem(
            ProblemKind.MISSING,
            after + 1,
            f"lane {lane}: the events between seq {after} and seq {before} are missing (deleted)",
        )

    def _check_start(self, lane: int, seq: int, prev_seq: int | None, stored_prev: str) -> None:
        self.report.lanes.setdefault(lane, LaneSummary(lane)).first_seq = seq
        if stored_prev == GENESIS_HASH:
            return  # the lane's first event
        anchors = self.anchors.get((lane, stored_prev), [])
        if anchors:
            self.since = anchors[-1]
            return
        # A purge anchor at the seq this event says it follows, with another hash: a broken link.
        after = prev_seq if prev_seq is not None else seq - 1
        anchored_there = any(
            cp.checkpoint.type is CheckpointType.PURGE
            and (lane, after) in {(p[0], p[1]) for p in cp.checkpoint.pins()}
            for cp in self.checkpoints
        )
        if anchored_there:
            self.problem(
                ProblemKind.BROKEN_LINK, seq, f"lane {lane} does not continue from the signed purge anchor"
            )
        else:
            self.problem(
                ProblemKind.UNANCHORED_START,
                seq,
                f"the events of lane {lane} before seq {seq} are gone and no signed purge checkpoint"
                " covers them",
            )

    def _check_pins(self, seq: int, lane: int, computed: str, lane_count: int) -> None:
        for cp, pinned_lane, digest in self.at_seq[seq]:
            key = (id(cp), pinned_lane)
            if cp.checkpoint.type is CheckpointType.PURGE:
                # A purge that has not run yet (or failed) leaves its anchor in place: it must match.
                self.matched.add(key)
                if pinned_lane != lane or digest != computed:
                    self.problem(
                        ProblemKind.CHECKPOINT_MISMATCH,
                        seq,
                        f"differs from the anchor of lane {pinned_lane} in {cp.describe()}",
                    )
                continue
            self.matched.add(key)
            if pinned_lane == lane and digest == computed:
                self.count_at[key] = lane_count
                self.waiting.setdefault(lane, []).append(key)
                self.pins_left[id(cp)] -= 1
                newest = self.since is None or cp.checkpoint.head_seq >= self.since.checkpoint.head_seq
                if not self.pins_left[id(cp)] and id(cp) not in self.failed and newest:
                    self.since = cp
                continue
            self.failed.add(id(cp))
            start = self.since.checkpoint.head_seq + 1 if self.since else 1
            moved = "" if pinned_lane == lane else f" (the event is now in lane {lane})"
            self.problem(
                ProblemKind.CHECKPOINT_MISMATCH,
                seq,
                f"the chain differs from {cp.describe()} in lane {pinned_lane}{moved}:"
                f" events {start}..{seq} were rewritten",
            )

    def _finish(self, heads: dict[int, tuple[int, str]], last_hashes: dict[int, bytes]) -> None:
        report = self.report
        lanes = report.lanes

        def last_in(lane: int) -> int:
            """The lane's last event, or its signed purge anchor when the purge took them all."""
            summary = lanes.get(lane)
            last = summary.last_seq or 0 if summary else 0
            return max(last, self.purged.get(lane, (0, ""))[0])

        def first_in(lane: int) -> int | None:
            summary = lanes.get(lane)
            return summary.first_seq if summary else None

        for cp in self.checkpoints:
            c = cp.checkpoint
            complete = True
            for lane, seq, _ in c.pins():
                last = last_in(lane)
                first = first_in(lane)
                if c.type is CheckpointType.PURGE:
                    continue  # an anchor still present was held against its event in the walk
                if seq > last:
                    complete = False
                    if self.restored:
                        report.lost.append(Lost(lane, last, seq, cp))
                    else:
                        self.problem(
                            ProblemKind.TRUNCATED,
                            last + 1,
                            f"{cp.describe()} covers lane {lane} up to seq {seq} but the lane ends at seq"
                            f" {last}: its events after seq {last} through seq {seq} were removed",
                        )
                elif first is not None and seq >= first and (id(cp), lane) not in self.matched:
                    self.problem(
                        ProblemKind.CHECKPOINT_MISMATCH,
                        seq,
                        f"{cp.describe()} names a missing event in lane {lane}",
                    )
            if (
                c.type is CheckpointType.CHAIN
                and complete
                and (
                    report.last_checkpoint is None or c.head_seq >= report.last_checkpoint.checkpoint.head_seq
                )
            ):
                report.last_checkpoint = cp
        for lane, (head_seq, head_hash) in sorted(heads.items()):
            last = last_in(lane)
            if head_seq > last:
                self.problem(
                    ProblemKind.TRUNCATED,
                    last + 1,
                    f"the head of lane {lane} records seq {head_seq} but its last event is seq {last}:"
                    f" its events after seq {last} through seq {head_seq} were removed",
                )
            elif head_seq < self.purged.get(lane, (0, ""))[0]:
                self.problem(
                    ProblemKind.TRUNCATED,
                    head_seq + 1,
                    f"the head of lane {lane} is behind its signed purge anchor (seq {self.purged[lane][0]})",
                )
            elif head_seq == last and last and lane not in last_hashes:
                if (head_seq, head_hash) != self.purged.get(lane):
                    self.problem(
                        ProblemKind.TRUNCATED, last, f"the head of lane {lane} is not its signed purge anchor"
                    )
            elif head_seq == last and last and head_hash.encode() != last_hashes.get(lane):
                self.problem(
                    ProblemKind.TRUNCATED,
                    last,
                    f"the head of lane {lane}'s hash does not match its last event",
                )
        self._unanchored()

    def _unanchored(self) -> None:
        report = self.report
        cp = report.last_checkpoint
        total = 0
        first: int | None = None
        for lane, n in self.counts.items():
            key = (id(cp), lane)
            signed = self.count_at.get(key, 0) if cp is not None else 0
            if n > signed:
                total += n - signed
                start = self.next_after.get(key) if signed else report.lanes[lane].first_seq
                if start is not None and (first is None or start < first):
                    first = start
        report.unanchored = total
        report.unanchored_first = first


def _heads(conn: Any) -> dict[int, tuple[int, str]]:
    rows = conn.execute(text("SELECT id, seq, hash FROM audit_chain_head ORDER BY id")).all()
    return {int(r[0]): (int(r[1]), str(r[2])) for r in rows}


Line = tuple[int, int, int | None, bytes, bytes, bytes]


def chain_lines(conn: Any, head_seq: int | None = None) -> Iterator[Line]:
    """(seq, lane, prev_seq, canonical bytes, prev_hash, hash) per event, in seq order (up to
    `head_seq` when given).

    On PostgreSQL the canonical bytes are COPY's own output line, hashed as they arrive.
    """
    if conn.dialect.name != "postgresql":
        for values in plain_rows(conn, head_seq):
            yield (
                values[0],
                int(values[_N + 2]),
                None if values[_N + 3] is None else int(values[_N + 3]),
                canonical_values(values[:_N]),
                values[_N].encode(),
                values[_N + 1].encode(),
            )
        return
    raw = conn.connection.driver_connection
    where = "" if head_seq is None else f" WHERE seq <= {int(head_seq)}"
    sql = (
        f"COPY (SELECT {_PG_COLUMNS}, prev_hash, hash, lane, prev_seq FROM audit_events"  # noqa: S608
        f"{where} ORDER BY seq) TO STDOUT"
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
                body, prev, digest, lane, prev_seq = line.rsplit(b"\t", 4)
                yield (
                    int(body[: body.index(b"\t")]),
                    int(lane),
                    None if prev_seq == b"\\N" else int(prev_seq),
                    body,
                    prev,
                    digest,
                )


def plain_rows(conn: Any, head_seq: int | None = None) -> Iterator[Sequence[Any]]:
    """Each event's chained fields as plain values, then prev_hash, hash, lane and prev_seq."""
    raw = conn.connection.driver_connection
    limit = 2**62 if head_seq is None else int(head_seq)
    if conn.dialect.name == "postgresql":
        sql = (
            f"SELECT {_PG_COLUMNS}, prev_hash, hash, lane, prev_seq FROM audit_events"  # noqa: S608
            " WHERE seq <= %s ORDER BY seq"
        )
        with raw.cursor(name="carnet_audit_verify") as cur:
            cur.itersize = BATCH
            cur.execute(sql, (limit,))
            while batch := cur.fetchmany(BATCH):
                yield from batch
        return
    sql = f"SELECT {_COLUMNS}, prev_hash, hash, lane, prev_seq FROM audit_events WHERE seq <= ? ORDER BY seq"  # noqa: S608
    cur = raw.cursor()
    try:
        cur.execute(sql, (limit,))
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
