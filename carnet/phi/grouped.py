"""Group commit: several calls of one operation, by one actor, in one transaction.

A variant of `GateCore._run` (carnet/phi/kernel.py) for a feed of small writes (an HL7
interface's messages arriving on several connections), not a way around it. Every call takes
the kernel's steps with the kernel's code; what is shared is the transaction:

1. one transaction: the actor's context (account active, grants active: a contained or
   suspended actor is refused here, for every call of the group) and the facility scope;
2. each call: its body, then its exposures (ledger, detection); first without savepoints
   (most groups have no failing call), the plain rows of every call (`GuardedTx.insert_rows`:
   an ORU message's report, results, versions, links, log line) kept and inserted after the
   last call, one multi-row INSERT per table for the whole group; when a call fails, or those
   rows do (a twin's unique key), the transaction is rolled back whole (nothing written,
   nothing audited) and the group runs again with each call in a SAVEPOINT sending its own
   rows, where a call that fails is rolled back to its savepoint, alone, and the others go on;
3. the audit event of every call that succeeded, each its own event, in the order of the calls
   (the audit lane's head is taken here, after all the Python work), then ONE commit;
4. after the commit, each failed call is audited and answered by the kernel's `_fail`, exactly
   as on the one path (a refusal as NotFound or Forbidden, a denial, an error).

So BEGIN, the context, the scope, the chain-head wait and the commit (its fsync) are paid once
per group instead of once per call. A result is returned only after the commit: the caller
acknowledges nothing that could still be lost. If the group as a whole fails (the audit append,
the commit), nothing of it was written and `GroupFailed` says so: the caller runs each call on
the one path instead. tests/interfaces/test_grouped.py proves a group writes the same records,
versions and audit events, and answers the same, as the same calls one by one.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from carnet.access.scope import enter_scope
from carnet.audit.interfaces import AuditKind, Outcome
from carnet.audit.writer import SqlAuditWriter, append_one_statement
from carnet.db.prepared import DeferredRows
from carnet.operations.tracing import gate_step
from carnet.phi.kernel import GateCore, Guard, GuardedTx, Refused, _serialise_on_sqlite

P = ParamSpec("P")
T = TypeVar("T")

GROUP_LIMIT = 100


class GroupFailed(Exception):
    """The group's transaction failed as a whole (nothing of it was written): run each call on
    its own."""


class _CallFailed(Exception):
    """A call of a group run without savepoints failed: the whole transaction is rolled back
    (nothing of it written, nothing audited) and the group is run again with savepoints."""


Prepare = Callable[[GuardedTx], Any]


def run_group(
    core: GateCore,
    guard: Guard,
    runs: Sequence[Callable[[GuardedTx], T]],
    prepare: Prepare | None = None,
) -> list[T | Exception]:
    """Each of `runs` (bodies bound to their arguments) as described in the module docstring:
    its result, or the exception the one path would have raised for it. `prepare`: run once in
    each attempt's transaction, after the context and scope and before (outside the savepoints
    of) the calls; what it returns is each call's `tx.group` (reads the calls share, locks held
    to the commit).

    A group is first run without savepoints (two statements fewer per call: most groups have no
    failing call); the first call that fails rolls the whole transaction back, and the group is
    run again with a savepoint per call, where it fails alone."""
    if not 1 <= len(runs) <= GROUP_LIMIT:
        raise ValueError(f"a group holds 1 to {GROUP_LIMIT} calls")
    try:
        return _attempt(core, guard, runs, savepoints=len(runs) == 1, prepare=prepare)
    except _CallFailed:
        return _attempt(core, guard, runs, savepoints=True, prepare=prepare)


def _attempt(
    core: GateCore,
    guard: Guard,
    runs: Sequence[Callable[[GuardedTx], T]],
    *,
    savepoints: bool,
    prepare: Prepare | None = None,
) -> list[T | Exception]:
    runtime = core._runtime
    kind, resource = guard.kind, guard.resource
    results: list[Any] = [None] * len(runs)
    failed: dict[int, tuple[Exception, list[uuid.UUID]]] = {}
    try:
        with runtime.session_factory.begin() as session:
            _serialise_on_sqlite(session)
            try:
                with gate_step("context", kind=kind.value, resource=resource.value):
                    ctx = core._context(session)
                    if not ctx.permissions:
                        raise Refused("no active role grants this actor any permission")
                    enter_scope(session, ctx.facility_ids)
            except Exception as exc:  # the actor is not usable: every call is refused alike
                failed = {i: (exc, []) for i in range(len(runs))}
                runs = []
            shared = None
            if prepare is not None and runs:
                # Outside any savepoint: a lock it takes is not given back by a call's rollback.
                shared = prepare(
                    GuardedTx(
                        session=session,
                        ctx=ctx,
                        actor=core.actor,
                        keyring=core._keyring,
                        resource_type=resource.value,
                        kind=kind,
                    )
                )
            done: list[GuardedTx] = []
            # Without savepoints, the calls' plain rows are kept and inserted together after the
            # last call (one multi-row INSERT per table for the group); with savepoints each
            # call sends its own, so that a failing one is rolled back alone.
            deferred = None if savepoints else DeferredRows()
            for i, run in enumerate(runs):
                tx = GuardedTx(
                    session=session,
                    ctx=ctx,
                    actor=core.actor,
                    keyring=core._keyring,
                    resource_type=resource.value,
                    kind=kind,
                    deferred=deferred,
                    group=shared,
                )
                # Each call reads the database as it stands, not what an earlier call loaded.
                session.expire_all()
                try:
                    with session.begin_nested() if savepoints else nullcontext():
                        with gate_step("operation", kind=kind.value, resource=resource.value):
                            results[i] = run(tx)
                        for exposure in tx.exposures:
                            runtime.ledger.record(
                                session,
                                actor=core.actor,
                                patient_ids=exposure.patient_ids,
                                channel=exposure.channel,
                                resource_type=exposure.resource_type,
                                outside_care=exposure.outside_care,
                                query_shape=exposure.shape,
                                fields=exposure.fields,
                            )
                except Exception as exc:  # rolled back to its savepoint: this call alone
                    if not savepoints:
                        raise _CallFailed from exc
                    results[i] = None
                    failed[i] = (exc, list(tx.patient_ids))
                    continue
                done.append(tx)
            if deferred is not None and done and _appends_in_pipeline(runtime, session):
                # The kept rows and each call's audit append (the writer's own statement, the
                # chain linked by the database, in the order of the calls) in one pipeline.
                _send_and_audit(core, session, deferred, done, kind)
            else:
                if deferred is not None:
                    try:
                        session.flush()
                        deferred.send(session.connection())
                    except Exception as exc:  # one of the calls' rows (a twin's unique key...)
                        raise _CallFailed from exc
                # Audit last, as the kernel does: the audit lane's head is held from here to the commit.
                for tx in done:
                    seq = runtime.audit.append(session, core._record(kind, Outcome.SUCCESS, tx))
                    for hook in tx.after_audit:
                        hook(seq)
    except _CallFailed:
        raise
    except Exception as exc:
        raise GroupFailed(type(exc).__name__) from exc
    return _answer(core, guard, results, failed)


def _sql_writer(audit: Any) -> Any:
    """The audit trail's SQL writer (detection's watch wraps it: `watch` is called beside)."""
    return getattr(audit, "inner", audit)


def _appends_in_pipeline(runtime: Any, session: Session) -> bool:
    bind = session.get_bind()
    return (
        bind.dialect.name == "postgresql"
        and bind.dialect.driver == "psycopg"
        and isinstance(_sql_writer(runtime.audit), SqlAuditWriter)
    )


def _send_and_audit(
    core: GateCore, session: Session, deferred: DeferredRows, done: list[GuardedTx], kind: AuditKind
) -> None:
    """The group's kept rows, then the audit event of each call that succeeded, in ONE pipeline
    (PostgreSQL): the statements `SqlAuditWriter.append` would send one by one, each told to
    the writer (`appended`: the checkpoint, the metrics) and to detection's watch as `append`
    tells them. The audit lane is taken by the first append (all of them in it), held to the commit. A
    failure of any of it fails the group's first run: it runs again with savepoints (and the
    appends one by one)."""
    runtime = core._runtime
    writer = _sql_writer(runtime.audit)
    watch = getattr(runtime.audit, "watch", None)
    records = [core._record(kind, Outcome.SUCCESS, tx) for tx in done]
    started = time.perf_counter()
    try:
        session.flush()
        answers = deferred.send(session.connection(), then=[append_one_statement(r) for r in records])
    except Exception as exc:
        raise _CallFailed from exc
    seconds = (time.perf_counter() - started) / len(records)
    for tx, record, answer in zip(done, records, answers, strict=True):
        seq = int(answer[0])
        writer.appended(session, record, seq, seconds)
        if watch is not None:
            watch(session, record)
        for hook in tx.after_audit:
            hook(seq)


def _answer(
    core: GateCore, guard: Guard, results: list[Any], failed: dict[int, tuple[Exception, list[uuid.UUID]]]
) -> list[Any]:
    """Each failed call audited in its own transaction and turned into what the one path
    raises (`_fail`), in the order of the calls."""
    for i, (exc, attempted) in sorted(failed.items()):
        try:
            core._fail(guard, exc, attempted)
        except Exception as answered:
            results[i] = answered
    return results


def grouped(
    body: Callable[Concatenate[GuardedTx, P], T],
    prepare: Callable[[GuardedTx, Sequence[dict[str, Any]]], Any] | None = None,
) -> Callable[[GateCore, Sequence[dict[str, Any]]], list[T | Exception]]:
    """A facade method running several calls of `body` (each a dict of its keyword arguments)
    as one group (`run_group`); its audit kind is the operation's. `prepare(tx, calls)`: what
    the calls share, read once per attempt before them (`run_group`)."""
    guard: Guard | None = getattr(body, "__gate_guard__", None)
    if guard is None:
        raise TypeError(f"{body.__qualname__} is not declared @guarded")

    @functools.wraps(body)
    def call(self: GateCore, calls: Sequence[dict[str, Any]]) -> list[T | Exception]:
        runs = [functools.partial(body, **arguments) for arguments in calls]
        before: Prepare | None = None
        if prepare is not None:
            shared_by, arguments = prepare, list(calls)

            def before(tx: GuardedTx) -> Any:
                return shared_by(tx, arguments)

        return run_group(self, guard, runs, before)

    call.__gate_audit_kind__ = guard.kind  # type: ignore[attr-defined]
    return call
