"""The gate's fast read: the kernel's own steps in two round trips on PostgreSQL.

A variant of `GateCore._run` (carnet/phi/kernel.py), not a way around it. It runs the same
steps with the same code — the access context judged by `carnet.access.context.from_rows`, the
facility scope, the operation's own body (`carnet.patients.operations.read`), the policy
decision, redaction and decryption, the exposure ledger and its detection rules, the audit
append, the commit — and fails through the kernel's `_fail`, so a refusal or an error is
audited and answered exactly as on the one path. What differs is only how the statements reach
PostgreSQL:

1. one pipeline (one network round trip) of prepared statements, the kernel's own Core
   statements compiled once: the facility scope (`set_config`, computed from the account's
   active grants, then `SET LOCAL ROLE carnet_app`: row-level security holds for what
   follows), the account and its grants, the actor's containment state, the patient row and
   the actor's relationships to that patient;
2. the decision, redaction and decryption in Python, and detection (at most one Redis round
   trip: carnet.detection);
3. one pipeline with the exposure rows, the audit append and the COMMIT.

Each pipeline is one round trip of carnet.db.roundtrip: psycopg's libpq layer, statements
prepared once per connection, BEGIN in the first, rows in binary loaded by psycopg's C
Transformer (a cursor and psycopg's pipeline machinery per statement cost a quarter of the read).

It declines (and `_run` runs instead, having done nothing yet) on SQLite, for anything but a
staff session, for a ledger or audit writer it does not know, and when the scope it set is not
the one the kernel would have set (a grant changed between its two reads: the kernel's path
answers that case as always). tests/phi/test_fastpath.py proves the two paths decide, redact,
audit and count identically.

`session_read` goes one step further for a read by a session cookie (the FHIR Patient read):
the session's own lookup (`carnet.identity.authenticate.SESSION_CONTEXT`, which also holds the
account's grants and, joined, its containment state) is the first statement of the first
pipeline, and the kernel's statements after it name the account by the token's digest; the
session is judged by `Authenticator.quiet_resolve` (resolve's own decision, which answers None
wherever resolve would refuse or write). So a read is one pool checkout, one transaction and two
round trips in all, three statements then three. Any case it does not take is left, before
anything was done, to resolving the session first and reading as above
(tests/phi/test_fastpath_session.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Connection,
    Dialect,
    String,
    Table,
    Uuid,
    bindparam,
    func,
    literal,
    null,
    select,
    true,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

from carnet.access.actor import Actor, ActorKind
from carnet.access.context import ACCOUNT_AND_GRANTS, from_rows
from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.access.scope import APP_ROLE
from carnet.audit.interfaces import Outcome
from carnet.audit.writer import SqlAuditWriter, append_one_statement
from carnet.db import roundtrip
from carnet.db.base import UtcDateTime, detached
from carnet.detection.administration import WATCHED, WatchedAuditWriter
from carnet.detection.ledger import ACTOR_STATE, INSERT_EVENT, INSERT_EXPOSURE, SqlExposureLedger
from carnet.identity import sessions
from carnet.identity.authenticate import SESSION_CONTEXT, Authenticator, RequestContext, account_and_grant
from carnet.identity.models import Account, AuthSession
from carnet.kernel import clock
from carnet.kernel.ids import parse_id
from carnet.patients.models import Patient
from carnet.phi import care
from carnet.phi.kernel import _PATIENT_BY_ID, GateCore, Guard, GuardedTx, Refused
from carnet.runtime import Runtime

_counts_lock = threading.Lock()
# How many reads took the fast path in this process (tests read it; not a metric), and how many
# of them with the session's lookup in their first pipeline (`session_read`).
taken = 0
taken_with_session = 0
# > 0: every operation runs on the kernel's general path (tests; CARNET_GATE_GENERAL_ONLY=1 for a
# process, which benchmarks use to measure one path against the other).
_general_only = 1 if os.environ.get("CARNET_GATE_GENERAL_ONLY") == "1" else 0


@contextlib.contextmanager
def general_only() -> Iterator[None]:
    """Within this block, every operation of this process runs on the kernel's general path."""
    global _general_only
    with _counts_lock:
        _general_only += 1
    try:
        yield
    finally:
        with _counts_lock:
            _general_only -= 1


# The values each request binds (`_first_round_trip`); every other parameter is a constant of the
# statement (a status, a list of kinds), rendered once with its value among the defaults.
_BOUND = ("account", "account_id", "actor_ref", "digest", "id", "pid", "now", "since", "until")


def _compile(
    statement: Any, dialect: Dialect, *, wrap: Callable[[str], str] | None = None, **kw: Any
) -> roundtrip.Statement:
    """The statement as carnet.db.roundtrip sends it (prepared once per connection, `$n`
    placeholders; rows in binary: a timestamp or a bytea neither formatted by PostgreSQL nor
    parsed here), with its constants among its defaults and its columns' result processors.
    `wrap`: the SQL sent is `wrap(<the statement's SQL>)`, which adds one column before the
    statement's own (see `_session_statements`)."""
    if not kw:
        statement = statement.params(dict.fromkeys(_BOUND))  # bound per request: see _BOUND
    compiled = statement.compile(dialect=dialect, **kw)
    if kw:  # an INSERT of the given columns
        return roundtrip.Statement(str(compiled), binary=True)
    expanded = compiled.construct_expanded_state()  # a constant list (IN ...) as its own values
    processors: tuple[Callable[[Any], Any] | None, ...] = ()
    if hasattr(statement, "selected_columns"):
        processors = tuple(_result_processor(c.type, dialect) for c in statement.selected_columns)
    sql = expanded.statement
    if wrap is not None:
        sql, processors = wrap(sql), (None, *processors)
    return roundtrip.Statement(sql, defaults=dict(expanded.parameters), processors=processors, binary=True)


def _compile_inline(
    statement: Any, dialect: Dialect, *, wrap: Callable[[str], str] | None = None
) -> roundtrip.Statement:
    """`_compile` with every constant of the statement (a status, a kind: any value not bound per
    request, see _BOUND) written into its SQL: the statement is prepared once per connection, so
    nothing is gained by sending them, and each parameter sent is one more value psycopg adapts in
    Python on every execution (a third of the relationships statement's were constants)."""

    def inline(element: Any, **_kw: Any) -> Any:
        if isinstance(element, BindParameter) and element.key not in _BOUND and element.value is not None:
            return element.render_literal_execute()
        return None

    return _compile(replacement_traverse(statement, {}, inline), dialect, wrap=wrap)


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """A column type's result processor, as SQLAlchemy would pick it. A numeric type's depends
    on the column's type on the wire (psycopg returns a float8 as float, a numeric as Decimal:
    nothing to convert when the column is of the type its model declares, as the migrations
    make it)."""
    if type(type_) is UtcDateTime:
        return _utc_result  # its own processor, without SQLAlchemy's wrapper around it
    try:
        return cast(Callable[[Any], Any] | None, type_._cached_result_processor(dialect, None))
    except TypeError:  # "Unknown PG numeric type: %d" % None
        return None


def _utc_result(value: dt.datetime) -> dt.datetime:
    """`UtcDateTime.process_result_value` of a value that is not None (see carnet.db.base)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


_GRANTS = cast(Table, RoleGrant.__table__).c
# The facility scope the kernel would enter (`enter_scope` of `context.resolve`'s facilities): the
# facilities of the account's active grants of the roles its session claims, in `enter_scope`'s
# order and spelling. Checked against the judged context before any patient data is used.
# (An ARRAY of the distinct facilities in order, joined: no aggregate to start on every read.)
_FACILITIES_SQL = "".join(
    (
        "set_config('carnet.facility_ids', coalesce(array_to_string(ARRAY(SELECT DISTINCT ",
        f'{_GRANTS.facility_id.name}::text COLLATE "C" FROM {RoleGrant.__tablename__} WHERE ',
        f"{_GRANTS.account_id.name} = %(account)s AND {_GRANTS.status.name} = 'active' AND ",
        f"{_GRANTS.role.name} = ANY(%(roles)s) AND {_GRANTS.facility_id.name} IS NOT NULL",
        " ORDER BY 1), ','), ''), true)",
    )
)
# SET LOCAL ROLE, in the same statement: row-level security holds for what follows.
_ROLE_SQL = f"set_config('role', '{APP_ROLE}', true)"
_SCOPE_SQL = f"SELECT {_FACILITIES_SQL}, {_ROLE_SQL}"
# The same scope for the account of a session cookie (`session_read`), named by the token's digest.
_SESSIONS = cast(Table, AuthSession.__table__).c
_ACCOUNT_OF_SESSION = "".join(
    (
        "(SELECT ",
        _SESSIONS.account_id.name,
        f" FROM {AuthSession.__tablename__} WHERE {_SESSIONS.token_digest.name} = %(digest)s)",
    )
)
_SCOPE = roundtrip.Statement(_SCOPE_SQL)


@dataclass
class _Statements:
    account: roundtrip.Statement
    state: roundtrip.Statement
    patient: roundtrip.Statement
    tagged: roundtrip.Statement
    exposure: roundtrip.Statement
    event: roundtrip.Statement
    # The exposure INSERT's SQL, its parameters renamed by `_EXPOSURE_PARAMS` (`_audit_statement`).
    exposure_sql: str


_compiled: dict[str, _Statements] = {}
_EXPOSURE_KEYS = ["id", "actor_ref", "patient_id", "channel", "resource_type", "at", "audit_seq"]
_EXPOSURE_KEYS += ["outside_care", "fields"]
# An exposure row's values, named apart from the audit append's when both are in one statement.
_EXPOSURE_PARAMS = {key: f"exposure_{key}" for key in _EXPOSURE_KEYS}


def _statements(dialect: Dialect) -> _Statements:
    found = _compiled.get(dialect.name)
    if found is None:
        account = bindparam("account", type_=Uuid())
        me = select(Account.practitioner_id).where(Account.id == account).scalar_subquery()
        pid = bindparam("pid", type_=Uuid())
        tagged = care.tagged_statement(match=lambda column: column == pid, me=me)
        exposure = _compile(INSERT_EXPOSURE, dialect, column_keys=_EXPOSURE_KEYS)
        exposure_sql = str(INSERT_EXPOSURE.compile(dialect=dialect, column_keys=_EXPOSURE_KEYS))
        for key, name in _EXPOSURE_PARAMS.items():
            exposure_sql = exposure_sql.replace(f"%({key})s", f"%({name})s")
        found = _Statements(
            account=_compile_inline(ACCOUNT_AND_GRANTS, dialect),
            state=_compile_inline(ACTOR_STATE, dialect),
            patient=_compile_inline(_PATIENT_BY_ID, dialect),
            tagged=_compile_inline(tagged, dialect),
            exposure=exposure,
            event=_compile(INSERT_EVENT, dialect, column_keys=["id", "actor_ref", "kind", "key", "at"]),
            exposure_sql=exposure_sql,
        )
        _compiled[dialect.name] = found
    return found


# A row read by name, like SQLAlchemy's (what `from_rows` and the ledger read): its values are
# its attributes, read without a call (a missing one raises AttributeError, as a Row does).
_Row = SimpleNamespace


def _rows(statement: roundtrip.Statement, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """A statement's rows (carnet.db.roundtrip) as dicts by column name."""
    if not rows:
        return []
    names = statement.columns
    assert names is not None  # known once the statement answered
    return [dict(zip(names, row, strict=True)) for row in rows]


@dataclass
class _FastTx(GuardedTx):
    """The guarded transaction of a fast read: the patient and the relationships are already
    read (the first pipeline); anything else the body asks goes to the database as usual."""

    prefetched: tuple[Patient, bool] | None = None
    # The `patient_id` the read was asked for, as given: the prefetched row's (it was parsed
    # into the id the first pipeline read).
    prefetched_arg: Any = None
    # The psycopg connection of the transaction (`_raw`), once the first pipeline found it.
    raw: Any = None
    fallbacks: list[str] = field(default_factory=list)
    # The rows of the statements a variant sent along in the first pipeline (`also`), in order.
    also: list[list[dict[str, Any]]] = field(default_factory=list)

    def patient_to_read(self, patient_id: str) -> tuple[Patient, bool]:
        prefetched = self.prefetched
        if prefetched is not None and (
            patient_id == self.prefetched_arg or parse_id(patient_id) == prefetched[0].id
        ):
            patient, replaces_any = prefetched
            self.patient_ids.append(patient.id)
            return patient, replaces_any
        return super().patient_to_read(patient_id)


class _Decline(Exception):
    """Not a case for the fast path: roll back (nothing was done) and take the general one."""


def _writer(audit: Any) -> Any:
    """The audit writer under detection's watch (which sees access-widening events only)."""
    return audit.inner if isinstance(audit, WatchedAuditWriter) else audit


def _eligible(core: GateCore, guard: Guard, kwargs: dict[str, Any], *, one_patient: bool = True) -> bool:
    """`one_patient`: the operation reads one patient's record, named by `patient_id`."""
    runtime = core._runtime
    actor = core.actor
    return (
        not _general_only
        and actor.kind is ActorKind.STAFF
        and actor.account_id is not None
        and actor.scopes is None  # app tokens (scopes, categories) take the one path
        and actor.compartment_patient_id is None
        and type(runtime.ledger) is SqlExposureLedger
        and type(_writer(runtime.audit)) is SqlAuditWriter
        and guard.kind not in WATCHED
        and runtime.engine.dialect.name == "postgresql"
        and (not one_patient or isinstance(kwargs.get("patient_id"), str | uuid.UUID))
    )


def patient_read(
    core: GateCore, guard: Guard, run: Callable[[GuardedTx], Any], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """The fast variant of a read of one patient's record (`patient_id`); see the module."""
    if not _eligible(core, guard, kwargs):
        return False, None
    pid = parse_id(str(kwargs["patient_id"]))

    def first_round_trip(session: Session) -> _FastTx:
        tx = _first_round_trip(core, session, guard, pid)
        tx.prefetched_arg = kwargs["patient_id"]
        return tx

    return between_round_trips(core, guard, run, first_round_trip, count=_count_read)


def _count_read() -> None:
    global taken
    with _counts_lock:
        taken += 1


_RAW = "_carnet_raw"  # a deferred session's psycopg connection (`_Frame`)
_DIALECT = "_carnet_dialect"
_OPEN = "_carnet_open"  # present until the deferred session is made


class _Deferred:
    """Mixed into the session factory's class (`_deferred_class`): an instance made by
    `_Frame` without `__init__`, which runs at the first attribute the instance lacks (any
    use of the session: `get`, `connection`, `add`, `in_transaction`...). Before that, only
    what needs no state of the session's is read on it: `info` (memoized in the instance) and
    its event dispatch. It is then a Session like any other, bound to an engine Connection on
    the frame's pool connection, in the transaction the first pipeline began."""

    def __getattr__(self, name: str) -> Any:
        opener = self.__dict__.pop(_OPEN, None)
        if opener is None:
            raise AttributeError(name)
        opener()
        return getattr(self, name)


_deferred_classes: dict[type[Session], type[Session]] = {}


def _deferred_class(base: type[Session]) -> type[Session]:
    found = _deferred_classes.get(base)
    if found is None:
        found = _deferred_classes[base] = cast(
            type[Session], type(f"Deferred{base.__name__}", (_Deferred, base), {})
        )
    return found


def _opened(session: Session) -> bool:
    """Whether the session was made (used), or is not a deferred one."""
    return _OPEN not in session.__dict__


class _Frame:
    """The read's transaction frame: a connection checked out of the engine's pool (its events
    run: the idle ping at checkout, the checkin note, the reset at return, the invalidation of
    a connection whose reset fails), and a deferred ORM session on it (`_Deferred`), made with
    an engine Connection only if something uses it."""

    __slots__ = ("_connection", "_engine", "_factory", "_fairy", "_raw", "session")

    def __init__(self, runtime: Runtime) -> None:
        engine = self._engine = runtime.engine
        self._factory = runtime.session_factory
        self._connection: Connection | None = None
        fairy = self._fairy = engine.raw_connection()  # connection errors as the engine raises them
        # psycopg's own connection (the driver's connection is the DBAPI one: psycopg, not async)
        raw: Any = fairy.dbapi_connection
        self._raw = raw
        session = object.__new__(_deferred_class(self._factory.class_))
        values = session.__dict__
        values[_RAW] = raw
        values[_DIALECT] = engine.dialect
        values[_OPEN] = self._open
        self.session = session

    def _open(self) -> None:
        connection = self._connection = Connection(self._engine, connection=self._fairy)
        Session.__init__(self.session, **{**self._factory.kw, "bind": connection})

    def close(self, exc: BaseException | None) -> None:
        """The session closed if it was made (its transaction, if any, rolled back after a
        failure: its listeners run), then the connection returned to the pool. After a failure,
        the pool rolls back what is left (a connection whose rollback fails is discarded), and a
        connection psycopg found broken is discarded at once. After the closing round trip's
        COMMIT the pool's reset runs as always (psycopg's rollback sends nothing on a connection
        with no transaction open: SQLAlchemy's private `_close_special` would save only Python
        calls, and the reset must not depend on a private API)."""
        session = self.session
        connection = self._connection
        try:
            if connection is None:
                session.__dict__.pop(_OPEN, None)  # not made: nothing of it to close
            else:
                session.close()
        finally:
            raw: Any = self._raw
            if connection is not None:
                if exc is not None and raw.broken:
                    connection.invalidate(exc)
                connection.close()  # returns the pool's connection (reset by rollback)
            else:
                if exc is not None and raw.broken:
                    self._fairy.invalidate(exc)
                self._fairy.close()  # the pool's reset: psycopg sends no ROLLBACK when idle


def between_round_trips(
    core: GateCore,
    guard: Guard,
    run: Callable[[GuardedTx], Any],
    first_round_trip: Callable[[Session], _FastTx],
    *,
    count: Callable[[], None],
) -> tuple[bool, Any]:
    """The operation's body between the first pipeline (`first_round_trip`) and the closing one,
    in one transaction; `count` is called once it answered or failed. A decline (a case the
    fast path does not take) leaves it to the kernel's general path: (False, None)."""
    attempted: list[uuid.UUID] = []
    try:
        # The transaction is psycopg's own, begun by the first pipeline and committed by the
        # closing one, on a connection checked out of the engine's pool (`_Frame`). The ORM
        # session on it is there for what uses it (the body's other reads, detection's rare reads
        # and its after-transaction writes): made, with an engine Connection, only then; it
        # begins a transaction of its own only then, ended with the connection's (see
        # `_end_committed`). A read that needs neither costs neither.
        frame = _Frame(core._runtime)
        try:
            session = frame.session
            tx = first_round_trip(session)
            try:
                result = run(tx)
            finally:
                attempted = list(tx.patient_ids)
            _closing_round_trip(core, session, guard, tx)
        except BaseException as exc:
            frame.close(exc)  # rolled back, or discarded when broken: never returned dirty
            raise
        frame.close(None)
        count()
        return True, result
    except _Decline:
        return False, None
    except Exception as exc:
        count()
        core._fail(guard, exc, attempted)
        raise  # _fail always raises


def offer(body: Callable[..., Any], *, reads_columns_only: bool = False) -> None:
    """Offer the fast variant for `body`, a read of one patient's record by `patient_id`.
    `reads_columns_only`: the body reads the patient's columns and nothing else of the instance
    (no relationship, no write): `session_read` hands it the row as plain attributes."""
    setattr(body, "__gate_fast__", patient_read)  # noqa: B010
    setattr(body, _READS_COLUMNS_ONLY, reads_columns_only)


_READS_COLUMNS_ONLY = "__gate_reads_columns_only__"


def _first_round_trip(
    core: GateCore,
    session: Session,
    guard: Guard,
    pid: uuid.UUID | None,
    *,
    also: Sequence[tuple[roundtrip.Statement, dict[str, Any]]] = (),
    tx_type: type[_FastTx] = _FastTx,
    one_patient: bool = True,
) -> _FastTx:
    """The first pipeline; `also`: more statements (and their parameters) sent in it, after
    the scope is entered (row-level security holds for them), read before the decision and
    kept on the transaction for the body, which uses them only after it (carnet.phi.fastpath_search).
    Without `one_patient` (a search), neither the patient row nor relationships are read ahead."""
    actor = core.actor
    statements = _statements(raw_dialect(session))
    now = clock.now()
    raw = _raw(session)
    roles = sorted(r.value for r in actor.roles)
    values = {
        "account": actor.account_id,
        "account_id": actor.account_id,
        "actor_ref": actor.actor_ref,
        "id": pid,
        "pid": pid,
        **care.window_params_at(now, actor.account_id),
    }
    ahead: list[roundtrip.Statement] = [statements.account, statements.state]
    if one_patient:
        ahead.append(statements.patient)
        ahead.append(statements.tagged)
    calls = [(_SCOPE, {"account": actor.account_id, "roles": roundtrip.text_array(roles)})]
    calls += [(compiled, values) for compiled in ahead]
    if one_patient and pid is None:  # no such record: answered as the kernel answers it
        calls[3] = (statements.patient, {**values, "id": uuid.UUID(int=0)})
    calls += [(compiled, params) for compiled, params in also]
    try:
        answers = roundtrip.run(raw, calls)
    except psycopg.errors.InvalidSqlStatementName as exc:
        raise _Decline from exc  # the connection lost its statements (prepared again next time)
    scope_rows = answers[0]
    scope_row = scope_rows[0] if scope_rows else None
    read = [_rows(c, rows) for c, rows in zip(ahead, answers[1 : 1 + len(ahead)], strict=True)]
    account_rows, state_rows, patient_rows, tagged_rows = read if one_patient else [*read, [], []]
    tx = _judged(core, session, guard, now, scope_row, account_rows, state_rows, tx_type=tx_type)
    tx.raw = raw
    more = answers[1 + len(ahead) :]
    tx.also = [_rows(compiled, rows) for (compiled, _), rows in zip(also, more, strict=True)]
    if pid is not None:
        _prefetch(tx, patient_rows, tagged_rows)
    return tx


def _judged(
    core: GateCore,
    session: Session,
    guard: Guard,
    now: dt.datetime,
    scope_row: Any,
    account_rows: list[dict[str, Any]],
    state_rows: list[dict[str, Any]],
    *,
    tx_type: type[_FastTx],
) -> _FastTx:
    """The access context judged from the first pipeline's rows (`resolve`'s own judgment) and
    the guarded transaction made on it; declines when the scope entered is not the kernel's."""
    ctx = from_rows(
        core.actor,
        [_Row(**r) for r in account_rows],
        now=now,
        contact=core._runtime.settings.security_contact,
    )
    if not ctx.permissions:
        raise Refused("no active role grants this actor any permission")
    scope = ",".join(sorted(str(f) for f in ctx.facility_ids))
    if scope_row is None or scope_row[0] != scope or ctx.patient_id is not None:
        raise _Decline  # not the scope the kernel enters: its path decides this case
    session.info[_STATE] = _Row(**state_rows[0]) if state_rows else None
    return tx_type(
        session=session,
        ctx=ctx,
        actor=core.actor,
        keyring=core._keyring,
        resource_type=guard.resource.value,
        kind=guard.kind,
    )


def _prefetch(
    tx: _FastTx, patient_rows: list[dict[str, Any]], tagged_rows: list[dict[str, Any]], *, light: bool = False
) -> None:
    """The patient row and the actor's relationships to it, read ahead, kept for the body.
    `light`: for a body that only reads the patient's columns (the Patient read, `session_read`):
    the row's values as plain attributes, read without the ORM's descriptors."""
    if patient_rows:
        columns = dict(patient_rows[0])
        replaces_any = bool(columns.pop("carnet_replaces_any"))
        patient = cast(Patient, SimpleNamespace(**columns)) if light else detached(Patient, columns)
        tx.prefetched = (patient, replaces_any)
        visible = care.visible_ids(tx.ctx, [patient])
        if visible:
            rels = care.combine(tx.ctx, visible, [(r["rel"], r["pid"]) for r in tagged_rows])
            tx.relationships[patient.id] = rels.get(patient.id, frozenset())


# -- a read by the actor of a session cookie ---------------------------------------------------
# The kernel's statements keyed by the session token's digest instead of the account id, so the
# session's lookup is sent in the same pipeline as them (one round trip, one transaction, one
# pool checkout less than resolving the session first).
def _account_of_session() -> Any:
    digest = bindparam("digest", type_=String())
    return select(AuthSession.account_id).where(AuthSession.token_digest == digest).scalar_subquery()


def _keyed_by_session(statement: Any, account: Callable[[], Any] = _account_of_session) -> Any:
    """`statement` with the account id it binds (and the actor reference made of it: Actor's
    `actor_ref`, "account:<id>") read from the session by its token's digest (`account`)."""

    def replace(element: Any, **_kw: Any) -> Any:
        if isinstance(element, BindParameter):
            if element.key in ("account", "account_id"):
                return account()
            if element.key == "actor_ref":
                return literal("account:", String()) + sa_cast(account(), String())
        return None

    return replacement_traverse(statement, {}, replace)


@dataclass
class _SessionStatements:
    # The facility scope entered (`_SCOPE_FIRST`: the scope statement's, for the session's
    # account; then SET LOCAL ROLE), first column of every row; then the session, its account and
    # its active grants (SESSION_CONTEXT), then the account's containment state (ACTOR_STATE),
    # the last `_STATE_COLUMNS` of every row. One row of NULLs after the scope when there is no
    # such session.
    context: roundtrip.Statement
    # The patient row (the kernel's _PATIENT_BY_ID) with the actor's relationships to it (the
    # tagged statement's kinds, `_RELS`): one statement for what the body decides on.
    patient: roundtrip.Statement


_RELS = "carnet_rels"
# The patient statement's last column: the plan cache mode the scope statement set for it, back
# to the session's own (set_config to NULL: SET LOCAL ... TO DEFAULT).
_PLANS = "carnet_plans"


_STATE_COLUMNS = tuple(c.name for c in ACTOR_STATE.selected_columns)


_of_session: dict[str, _SessionStatements] = {}
# The scope's roles: every role there is. A session's actor claims every active grant of a role
# carnet knows (`quiet_resolve`, else the session has ended), so these are its grants' facilities.
_EVERY_ROLE = roundtrip.text_array(sorted(r.value for r in Role))
if not all(r.value.isidentifier() and r.value.islower() for r in Role):  # array elements as they are
    raise RuntimeError("a role name needs quoting in an array literal")
# The session read's first statement: the scope entered (the facilities of the session account's
# active grants, as `_SCOPE` computes them; SET LOCAL ROLE) in a one-row subquery that the
# session's rows are left-joined to, so it is entered whether or not the session is found, and
# always before the patient statement that follows. The generic plan is forced for the rest of
# the transaction's prepared statements (the patient statement gives the setting back): a new
# connection would plan the relationships statement five times (3 ms each) before settling on
# the generic plan it then keeps.
_SCOPE_FIRST = "".join(
    (
        "SELECT carnet_scope.facilities AS carnet_scope, ctx.* FROM (SELECT ",
        _FACILITIES_SQL.replace("%(account)s", _ACCOUNT_OF_SESSION).replace(
            "%(roles)s", f"'{_EVERY_ROLE}'::varchar[]"
        ),
        f" AS facilities, {_ROLE_SQL} AS carnet_role,",
        " set_config('plan_cache_mode', 'force_generic_plan', true) AS carnet_plans) AS carnet_scope",
        " LEFT JOIN (<session>) AS ctx ON true",
    )
)


def _scope_first(session_sql: str) -> str:
    return _SCOPE_FIRST.replace("<session>", session_sql)


def _session_statements(dialect: Dialect) -> _SessionStatements:
    found = _of_session.get(dialect.name)
    if found is None:
        pid = bindparam("pid", type_=Uuid())
        # The session's account and practitioner, read once, left-joined to the patient row (each
        # kind of relationship names them; no session, no relationship).
        actor = (
            select(AuthSession.account_id, Account.practitioner_id)
            .join(Account, Account.id == AuthSession.account_id)
            .where(AuthSession.token_digest == bindparam("digest", type_=String()))
            .subquery("session_actor")
        )
        rels = care.kinds_of(pid, actor.c.practitioner_id, actor.c.account_id)
        # The containment state of the session row's own account (no second lookup of the session).
        state = _keyed_by_session(ACTOR_STATE, lambda: AuthSession.account_id).lateral("actor_state")
        context = SESSION_CONTEXT.add_columns(*(state.c[name] for name in _STATE_COLUMNS))
        plans = func.set_config("plan_cache_mode", null(), True, type_=String())
        found = _SessionStatements(
            context=_compile_inline(context.outerjoin(state, true()), dialect, wrap=_scope_first),
            patient=_compile_inline(
                _PATIENT_BY_ID.add_columns(rels.label(_RELS), plans.label(_PLANS)).select_from(
                    cast(Table, Patient.__table__).outerjoin(actor, true())
                ),
                dialect,
            ),
        )
        _of_session[dialect.name] = found
    return found


# The gate's actor until the session's rows are read (nothing is done in its name: any failure
# before `quiet_resolve` answered declines, and the caller resolves the session as always).
_UNREAD = Actor(kind=ActorKind.STAFF, username="(session not read yet)", roles=frozenset())


def session_read(
    runtime: Runtime,
    gate: type[GateCore],
    body: Callable[..., Any],
    *,
    token: str,
    context: RequestContext,
    kwargs: dict[str, Any],
) -> tuple[bool, Any]:
    """`gate(runtime, <the session's actor>).<body>(**kwargs)`, a read of one patient's record
    (`patient_id`), with the session cookie's lookup (`Authenticator.resolve`) in the read's first
    pipeline. (False, None) when it declines, having done nothing: then the caller resolves the
    session and reads as usual, which answers every case this does not (a bearer token, a session
    to refuse, touch or revoke, an actor the fast read does not take)."""
    if (
        _general_only
        or runtime.engine.dialect.name != "postgresql"
        or type(runtime.ledger) is not SqlExposureLedger
        or type(_writer(runtime.audit)) is not SqlAuditWriter
        or not isinstance(kwargs.get("patient_id"), str | uuid.UUID)
    ):
        return False, None
    guard: Guard = body.__gate_guard__  # type: ignore[attr-defined]
    pid = parse_id(str(kwargs["patient_id"]))
    core = gate(runtime, _UNREAD)

    def run(tx: GuardedTx) -> Any:
        return body(tx, **kwargs)

    light = getattr(body, _READS_COLUMNS_ONLY, False) is True

    def first_round_trip(session: Session) -> _FastTx:
        return _first_round_trip_of_session(
            core, session, guard, pid, token=token, context=context, kwargs=kwargs, light=light
        )

    return between_round_trips(core, guard, run, first_round_trip, count=_count_session_read)


def _count_session_read() -> None:
    global taken, taken_with_session
    with _counts_lock:
        taken += 1
        taken_with_session += 1


def _first_round_trip_of_session(
    core: GateCore,
    session: Session,
    guard: Guard,
    pid: uuid.UUID | None,
    *,
    token: str,
    context: RequestContext,
    kwargs: dict[str, Any],
    light: bool = False,
) -> _FastTx:
    of_session = _session_statements(raw_dialect(session))
    now = clock.now()
    digest = sessions.digest(token)
    values = {"digest": digest, "id": pid or uuid.UUID(int=0), "pid": pid, **care.window_params_at(now, None)}
    try:
        raw = _raw(session)
        entered, patient = roundtrip.run(
            raw, [(of_session.context, {"digest": digest}), (of_session.patient, values)]
        )
        scope_row = (entered[0][0],) if entered else None
        found = [row[1:] for row in entered] if entered and entered[0][1] is not None else []
        patient_rows = _rows(of_session.patient, patient)
        kinds: list[str] = []
        if patient_rows:
            kinds = patient_rows[0].pop(_RELS) or []
            del patient_rows[0][_PLANS]
        tagged_rows = [{"rel": kind, "pid": pid} for kind in kinds]
        state = found[0][-len(_STATE_COLUMNS) :] if found else ()
        state_rows = [dict(zip(_STATE_COLUMNS, state, strict=True))] if state and state[0] is not None else []
        judged = Authenticator.of(core._runtime).quiet_resolve(found, context=context)
    except Exception as exc:
        raise _Decline from exc  # nothing done yet: resolving the session first answers it
    if judged is None:
        raise _Decline
    core.actor = judged[0]
    if not _eligible(core, guard, kwargs):
        raise _Decline
    tx = _judged(
        core,
        session,
        guard,
        now,
        scope_row,
        [account_and_grant(r) for r in found],
        state_rows,
        tx_type=_FastTx,
    )
    tx.raw = raw
    if pid is not None:
        _prefetch(tx, patient_rows, tagged_rows, light=light)
        tx.prefetched_arg = kwargs["patient_id"]
    return tx


_STATE = "carnet.fastpath.state"


def _closing_round_trip(core: GateCore, session: Session, guard: Guard, tx: _FastTx) -> None:
    runtime = core._runtime
    ledger = cast(SqlExposureLedger, runtime.ledger)
    audit = cast(SqlAuditWriter, _writer(runtime.audit))
    state = session.info.pop(_STATE, None)
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for exposure in tx.exposures:
        ledger.record(
            session,
            actor=core.actor,
            patient_ids=exposure.patient_ids,
            channel=exposure.channel,
            resource_type=exposure.resource_type,
            outside_care=exposure.outside_care,
            query_shape=exposure.shape,
            fields=exposure.fields,
            state=state,
            exposure_rows=rows,
            event_rows=events,
        )
    record = core._record(guard.kind, Outcome.SUCCESS, tx)
    opened = _opened(session)
    if opened:
        session.flush()  # anything the body or detection added through the session goes first
    raw = tx.raw if tx.raw is not None else _raw(session)
    statements = _statements(raw_dialect(session))
    sql, params = append_one_statement(record)
    params["patients"] = roundtrip.text_array(params["patients"])  # UUIDs, cast to uuid[] by the SQL
    started = time.perf_counter()
    calls = [(statements.event, row) for row in events]
    if len(rows) == 1:  # a read's one exposure row, written by the audit append's statement
        params.update({_EXPOSURE_PARAMS[key]: value for key, value in rows[0].items()})
        calls.append((_audit_statement(sql, statements.exposure_sql), params))
    else:
        calls[:0] = [(statements.exposure, row) for row in rows]
        calls.append((_audit_statement(sql), params))
    # Without hooks to run after the audit append, the COMMIT goes in the same round trip (the
    # session's own commit then finds nothing left to do).
    # A session never made sent nothing: only round trips ran on the connection since the first.
    answers = roundtrip.run(raw, calls, commit=not tx.after_audit, continues=not opened)
    seq = int(answers[-1][0][0])
    audit.appended(session, record, seq, time.perf_counter() - started)
    for hook in tx.after_audit:
        hook(seq)
    if tx.after_audit:
        if _opened(session) and session.in_transaction():
            session.commit()  # the connection's transaction with it: its listeners run
            return
        raw.commit()
    _end_committed(session)


_audit_statements: dict[tuple[str, str | None], roundtrip.Statement] = {}


def _audit_statement(sql: str, exposure: str | None = None) -> roundtrip.Statement:
    """The audit append's statement (`append_one_statement`: one SQL text), rewritten once;
    with `exposure` (an exposure row's INSERT), that INSERT as one more of its data-modifying
    CTEs: one statement instead of two, in the same transaction, before the same COMMIT."""
    found = _audit_statements.get((sql, exposure))
    if found is None:
        text = sql
        if exposure is not None:
            if not sql.startswith("WITH "):
                raise RuntimeError("the audit append is not a WITH statement")
            text = f"WITH carnet_exposure AS ({exposure}), {sql.removeprefix('WITH ')}"
        found = _audit_statements[sql, exposure] = roundtrip.Statement(text)
    return found


def raw_dialect(session: Session) -> Dialect:
    """The dialect of the Connection the session is bound to (`between_round_trips`)."""
    dialect = session.__dict__.get(_DIALECT)
    if dialect is not None:
        return cast(Dialect, dialect)
    bind = session.bind
    return bind.dialect if isinstance(bind, Connection) else session.get_bind().dialect


def _raw(session: Session) -> Any:
    """The psycopg connection under the session: that of the Connection it is bound to
    (`between_round_trips`), without beginning the session's transaction."""
    raw = session.__dict__.get(_RAW)
    if raw is not None:
        return raw
    bind = session.get_bind()
    if isinstance(bind, Connection):
        return bind.connection.driver_connection
    return session.connection().connection.driver_connection


def _end_committed(session: Session) -> None:
    """The connection's transaction is committed: end the session's as committed. If the session
    began one (something read or wrote through it), its commit finds nothing left to send and
    runs its listeners (detection's after-transaction writes, the audit writer's checkpoint
    notification); if it began none, its after-commit listeners are run as a commit runs them
    (the audit writer's `appended` left its checkpoint notification to them)."""
    if _opened(session) and session.in_transaction():
        session.commit()
    else:
        session.dispatch.after_commit(session)
