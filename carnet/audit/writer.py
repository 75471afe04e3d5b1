"""Appends audit events to the hash chain in the caller's transaction.

The chain is split into lanes (carnet.audit.chain.LANES; audit_chain_head rows 1..LANES), each
its own hash chain. On PostgreSQL a transaction takes one lane's head row lock with its first
append (migration 0012_auditlanes: the lane it already holds, else the lowest free one) and keeps
it until commit, and its events take their global seq from a sequence after that lock: two
transactions never read the same lane head, so no lane forks, and within a lane seq follows
commit order. A rolled-back transaction leaves a gap in the global seq (not in a lane: its head
update rolls back with it). SQLite keeps one lane, its seq from the head row, gap-free.

After the transaction commits, the writer tells its `on_commit` callback (the checkpointer) the
last sequence number: signing checkpoints never runs inside the audited transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Table, event, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from carnet.audit.chain import CHAINED_FIELDS, GENESIS_HASH, canonical_values, link_values
from carnet.audit.interfaces import AuditRecord
from carnet.audit.models import AuditChainHead, AuditEvent, AuditEventPatient
from carnet.kernel import clock

log = logging.getLogger(__name__)
SQLITE_LANE = 1  # SQLite serialises writers: one lane
EVENTS = cast(Table, AuditEvent.__table__)
EVENT_PATIENTS = cast(Table, AuditEventPatient.__table__)
COPY_THRESHOLD = 50  # rows per append_many from which PostgreSQL gets a COPY instead of INSERTs
_PENDING = "carnet.audit.committed"  # session.info key: (callback, highest seq appended)


class SqlAuditWriter:
    """The audit trail in the application's own database (see carnet.audit.interfaces)."""

    def __init__(
        self,
        *,
        on_commit: Callable[[int], None] | None = None,
        observer: Callable[[Sequence[AuditRecord], float], None] | None = None,
    ) -> None:
        self.on_commit = on_commit
        # Told what each call appended and how long it took (metrics, traces): kinds, not content.
        self.observer = observer

    def append(self, session: Session, record: AuditRecord) -> int:
        return self.append_many(session, [record])[0]

    def append_many(self, session: Session, records: Sequence[AuditRecord]) -> list[int]:
        """Append several events under one head update (imports, bulk jobs, benchmarks)."""
        if not records:
            return []
        if self.observer is None:
            return self._append_many(session, records)
        start = time.perf_counter()
        seqs = self._append_many(session, records)
        self.observer(records, time.perf_counter() - start)
        return seqs

    def appended(self, session: Session, record: AuditRecord, seq: int, seconds: float) -> None:
        """`record` was appended as `seq` by `append_one_statement` in `session`'s transaction:
        what `append` does after its statement (the checkpoint callback, the observer)."""
        if self.on_commit is not None:
            session.info[_PENDING] = (self.on_commit, seq)
        if self.observer is not None:
            self.observer([record], seconds)

    def _append_many(self, session: Session, records: Sequence[AuditRecord]) -> list[int]:
        connection = session.connection()
        if connection.dialect.name == "postgresql" and len(records) == 1:
            seq = _append_one_postgres(connection, records[0])
            if self.on_commit is not None:
                session.info[_PENDING] = (self.on_commit, seq)
            return [seq]
        if connection.dialect.name == "postgresql":
            lane, prev_seq, prev_hash, seqs = _take_lane(connection, len(records))
        else:
            last_seq, prev_hash = self._advance_head(session, len(records))
            lane, seqs = SQLITE_LANE, list(range(last_seq - len(records) + 1, last_seq + 1))
            prev_seq = seqs[0] - 1
        recorded_at = clock.now().astimezone(dt.UTC)
        stamp = _utc_micro(recorded_at)
        rows: list[dict[str, Any]] = []
        patient_rows: list[dict[str, Any]] = []
        for seq, record in zip(seqs, records, strict=True):
            fields = _fields(seq, stamp, record)
            digest = link_values(prev_hash, [fields[name] for name in CHAINED_FIELDS])
            row = dict(fields)
            row["account_id"] = record.actor.account_id
            row["session_id"] = record.actor.session_id
            row["recorded_at"] = recorded_at
            row["prev_hash"] = prev_hash
            row["hash"] = digest
            row["lane"] = lane
            row["prev_seq"] = prev_seq or None
            rows.append(row)
            patient_rows.extend({"seq": seq, "patient_id": p} for p in sorted(set(record.patient_ids)))
            prev_hash, prev_seq = digest, seq
        last_seq = seqs[-1]
        if connection.dialect.name == "postgresql":
            # The lane's head row stays locked until commit: one round trip for the rest.
            _write_postgres(connection, rows, patient_rows, lane, last_seq, prev_hash)
        else:
            # Core, not ORM: the ORM would split a batch into groups by which columns are NULL.
            connection.execute(insert(EVENTS), rows)
            if patient_rows:
                connection.execute(insert(EVENT_PATIENTS), patient_rows)
            session.execute(
                update(AuditChainHead).where(AuditChainHead.id == SQLITE_LANE).values(hash=prev_hash)
            )
        if self.on_commit is not None:
            session.info[_PENDING] = (self.on_commit, last_seq)
        return seqs

    def _advance_head(self, session: Session, count: int) -> tuple[int, str]:
        """SQLite: the one lane's head advanced by `count` (the database write lock orders it)."""
        for _ in range(3):
            result = session.execute(
                update(AuditChainHead)
                .where(AuditChainHead.id == SQLITE_LANE)
                .values(seq=AuditChainHead.seq + count)
                .returning(AuditChainHead.seq, AuditChainHead.hash)
            ).first()
            if result is not None:
                return int(result[0]), str(result[1])
            try:
                with session.begin_nested():
                    session.add(AuditChainHead(id=SQLITE_LANE, seq=0, hash=GENESIS_HASH))
            except IntegrityError:
                continue  # another worker created it first
        raise RuntimeError("audit chain head could not be initialised")


# One event, one statement: the database picks the lane and links it (migration 0012_auditlanes,
# carnet_audit_link) and inserts it with its patients. The lane's head row is locked from here to
# the commit, with no round trip in between, so concurrent workers queue for the time of a
# commit, not of Python work, and only when every lane is taken.
# (Table and column names are constants: no input reaches the SQL text.)
_EVENT_COLUMNS = ("recorded_at", *[name for name in CHAINED_FIELDS if name not in ("seq", "recorded_at")])
_CASTS = {"recorded_at": "::timestamptz", "account_id": "::uuid", "session_id": "::uuid"}
_PLACEHOLDERS = ", ".join(f"%({name})s{_CASTS.get(name, '')}" for name in _EVENT_COLUMNS)
_APPEND_ONE = (
    "WITH link AS (SELECT seq, prev_hash, hash, lane, prev_seq FROM carnet_audit_link(%(rest)s)), "  # noqa: S608
    f"event AS (INSERT INTO {EVENTS.name} (seq, {', '.join(_EVENT_COLUMNS)},"
    " prev_hash, hash, lane, prev_seq) "
    f"SELECT link.seq, {_PLACEHOLDERS}, link.prev_hash, link.hash, link.lane, link.prev_seq FROM link"
    " RETURNING seq), "
    f"patients AS (INSERT INTO {EVENT_PATIENTS.name} (seq, patient_id) "
    "SELECT event.seq, p FROM event, unnest(%(patients)s::uuid[]) AS p) "
    "SELECT seq FROM event"
)


def append_one_statement(record: AuditRecord) -> tuple[str, dict[str, Any]]:
    """The one statement appending `record` on PostgreSQL, and its parameters; it answers the
    event's sequence number. (The gate's fast read sends it in its closing pipeline; it must
    then tell the writer with `SqlAuditWriter.appended`.)"""
    fields = _fields(0, _utc_micro(clock.now()), record)
    # Everything the hash covers after the sequence number, which only the database knows yet.
    values = [fields[name] for name in _AFTER_SEQ]
    # Every value of `_fields` but seq is text or None: `canonical_values`' bytes without its
    # per-value type checks when nothing needs escaping (the usual case), else its own.
    try:
        escaped = _ESCAPED.search("".join([v for v in values if v is not None])) is not None
    except TypeError:  # a value not text after all: canonical_values writes it
        escaped = True
    if escaped:
        rest = b"\t" + canonical_values(values)
    else:
        rest = ("\t" + "\t".join(["\\N" if v is None else v for v in values])).encode()
    params: dict[str, Any] = {name: fields[name] for name in _EVENT_COLUMNS}
    params["rest"] = rest
    params["patients"] = sorted(set(record.patient_ids))
    return _APPEND_ONE, params


_AFTER_SEQ = CHAINED_FIELDS[1:]
# The characters `canonical_values` escapes (carnet.audit.chain: PostgreSQL's COPY text format).
_ESCAPED = re.compile("[\\\\\b\f\n\r\t\v]")


def _append_one_postgres(connection: Connection, record: AuditRecord) -> int:
    _sql, params = append_one_statement(record)
    raw: Any = connection.connection.driver_connection
    try:
        with raw.cursor() as cursor:
            cursor.execute(_APPEND_ONE, params)
            row = cursor.fetchone()
    except psycopg.Error as exc:
        raise DBAPIError.instance(_APPEND_ONE, None, exc, psycopg.Error) from exc
    return int(row[0])


def _take_lane(connection: Connection, count: int) -> tuple[int, int, str, list[int]]:
    """PostgreSQL: lock this transaction's lane (migration 0012_auditlanes) and take `count` new
    sequence numbers: (lane, the lane's last seq or 0, its last hash, the new seqs in order)."""
    raw: Any = connection.connection.driver_connection
    try:
        with raw.cursor() as cursor:
            cursor.execute(_TAKE_LANE, (count,))
            row = cursor.fetchone()
    except psycopg.Error as exc:
        raise DBAPIError.instance(_TAKE_LANE, None, exc, psycopg.Error) from exc
    return int(row[0]), int(row[1]), str(row[2]), [int(s) for s in row[3]]


_TAKE_LANE = "SELECT lane, prev_seq, prev_hash, seqs FROM carnet_audit_lane(%s)"
_UPDATE_LANE = "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE id = %s"


def _write_postgres(
    connection: Connection,
    rows: list[dict[str, Any]],
    patient_rows: list[dict[str, Any]],
    lane: int,
    head_seq: int,
    head_hash: str,
) -> None:
    raw: Any = connection.connection.driver_connection
    if len(rows) >= COPY_THRESHOLD:
        _copy(connection, EVENTS, rows)
        _copy(connection, EVENT_PATIENTS, patient_rows)
        with raw.cursor() as cursor:
            cursor.execute(_UPDATE_LANE, (head_seq, head_hash, lane))
        return
    names = list(rows[0])
    insert_events = (
        f"INSERT INTO {EVENTS.name} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"  # noqa: S608
    )
    # psycopg's pipeline mode sends all three statements before reading any answer.
    try:
        with raw.pipeline(), raw.cursor() as cursor:
            cursor.executemany(insert_events, [[row[n] for n in names] for row in rows])
            if patient_rows:
                cursor.executemany(
                    f"INSERT INTO {EVENT_PATIENTS.name} (seq, patient_id) VALUES (%s, %s)",  # noqa: S608
                    [(p["seq"], p["patient_id"]) for p in patient_rows],
                )
            cursor.execute(_UPDATE_LANE, (head_seq, head_hash, lane))
    except psycopg.Error as exc:
        # Callers see the same SQLAlchemy errors as from any other statement.
        raise DBAPIError.instance(insert_events, None, exc, psycopg.Error) from exc


def _copy(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """COPY FROM STDIN in the caller's transaction: a large batch in one stream."""
    if not rows:
        return
    names = list(rows[0])
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[n] for n in names])


def _fields(seq: int, recorded_at: str, record: AuditRecord) -> dict[str, Any]:
    """The event's columns, every one text or None but `seq`. (An enum member's `_value_` is
    its `.value` without the property's two calls; the JSON texts are `json.dumps`' own.)"""
    actor = record.actor
    roles = _ROLES_TEXT.get(actor.roles)
    if roles is None:
        roles = ",".join(sorted(r.value for r in actor.roles))
        if len(_ROLES_TEXT) < 1024:
            _ROLES_TEXT[actor.roles] = roles
    detail = record.detail
    return {
        "seq": seq,
        "recorded_at": recorded_at,
        "kind": record.kind._value_,
        "outcome": record.outcome._value_,
        "actor_ref": actor.actor_ref,
        "actor_kind": actor.kind._value_,
        "account_id": str(actor.account_id) if actor.account_id else None,
        "username": actor.username,
        "roles": roles,
        "session_id": str(actor.session_id) if actor.session_id else None,
        "client_id": actor.client_id,
        "address": actor.address,
        "user_agent": (actor.user_agent or "")[:300] or None,
        "purpose_of_use": actor.purpose_of_use._value_,
        "resource_type": record.resource_type,
        "resource_ids": _json_texts(record.resource_ids),
        "patient_ids": _json_texts(sorted({str(p) for p in record.patient_ids})),
        "query": (record.query or "")[:500] or None,
        "policy_reason": (record.policy_reason or "")[:500] or None,
        "break_glass_reason": (record.break_glass_reason or "")[:1000] or None,
        "detail": json.dumps(dict(sorted(detail.items())), ensure_ascii=False) if detail else "{}",
    }


# The roles' text of each set of roles met (a handful).
_ROLES_TEXT: dict[frozenset[Any], str] = {}
# Text that `json.dumps` (ensure_ascii) writes as it is between quotes: printable ASCII but the
# quote and the backslash.
_PLAIN_JSON = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def _json_texts(values: Sequence[str]) -> str:
    """`json.dumps(list(values))` of texts (ids): the same text, joined when none needs escaping."""
    if not values:
        return "[]"
    try:
        plain = _PLAIN_JSON.fullmatch("".join(values)) is not None
    except TypeError:  # not only texts
        plain = False
    return '["' + '", "'.join(values) + '"]' if plain else json.dumps(list(values))


@event.listens_for(Session, "after_commit")
def _tell_checkpointer(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending is not None:
        callback, seq = pending
        try:
            callback(seq)
        except Exception as exc:
            # The transaction is committed: a late checkpoint must not turn it into an error.
            log.error("audit checkpoint notification failed (%s)", type(exc).__name__)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _utc_micro(moment: dt.datetime) -> str:
    """Microsecond UTC ISO text: what both databases store and give back unchanged."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def last_event(session: Session) -> AuditEvent | None:
    return session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
