"""THE GATE KERNEL: the one path every read and write of patient data takes.

The contract (what every guarded operation may rely on, and must keep):

- **An operation** is a domain function with a plain verb, keyword-only arguments after the
  guarded transaction: `def book(tx: GuardedTx, /, *, data: AppointmentInput) -> ...`, declared
  `@guarded(audit kind, resource type, targeted=...)` in its domain's operations module
  (carnet/patients, scheduling, records, prescriptions, coverage, billing; exports and
  break-the-glass in carnet/phi). It is reachable only as a method of the facade
  `carnet.phi.gate.Gate`, which binds it with `operation(...)`, one line each; import-linter
  forbids every other context from importing a domain's operations.
- **The kernel runs it** (`GateCore._run`; for the hottest reads on PostgreSQL, its fast variant
  `carnet.phi.fastpath`, the same steps in two round trips, failing through `_fail`, and
  `carnet.phi.fastpath_search` for a patient's chart sections), and
  nothing else does: the actor is usable
  (account active, grants active: carnet.access.context.resolve) -> the facility scope of the
  transaction (PostgreSQL row-level security) -> the body -> the exposures it declared
  (ledger, detection) -> the audit event, in the same transaction -> commit -> return.
- **The body** never opens a session, commits or rolls back. It decides before it queries:
  `tx.require` (a permission), `tx.authorize` (the policy, per patient; a list puts
  `care.patient_filter` IN its SQL), `tx.check_scopes` (a token's SMART scopes; an app token's
  launch patient and granular categories: `tx.check_compartment`, `tx.check_categories`,
  also applied by `care.visible_filter` and `relationships_of`). It decrypts
  only the fields the decision opened (`tx.dec`), declares every patient it shows
  (`tx.expose`), versions every write (`tx.snapshot`, `tx.bump` for If-Match) and returns a
  schema (carnet.phi.schemas), never an ORM object.
- **Refusals**: `Refused` (the policy said no) rolls everything back and is audited as a denial
  in its own transaction; for a `targeted` operation (it names one resource) it answers
  NotFound, exactly like a missing record, else Forbidden. Denials (Forbidden, step-up,
  containment, throttling) are audited as denials; InvalidInput, Conflict and NotFound as
  errors; a database lock cycle becomes a Conflict to retry; any other failure is audited by
  its type only (it may quote data) and re-raised. Nothing is returned on failure: fail closed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from sqlalchemy import Table, Uuid, bindparam, exists, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from carnet.access import scopes
from carnet.access.actor import Actor
from carnet.access.context import AccessContext, resolve
from carnet.access.permissions import Permission
from carnet.access.policy import (
    PATIENT_CONTACT,
    PATIENT_IDENTITY,
    Decision,
    Relationship,
    ResourceType,
    decide,
)
from carnet.access.scope import ALL_FACILITIES, enter_scope
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.crypto.keyring import Keyring
from carnet.db.base import detached
from carnet.db.prepared import DeferredRows, PreparedInsert, PreparedSelect, insert_rows
from carnet.detection.interfaces import Channel, SearchEvent
from carnet.identity.oauth import require_scope
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    CarnetError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StepUpRequired,
    Throttled,
)
from carnet.kernel.ids import new_id, parse_id
from carnet.operations.tracing import gate_step
from carnet.patients.models import Patient, ResourceVersion
from carnet.phi import care
from carnet.runtime import Runtime

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
RT = ResourceType

NOT_FOUND = "no such resource"
# Errors that mean "not allowed (now)": audited as denials.
_DENIALS = (Forbidden, AuthenticationRequired, AccountContained, StepUpRequired, Throttled)
_ERRORS = (InvalidInput, Conflict, NotFound)
IDENTIFYING = PATIENT_IDENTITY | PATIENT_CONTACT

# The SMART action a token's scopes must allow, by audit kind (reads and history: "read").
_SCOPE_ACTIONS = {
    AuditKind.PHI_SEARCH: "search",
    AuditKind.PHI_LIST: "search",
    AuditKind.PHI_CREATE: "create",
    AuditKind.PHI_UPDATE: "update",
    AuditKind.PHI_DELETE: "delete",
    AuditKind.PHI_MERGE: "update",
    AuditKind.PHI_UNMERGE: "update",
}

_PATIENTS = cast(Table, Patient.__table__)
_PATIENT_FOR_SHARE = PreparedSelect(
    select(_PATIENTS).where(_PATIENTS.c.id == bindparam("id", type_=Uuid())).with_for_update(read=True)
)
_PATIENT_COLUMNS = tuple(c.key for c in _PATIENTS.columns)
VERSION_ROWS = PreparedInsert(cast(Table, ResourceVersion.__table__))
_MERGED_IN = _PATIENTS.alias("merged_in")
# The record, and whether any duplicate was merged into it (most never were: no second query).
_PATIENT_BY_ID = select(
    _PATIENTS,
    exists().where(_MERGED_IN.c.merged_into_id == _PATIENTS.c.id).label("carnet_replaces_any"),
).where(_PATIENTS.c.id == bindparam("id", type_=Uuid()))


# A fast variant of an operation's steps: (the gate, its guard, the body bound to its arguments,
# the keyword arguments) -> (True, the result) when it ran the operation, (False, None) when it
# declined before doing anything.
FastVariant = Callable[["GateCore", "Guard", Callable[["GuardedTx"], Any], dict[str, Any]], tuple[bool, Any]]


class Refused(Exception):
    """The policy said no. Becomes NotFound (targeted) or Forbidden, after audit."""

    def __init__(self, reason: str, patient_ids: Sequence[uuid.UUID] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.patient_ids = list(patient_ids)


@dataclass(frozen=True)
class Guard:
    """What the kernel needs to run an operation: its audit kind, the resource type it is
    audited under, and whether it names one resource (a refusal then answers NotFound)."""

    kind: AuditKind
    resource: ResourceType
    targeted: bool


def guarded(kind: AuditKind, resource: ResourceType, *, targeted: bool) -> Callable[[F], F]:
    """Declare a domain function a guarded operation (see the module docstring). The function
    is unchanged: it still needs a GuardedTx, which only the kernel makes."""

    def mark(body: F) -> F:
        setattr(body, "__gate_guard__", Guard(kind, resource, targeted))  # noqa: B010
        return body

    return mark


def operation(body: Callable[Concatenate[GuardedTx, P], T]) -> Callable[Concatenate[GateCore, P], T]:
    """A facade method running `body` on the one path (`GateCore._run`). `__wrapped__` is the
    body, for a composite operation that runs others in its own transaction."""
    guard: Guard | None = getattr(body, "__gate_guard__", None)
    if guard is None:
        raise TypeError(f"{body.__qualname__} is not declared @guarded")
    kind, resource, targeted = guard.kind, guard.resource, guard.targeted

    @functools.wraps(body)
    def call(self: GateCore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        def run(tx: GuardedTx) -> T:
            return body(tx, *args, **kwargs)

        # A fast variant of these same steps (carnet.phi.fastpath: fewer round trips on
        # PostgreSQL), offered for a few hot reads; it declines, before doing anything, whenever
        # the case is not one it handles, and the one path below runs instead.
        fast: FastVariant | None = getattr(body, "__gate_fast__", None)
        if fast is not None:
            done, result = fast(self, Guard(kind, resource, targeted), run, kwargs)
            if done:
                return cast(T, result)
        return self._run(kind, resource, targeted, run)

    call.__gate_audit_kind__ = kind  # type: ignore[attr-defined]
    return call


def _serialise_on_sqlite(session: Session) -> None:
    """On SQLite, a gate transaction holds the database's one write lock from its first read.

    Python's sqlite3 runs SELECTs outside any transaction until the first write, so a check and
    the write it guards (no double booking, one stay in progress, no duplicate registration)
    would read one state and write over another. Every gate transaction writes (its audit
    event), so taking the write lock up front costs SQLite no concurrency it had: it orders
    what its audit append ordered anyway. PostgreSQL keeps row locks and FOR UPDATE."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


# PostgreSQL ended this transaction to break a lock cycle (deadlock), or could not serialise
# it: it rolled back whole, and the same request sent again can succeed.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
LOCK_CYCLE = (
    "another write held what this one needed while waiting for it (the database ended the"
    " cycle): nothing was written, try again"
)


def _lock_cycle(exc: BaseException) -> bool:
    """A deadlock (e.g. a transaction Bundle filing under both records of a merge, in the
    other order than the merge locks them) is a conflict to retry, not a server error."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


@dataclass
class Exposure:
    patient_ids: list[uuid.UUID]
    channel: Channel
    resource_type: str
    outside_care: list[uuid.UUID]
    fields: list[str]
    shape: SearchEvent | None = None


@dataclass
class GuardedTx:
    """One guarded transaction, what a domain operation receives: the session (scoped to the
    actor's facilities), the access context, and the shared steps (decide, look up and lock,
    decrypt, expose, version). Records what it touched, for the audit event and the ledger."""

    session: Session
    ctx: AccessContext
    actor: Actor
    keyring: Keyring
    resource_type: str
    kind: AuditKind = AuditKind.PHI_READ
    resource_ids: list[str] = field(default_factory=list)
    patient_ids: list[uuid.UUID] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    query: str | None = None
    break_glass_reason: str | None = None
    exposures: list[Exposure] = field(default_factory=list)
    after_audit: list[Callable[[int], None]] = field(default_factory=list)
    # Relationships computed in this transaction; a write that may change them clears it.
    relationships: dict[uuid.UUID, frozenset[Relationship]] = field(default_factory=dict)
    # A group's calls keep their plain rows here, inserted together at the group's end
    # (carnet.phi.grouped); None: `insert_rows` sends them at once.
    deferred: DeferredRows | None = None
    # What a group's calls share, read before them in its transaction (`grouped(prepare=...)`).
    group: Any = None
    # Patient rows this transaction already holds FOR SHARE (a group's, locked together):
    # `patient_to_file_under` answers them without reading them again.
    held_patients: dict[uuid.UUID, Sequence[Any]] = field(default_factory=dict)

    @property
    def now(self) -> dt.datetime:
        return self.ctx.now

    def require(self, permission: Permission) -> None:
        if not self.ctx.may(permission):
            raise Refused(f"missing permission {permission.value}")

    def patient(self, patient_id: str | uuid.UUID) -> Patient:
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        patient = self.session.get(Patient, pid) if pid is not None else None
        if patient is None:
            raise NotFound(NOT_FOUND)
        self.patient_ids.append(patient.id)
        return patient

    def patient_for_write(self, patient_id: str | uuid.UUID, *, exclusive: bool = False) -> Patient:
        """`patient` for a write that files (or changes) a record under the patient: the row is
        held until commit, FOR SHARE (`exclusive`: FOR NO KEY UPDATE, for a write that changes
        the patient row itself or must be alone on the patient), so a merge, which holds the
        row FOR NO KEY UPDATE while it re-files the patient's records, runs wholly before or
        wholly after this write (issue #9). The row is read as locked, the latest committed
        version: a merge that committed meanwhile shows in `merged_into_id`, which
        `authorize(write=True)` refuses ("merged into Patient/...: write there"). No-op lock on
        SQLite, where every gate transaction already holds the write lock
        (`_serialise_on_sqlite`). Reads never lock (`patient_to_read`).

        Lock order (PostgreSQL), the same in every writer so none can wait on another in a
        cycle: the facility's identity advisory lock (registration, identity change, merge),
        then patient rows (a merge: source, then target), then record rows, then the
        practitioner row of a booking and the invoice-number lock, then the audit lane's head."""
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        patient = (
            self.session.scalar(
                select(Patient)
                .where(Patient.id == pid)
                .with_for_update(read=not exclusive, key_share=exclusive)
                .execution_options(populate_existing=True)
            )
            if pid is not None
            else None
        )
        if patient is None:
            raise NotFound(NOT_FOUND)
        self.patient_ids.append(patient.id)
        return patient

    def patient_to_file_under(self, patient_id: str | uuid.UUID) -> Patient:
        """`patient_for_write` (FOR SHARE, the latest committed row) for a write that files
        records under the patient and never changes the patient row itself: one Core statement
        and a detached instance (`carnet.db.base.detached`), not the ORM's query and identity
        map. Read its fields; never change it."""
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        held = self.held_patients.get(pid) if pid is not None else None
        if held is not None:
            rows: Sequence[Sequence[Any]] = (held,)
        else:
            self.session.flush()  # a Core statement does not autoflush
            # A prepared statement on PostgreSQL (an ORU feed files every message under a patient).
            rows = _PATIENT_FOR_SHARE.all(self.session.connection(), {"id": pid}) if pid else ()
        if not rows:
            raise NotFound(NOT_FOUND)
        patient = detached(Patient, dict(zip(_PATIENT_COLUMNS, rows[0], strict=True)))
        self.patient_ids.append(patient.id)
        return patient

    def record_to_change(self, model: Any, record_id: str, *, exclusive: bool = False) -> tuple[Any, Patient]:
        """A record to amend and its patient, locked in the merge's order: the patient row first
        (`patient_for_write`), then the record's row (FOR UPDATE, its latest version). So an
        amendment either holds the patient before a merge and ends before the merge moves the
        record, or reads the record after the merge moved it and is made under the record kept."""
        rid = parse_id(record_id)
        row = self.session.get(model, rid) if rid is not None else None
        for _attempt in range(3):
            if row is None:
                raise NotFound(NOT_FOUND)
            owner = row.patient_id
            patient = self.patient_for_write(owner, exclusive=exclusive)
            row = self.session.get(model, rid, with_for_update=True, populate_existing=True)
            if row is not None and row.patient_id == owner:
                return row, patient
            # Moved by a merge that committed after the first read: lock the record kept instead.
        raise Conflict("the record was moved to another patient record meanwhile: reload and try again")

    def record_owner(self, patient_id: uuid.UUID, resource: ResourceType) -> Patient:
        """The patient whose chart holds a record now: a merged duplicate's records moved to the
        record it was merged into, while their earlier versions still name the duplicate."""
        patient = self.patient(patient_id)
        seen = {patient.id}
        while resource != RT.PATIENT and patient.merged_into_id is not None:
            if patient.merged_into_id in seen:
                raise NotFound(NOT_FOUND)  # a cycle cannot be made by merge_patients: fail closed
            patient = self.patient(patient.merged_into_id)
            seen.add(patient.id)
        return patient

    def patient_to_read(self, patient_id: str) -> tuple[Patient, bool]:
        """`patient` for an operation that only reads the record: one Core statement and a
        detached instance, not the ORM's query, identity map and change tracking (a third of
        the cost of the hottest read). Never pass the result to a write. Also says whether any
        duplicate was merged into the record."""
        pid = parse_id(patient_id)
        row = self.session.connection().execute(_PATIENT_BY_ID, {"id": pid}).first() if pid else None
        if row is None:
            raise NotFound(NOT_FOUND)
        columns = row._asdict()
        replaces_any = bool(columns.pop("carnet_replaces_any"))
        patient = detached(Patient, columns)
        self.patient_ids.append(patient.id)
        return patient, replaces_any

    def records(self, statement: Any) -> list[Any]:
        """The records a section's statement selects (asked after the decision). The fast
        variant serves them from its first pipeline when the statement is the one it sent."""
        return list(self.session.scalars(statement))

    def patients(self, statement: Any, params: dict[str, Any], *, few: bool = False) -> list[Patient]:
        """The patients a search's statement selects, its values bound (`params`), to read
        only. `few`: a bounded handful, whose relationships to the actor the fast variant
        reads in the same round trip (carnet.phi.fastpath_search)."""
        return list(self.session.scalars(statement, params))

    def relationships_of(self, patients: Iterable[care.InScope]) -> dict[uuid.UUID, frozenset[Relationship]]:
        wanted = list(patients)
        if len(wanted) == 1:  # a chart's patient (the general case below, for one)
            pid = wanted[0].id
            rels = self.relationships.get(pid)
            if rels is None:
                rels = care.relationships_of(self.session, self.ctx, wanted).get(pid, frozenset())
                self.relationships[pid] = rels
            return {pid: rels} if rels else {}
        missing = list({p.id: p for p in wanted if p.id not in self.relationships}.values())
        if missing:
            computed = care.relationships_of(self.session, self.ctx, missing)
            for p in missing:
                self.relationships[p.id] = computed.get(p.id, frozenset())
        return {p.id: self.relationships[p.id] for p in wanted if self.relationships[p.id]}

    def authorize(
        self,
        patient: Patient,
        resource: ResourceType,
        *,
        write: bool = False,
        permission: Permission | None = None,
        merged_ok: bool = False,
    ) -> Decision:
        self.check_scopes(resource)
        self.check_compartment(patient)
        rels = self.relationships_of([patient]).get(patient.id, frozenset())
        decision = decide(
            roles=self.ctx.roles, resource=resource, relationships=rels, write=write, permission=permission
        )
        if not decision.allowed:
            raise Refused(decision.reason, [patient.id])
        if write and patient.merged_into_id is not None and not merged_ok:
            # Its records moved to the record kept: a write here would file them on a duplicate.
            raise InvalidInput(
                f"this patient record was merged into Patient/{patient.merged_into_id}: write there"
            )
        self.reasons.append(decision.reason)
        if Relationship.BREAK_GLASS in rels and not rels & care.CARE:
            self.reasons.append("break-the-glass")
        return decision

    def check_scopes(self, resource: ResourceType) -> None:
        """A token's SMART scopes narrow what its roles allow (a browser session has none)."""
        if self.actor.scopes is None:
            return
        if self.kind == AuditKind.BREAK_GLASS_START:
            raise Refused("break-the-glass is not available to an access token")
        action = _SCOPE_ACTIONS.get(self.kind, "read")
        try:
            require_scope(self.actor, resource_type=resource.value, action=action)
        except Forbidden as exc:
            raise Refused(str(exc)) from None

    def check_compartment(self, patient: Patient) -> None:
        """An app token with patient/ scopes reaches its launch patient and no other."""
        if self.ctx.compartment is not None and patient.id != self.ctx.compartment:
            raise Refused("the app's token reaches only its launch patient", [patient.id])

    def category_limit(self, resource: ResourceType) -> frozenset[str] | None:
        """The categories of `resource` a granular token may read (None: not limited)."""
        return scopes.category_limit(self.actor.scopes, resource.value)

    def check_categories(self, resource: ResourceType, categories: Iterable[str]) -> None:
        """Refuse a record none of whose categories a granular token names (it looks missing)."""
        limit = self.category_limit(resource)
        if limit is not None and not limit & set(categories):
            raise Refused(f"the token's scopes do not name this {resource.value}'s category")

    def read_fields(self, rels: frozenset[Relationship], resource: ResourceType) -> frozenset[str]:
        if not scopes.reads(self.actor.scopes, resource):
            return frozenset()  # a write-only token sees nothing of what it writes
        decision = decide(roles=self.ctx.roles, resource=resource, relationships=rels)
        return decision.fields if decision.allowed else frozenset()

    def expose(
        self,
        patients: Sequence[uuid.UUID],
        channel: Channel,
        rels: dict[uuid.UUID, frozenset[Relationship]],
        fields: Iterable[str],
        *,
        resource: ResourceType | None = None,
        shape: SearchEvent | None = None,
    ) -> None:
        unique = list(dict.fromkeys(patients))
        if not unique and shape is None:
            return
        shown = set(fields)
        if channel is Channel.WRITE and not shown:
            return  # a write-only client: the answer shows nothing of the patient
        outside = [p for p in unique if not rels.get(p, frozenset()) & care.CARE]
        self.exposures.append(
            Exposure(
                patient_ids=unique,
                channel=channel,
                resource_type=(resource or RT(self.resource_type)).value,
                outside_care=outside,
                fields=sorted(shown & IDENTIFYING) or sorted(shown),
                shape=shape,
            )
        )
        self.patient_ids.extend(unique)

    def dec(self, blob: bytes | None, table: str, column: str, row_id: uuid.UUID) -> str | None:
        return self.keyring.decrypt(blob, table=table, column=column, row_id=row_id)

    def dec_row(
        self, table: str, row_id: uuid.UUID, blobs: Sequence[tuple[str, bytes | None]]
    ) -> list[str | None]:
        """`dec` of several columns (column, blob) of one row, in order."""
        return self.keyring.decrypt_row(table, row_id, blobs)

    def enc(
        self, value: str | None, facility_id: uuid.UUID, table: str, column: str, row_id: uuid.UUID
    ) -> bytes | None:
        return self.keyring.encrypt(value, facility_id=facility_id, table=table, column=column, row_id=row_id)

    def snapshot(
        self,
        resource: ResourceType,
        resource_id: uuid.UUID,
        version: int,
        patient: Patient,
        action: str,
        data: dict[str, Any],
    ) -> None:
        """Every write keeps an encrypted snapshot: amend, never overwrite."""
        row_id = new_id()
        body = json.dumps(data, default=str, sort_keys=True, ensure_ascii=False)
        self.session.add(
            ResourceVersion(
                id=row_id,
                resource_type=resource.value,
                resource_id=resource_id,
                version_id=version,
                patient_id=patient.id,
                facility_id=patient.facility_id,
                recorded_at=self.now,
                author_id=self.ctx.account_id,
                action=action,
                snapshot_ct=self.enc(body, patient.facility_id, "resource_versions", "snapshot", row_id),
            )
        )
        self.resource_ids.append(str(resource_id))

    def snapshots(
        self, patient: Patient, versions: Sequence[tuple[ResourceType, uuid.UUID, dict[str, Any], str]]
    ) -> None:
        """`snapshot` of several records of one patient written together, each (resource, id,
        content with its version_id, action): one INSERT for all of them (executemany), each
        encrypted as `snapshot` encrypts one."""
        rows = self.version_rows(patient, versions)
        if rows:  # Core on the transaction's connection: no ORM unit of work for plain rows
            self.session.connection().execute(insert(VERSION_ROWS.table), rows)

    def version_rows(
        self, patient: Patient, versions: Sequence[tuple[ResourceType, uuid.UUID, dict[str, Any], str]]
    ) -> list[dict[str, Any]]:
        """The rows `snapshots` inserts (each version encrypted), for a caller that inserts them
        with its own rows (`insert_rows`)."""
        rows = []
        for resource, resource_id, data, action in versions:
            row_id = new_id()
            body = json.dumps(data, default=str, sort_keys=True, ensure_ascii=False)
            ct = self.enc(body, patient.facility_id, "resource_versions", "snapshot", row_id)
            rows.append(
                {
                    "id": row_id,
                    "resource_type": resource.value,
                    "resource_id": resource_id,
                    "version_id": int(data.get("version_id") or 1),
                    "patient_id": patient.id,
                    "facility_id": patient.facility_id,
                    "recorded_at": self.now,
                    "author_id": self.ctx.account_id,
                    "action": action,
                    "snapshot_ct": ct,
                }
            )
            self.resource_ids.append(str(resource_id))
        return rows

    def insert_rows(self, batches: Sequence[tuple[PreparedInsert, Sequence[dict[str, Any]]]]) -> None:
        """Plain rows (every column named) inserted in this transaction, batch after batch: on
        PostgreSQL one pipeline of prepared statements (carnet.db.prepared), not the ORM's unit
        of work nor a round trip per statement. What the session holds pending goes first.
        In a group (`deferred`), the rows are kept and sent with the other calls' at its end:
        a call that would read such rows back first sends them (`send_deferred`)."""
        if self.deferred is not None:
            self.deferred.add(batches)
            return
        self.session.flush()
        insert_rows(self.session.connection(), batches)

    def send_deferred(self) -> None:
        """Insert the rows this transaction's group kept so far (none kept: nothing to do)."""
        if self.deferred is not None:
            self.session.flush()
            self.deferred.send(self.session.connection())

    def bump(self, model: Any, row: Any, expected_version: int, **values: Any) -> None:
        """Update a versioned row only if nobody changed it since `expected_version` (If-Match)."""
        if row.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        result = self.session.execute(
            update(model)
            .where(model.id == row.id, model.version_id == expected_version)
            .values(version_id=expected_version + 1, updated_at=self.now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the resource was changed by someone else: reload and try again")
        self.session.refresh(row)


class GateCore:
    """The one path (see the module docstring); `carnet.phi.gate.Gate` adds the operations."""

    def __init__(self, runtime: Runtime, actor: Actor) -> None:
        self._runtime = runtime
        self._keyring = runtime.keyring
        self.actor = actor

    def _run(
        self, kind: AuditKind, resource: ResourceType, targeted: bool, body: Callable[[GuardedTx], T]
    ) -> T:
        runtime = self._runtime
        attempted: list[uuid.UUID] = []
        try:
            with runtime.session_factory.begin() as session:
                _serialise_on_sqlite(session)
                with gate_step("context", kind=kind.value, resource=resource.value):
                    ctx = self._context(session)
                    if not ctx.permissions:
                        raise Refused("no active role grants this actor any permission")
                    enter_scope(session, ctx.facility_ids)
                tx = GuardedTx(
                    session=session,
                    ctx=ctx,
                    actor=self.actor,
                    keyring=self._keyring,
                    resource_type=resource.value,
                    kind=kind,
                )
                try:
                    # The operation: its policy decisions, queries, redaction and decryption.
                    with gate_step("operation", kind=kind.value, resource=resource.value):
                        result = body(tx)
                finally:
                    attempted = list(tx.patient_ids)
                for exposure in tx.exposures:
                    runtime.ledger.record(
                        session,
                        actor=self.actor,
                        patient_ids=exposure.patient_ids,
                        channel=exposure.channel,
                        resource_type=exposure.resource_type,
                        outside_care=exposure.outside_care,
                        query_shape=exposure.shape,
                        fields=exposure.fields,
                    )
                # Audit last: appending takes the chain-head lock until commit, so everything
                # before it (ledger, detection) stays outside that serialised section.
                seq = runtime.audit.append(session, self._record(kind, Outcome.SUCCESS, tx))
                for hook in tx.after_audit:
                    hook(seq)
            return result
        except Exception as exc:
            self._fail(Guard(kind, resource, targeted), exc, attempted)
            raise  # _fail always raises; this keeps type checkers sure of it

    def _fail(self, guard: Guard, exc: Exception, attempted: Sequence[uuid.UUID]) -> None:
        """A failed operation, after its transaction rolled back: audited in its own
        transaction, then raised as the caller must see it (always raises)."""
        kind, resource = guard.kind, guard.resource
        if isinstance(exc, Refused):
            self._audit_failure(kind, resource, Outcome.DENIED, exc.reason, exc.patient_ids or attempted)
            if guard.targeted:
                raise NotFound(NOT_FOUND) from None
            raise Forbidden("this account may not do this") from None
        if isinstance(exc, _DENIALS):
            self._audit_failure(kind, resource, Outcome.DENIED, f"{type(exc).__name__}: {exc}", attempted)
            raise exc
        if isinstance(exc, _ERRORS):
            self._audit_failure(kind, resource, Outcome.ERROR, f"{type(exc).__name__}: {exc}", attempted)
            if isinstance(exc, NotFound):
                raise NotFound(NOT_FOUND) from None  # same words as a refusal
            raise exc
        if _lock_cycle(exc):
            self._audit_failure(kind, resource, Outcome.ERROR, f"Conflict: {LOCK_CYCLE}", attempted)
            raise Conflict(LOCK_CYCLE) from None
        # Unknown errors may quote data: only their type is recorded.
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, CarnetError) else type(exc).__name__
        self._audit_failure(kind, resource, Outcome.ERROR, reason, attempted)
        raise exc

    def _context(self, session: Session) -> AccessContext:
        ctx = resolve(session, self.actor, now=clock.now(), contact=self._runtime.settings.security_contact)
        if ctx.patient_id is not None:
            # A patient's scope is the facility that manages their record.
            enter_scope(session, ALL_FACILITIES)
            facility = session.scalar(select(Patient.facility_id).where(Patient.id == ctx.patient_id))
            facilities = frozenset({facility}) if facility is not None else frozenset()
            ctx = dataclasses.replace(ctx, facility_ids=facilities, acting_facility_id=facility)
        return ctx

    def _record(self, kind: AuditKind, outcome: Outcome, tx: GuardedTx) -> AuditRecord:
        return AuditRecord(
            kind=kind,
            outcome=outcome,
            actor=self.actor,
            resource_type=tx.resource_type,
            resource_ids=tx.resource_ids[:200],
            patient_ids=tx.patient_ids,
            query=tx.query,
            policy_reason="; ".join(dict.fromkeys(tx.reasons))[:500] or None,
            break_glass_reason=tx.break_glass_reason,
        )

    def _audit_failure(
        self,
        kind: AuditKind,
        resource: ResourceType,
        outcome: Outcome,
        reason: str,
        patient_ids: Sequence[uuid.UUID],
    ) -> None:
        runtime = self._runtime
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=kind,
                    outcome=outcome,
                    actor=self.actor,
                    resource_type=resource.value,
                    patient_ids=list(patient_ids),
                    policy_reason=reason[:500],
                ),
            )
            if outcome == Outcome.DENIED:
                record_denial = getattr(runtime.ledger, "record_denial", None)
                if record_denial is not None:  # a ledger that predates denial counting
                    # A refused export counts apart: detection contains repeated tries.
                    channel = Channel.EXPORT if kind == AuditKind.PHI_EXPORT else None
                    record_denial(session, actor=self.actor, resource_type=resource.value, channel=channel)
