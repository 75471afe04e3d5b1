"""THE GATE: one object per request; the only way to read or write patient data.

Every public method runs the same path (see `Gate._run`):

    the actor is usable (account active, grants active)  -> carnet.access.context.resolve
    -> the facility scope of the transaction (PostgreSQL row-level security)
    -> the policy decides (carnet.access.policy.decide), its filter IN the SQL for lists
    -> query, decrypt, redact to the fields the policy opened
    -> audit event AND exposure ledger, in the same transaction -> return a schema

A refusal rolls everything back and is audited in its own transaction; a forbidden record
answers exactly like a missing one (NotFound). Any failure returns nothing (fail closed).
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

from sqlalchemy import Table, Uuid, and_, bindparam, exists, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.context import AccessContext, resolve
from carnet.access.exports import ExportScope, ExportStatus, listed_patients, status_of
from carnet.access.models import BreakGlassAccess, ExportRequest
from carnet.access.permissions import Permission
from carnet.access.policy import (
    BREAK_GLASS_DURATION,
    CARE_TEAM_MAX_DURATION,
    PATIENT_CONTACT,
    PATIENT_IDENTITY,
    PATIENT_LOCATE,
    REFERRAL_MAX_DURATION,
    SEARCH_MAX_COUNT,
    SEARCH_MAX_PAGE,
    STEP_UP_FRESHNESS,
    BreakGlassReason,
    Decision,
    Relationship,
    ResourceType,
    decide,
    granting_relationships,
)
from carnet.access.scope import ALL_FACILITIES, enter_scope
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.coverage.models import CardReading, Coverage
from carnet.crypto.blind import IndexKind, normalize_name
from carnet.detection.breakglass import alert_break_glass
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.detection.referrals import judge_care_relationship
from carnet.identity.models import Account
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
from carnet.org.models import Facility, Location, Practitioner
from carnet.patients.models import CareRelationship, Consent, ExportFile, Patient, ResourceVersion
from carnet.phi import care
from carnet.phi.schemas import (
    CONDITION_CLINICAL_STATUSES,
    CONDITION_VERIFICATION_STATUSES,
    AllergyInput,
    AllergyView,
    AppointmentInput,
    AppointmentView,
    BreakGlassGrant,
    CardReadingInput,
    CardReadingView,
    CareRelationshipInput,
    CareTeamView,
    ConditionInput,
    ConditionView,
    ConsentView,
    CoverageSection,
    CoverageView,
    DayAppointment,
    DayInpatient,
    DayList,
    DiagnosticReportInput,
    DiagnosticReportView,
    EncounterInput,
    EncounterView,
    ExportJobView,
    InvoiceInput,
    InvoiceLineView,
    InvoiceView,
    NoteVersionView,
    NoteView,
    ObservationInput,
    ObservationView,
    PatientChanges,
    PatientExport,
    PatientInput,
    PatientPage,
    PatientView,
    PaymentInput,
    PaymentView,
    PrescriptionInput,
    PrescriptionView,
    ProvenanceView,
    Schedule,
    ScheduleEntry,
    VersionView,
)
from carnet.phi.work import SqlFacilityWork
from carnet.prescriptions.models import Prescription
from carnet.records.models import (
    Allergy,
    ClinicalNote,
    Condition,
    DiagnosticReport,
    NoteVersion,
    Observation,
)
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment, Encounter

P = ParamSpec("P")
T = TypeVar("T")
RT = ResourceType

NOT_FOUND = "no such resource"
# Errors that mean "not allowed (now)": audited as denials.
_DENIALS = (Forbidden, AuthenticationRequired, AccountContained, StepUpRequired, Throttled)
_ERRORS = (InvalidInput, Conflict, NotFound)
IDENTIFYING = PATIENT_IDENTITY | PATIENT_CONTACT
# Name-only searches: under NAME_MIN_LETTERS is refused; under NAME_SPECIFIC_LETTERS counts as a
# partial (wildcard) search for detection, since short fragments sweep a care list.
NAME_MIN_LETTERS = 2
NAME_SPECIFIC_LETTERS = 4
CARE_SET_LIMIT = 2000  # a name search decrypts at most this many of the actor's own patients
HISTORY_LIMIT = 200
SECTION_LIMIT = 500
# Consent kinds: the one the policy honours (care.visible_filter reads the patient's flag).
OPPOSE_OTHER_FACILITIES = "oppose-other-facilities"
CONSENT_KINDS = frozenset({OPPOSE_OTHER_FACILITIES})
INACTIVE_APPOINTMENT = ("cancelled", "entered-in-error", "noshow")
SCHEDULE_MAX_DAYS = 7  # a practitioner's calendar: a day or a week at a time
SCHEDULE_PATIENT = PATIENT_LOCATE  # who an appointment is for: name, birth date, sex
ALL_INVOICE_FIELDS = frozenset(InvoiceView.model_fields) - {"visible"}
PATIENT_ENCRYPTED = {
    "ins": ("ins_ct", IndexKind.IDENTIFIER),
    "family": ("family_ct", IndexKind.FAMILY),
    "given": ("given_ct", IndexKind.GIVEN),
    "birth_date": ("birth_date_ct", IndexKind.BIRTH_DATE),
    "address": ("address_ct", None),
    "phone": ("phone_ct", IndexKind.PHONE),
    "email": ("email_ct", IndexKind.EMAIL),
}
_BI_COLUMNS = {
    IndexKind.IDENTIFIER: "ins_bi",
    IndexKind.FAMILY: "family_bi",
    IndexKind.GIVEN: "given_bi",
    IndexKind.BIRTH_DATE: "birth_date_bi",
    IndexKind.PHONE: "phone_bi",
    IndexKind.EMAIL: "email_bi",
}


_PATIENTS = cast(Table, Patient.__table__)
_MERGED_IN = _PATIENTS.alias("merged_in")
# The record, and whether any duplicate was merged into it (most never were: no second query).
_PATIENT_BY_ID = select(
    _PATIENTS,
    exists().where(_MERGED_IN.c.merged_into_id == _PATIENTS.c.id).label("carnet_replaces_any"),
).where(_PATIENTS.c.id == bindparam("id", type_=Uuid()))


class _Refused(Exception):
    """Internal: the policy said no. Becomes NotFound (targeted) or Forbidden, after audit."""

    def __init__(self, reason: str, patient_ids: Sequence[uuid.UUID] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.patient_ids = list(patient_ids)


class AllergyWarning(Conflict):
    """The patient has an active allergy to the prescribed substance; nothing was written."""


@dataclass
class _Exposure:
    patient_ids: list[uuid.UUID]
    channel: Channel
    resource_type: str
    outside_care: list[uuid.UUID]
    fields: list[str]
    shape: SearchEvent | None = None


@dataclass
class _Tx:
    """One guarded transaction: what it touched, for the audit event and the ledger."""

    session: Session
    ctx: AccessContext
    resource_type: str
    kind: AuditKind = AuditKind.PHI_READ
    resource_ids: list[str] = field(default_factory=list)
    patient_ids: list[uuid.UUID] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    query: str | None = None
    break_glass_reason: str | None = None
    exposures: list[_Exposure] = field(default_factory=list)
    after_audit: list[Callable[[int], None]] = field(default_factory=list)
    # Relationships computed in this transaction; a write that may change them clears it.
    relationships: dict[uuid.UUID, frozenset[Relationship]] = field(default_factory=dict)

    @property
    def now(self) -> dt.datetime:
        return self.ctx.now


def guarded(
    kind: AuditKind, resource: ResourceType, *, targeted: bool
) -> Callable[[Callable[Concatenate[Gate, _Tx, P], T]], Callable[Concatenate[Gate, P], T]]:
    """Make a gate operation: runs `Gate._run` around the body. `targeted`: it names one
    resource, so a refusal answers NotFound (indistinguishable from a missing record)."""

    def wrap(body: Callable[Concatenate[Gate, _Tx, P], T]) -> Callable[Concatenate[Gate, P], T]:
        @functools.wraps(body)
        def operation(self: Gate, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return self._run(kind, resource, targeted, lambda tx: body(self, tx, *args, **kwargs))

        operation.__gate_audit_kind__ = kind  # type: ignore[attr-defined]
        return operation

    return wrap


def _address_view(stored: str | None) -> dict[str, str] | None:
    """A stored address (JSON, FHIR-shaped: `line` may be a list) as flat text fields."""
    if stored is None:
        return None
    value = json.loads(stored)
    if not isinstance(value, dict):
        return None
    flat: dict[str, str] = {}
    for key, item in value.items():
        text = ", ".join(str(x) for x in item if x) if isinstance(item, list) else str(item or "")
        if text:
            flat[str(key)] = text
    return flat or None


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


def _s(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _redact(schema: type[T], data: dict[str, Any], fields: frozenset[str]) -> T:
    kept = {k: v for k, v in data.items() if k in fields}
    kept["id"] = data["id"]
    if "updated_at" in data:  # when the record last changed: metadata, not patient data
        kept["updated_at"] = data["updated_at"]
    return schema(**kept, visible=fields)  # type: ignore[call-arg]


class Gate:
    """The gate for one request of one actor (see the module docstring)."""

    def __init__(self, runtime: Runtime, actor: Actor) -> None:
        self._runtime = runtime
        self._keyring = runtime.keyring
        self.actor = actor

    # == the one path ===========================================================================
    def _run(self, kind: AuditKind, resource: ResourceType, targeted: bool, body: Callable[[_Tx], T]) -> T:
        runtime = self._runtime
        attempted: list[uuid.UUID] = []
        try:
            with runtime.session_factory.begin() as session:
                _serialise_on_sqlite(session)
                ctx = self._context(session)
                if not ctx.permissions:
                    raise _Refused("no active role grants this actor any permission")
                enter_scope(session, ctx.facility_ids)
                tx = _Tx(session=session, ctx=ctx, resource_type=resource.value, kind=kind)
                try:
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
        except _Refused as exc:
            self._audit_failure(kind, resource, Outcome.DENIED, exc.reason, exc.patient_ids or attempted)
            if targeted:
                raise NotFound(NOT_FOUND) from None
            raise Forbidden("this account may not do this") from None
        except _DENIALS as exc:
            self._audit_failure(kind, resource, Outcome.DENIED, f"{type(exc).__name__}: {exc}", attempted)
            raise
        except _ERRORS as exc:
            self._audit_failure(kind, resource, Outcome.ERROR, f"{type(exc).__name__}: {exc}", attempted)
            if isinstance(exc, NotFound):
                raise NotFound(NOT_FOUND) from None  # same words as a refusal
            raise
        except Exception as exc:
            if _lock_cycle(exc):
                self._audit_failure(kind, resource, Outcome.ERROR, f"Conflict: {LOCK_CYCLE}", attempted)
                raise Conflict(LOCK_CYCLE) from None
            # Unknown errors may quote data: only their type is recorded.
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, CarnetError) else type(exc).__name__
            self._audit_failure(kind, resource, Outcome.ERROR, reason, attempted)
            raise

    def _context(self, session: Session) -> AccessContext:
        ctx = resolve(session, self.actor, now=clock.now(), contact=self._runtime.settings.security_contact)
        if ctx.patient_id is not None:
            # A patient's scope is the facility that manages their record.
            enter_scope(session, ALL_FACILITIES)
            facility = session.scalar(select(Patient.facility_id).where(Patient.id == ctx.patient_id))
            facilities = frozenset({facility}) if facility is not None else frozenset()
            ctx = dataclasses.replace(ctx, facility_ids=facilities, acting_facility_id=facility)
        return ctx

    def _record(self, kind: AuditKind, outcome: Outcome, tx: _Tx) -> AuditRecord:
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

    # == shared steps ===========================================================================
    def _require(self, tx: _Tx, permission: Permission) -> None:
        if not tx.ctx.may(permission):
            raise _Refused(f"missing permission {permission.value}")

    def _patient(self, tx: _Tx, patient_id: str | uuid.UUID) -> Patient:
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        patient = tx.session.get(Patient, pid) if pid is not None else None
        if patient is None:
            raise NotFound(NOT_FOUND)
        tx.patient_ids.append(patient.id)
        return patient

    def _patient_for_write(self, tx: _Tx, patient_id: str | uuid.UUID, *, exclusive: bool = False) -> Patient:
        """`_patient` for a write that files (or changes) a record under the patient: the row is
        held until commit, FOR SHARE (`exclusive`: FOR NO KEY UPDATE, for a write that changes
        the patient row itself or must be alone on the patient), so a merge, which holds the
        row FOR NO KEY UPDATE while it re-files the patient's records, runs wholly before or
        wholly after this write (issue #9). The row is read as locked, the latest committed
        version: a merge that committed meanwhile shows in `merged_into_id`, which
        `_authorize(write=True)` refuses ("merged into Patient/...: write there"). No-op lock on
        SQLite, where every gate transaction already holds the write lock
        (`_serialise_on_sqlite`). Reads never lock (`_patient_to_read`).

        Lock order (PostgreSQL), the same in every writer so none can wait on another in a
        cycle: the facility's identity advisory lock (registration, identity change, merge),
        then patient rows (a merge: source, then target), then record rows, then the
        practitioner row of a booking and the invoice-number lock, then the audit chain head."""
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        patient = (
            tx.session.scalar(
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
        tx.patient_ids.append(patient.id)
        return patient

    def _record_to_change(
        self, tx: _Tx, model: Any, record_id: str, *, exclusive: bool = False
    ) -> tuple[Any, Patient]:
        """A record to amend and its patient, locked in the merge's order: the patient row first
        (`_patient_for_write`), then the record's row (FOR UPDATE, its latest version). So an
        amendment either holds the patient before a merge and ends before the merge moves the
        record, or reads the record after the merge moved it and is made under the record kept."""
        rid = parse_id(record_id)
        row = tx.session.get(model, rid) if rid is not None else None
        for _attempt in range(3):
            if row is None:
                raise NotFound(NOT_FOUND)
            owner = row.patient_id
            patient = self._patient_for_write(tx, owner, exclusive=exclusive)
            row = tx.session.get(model, rid, with_for_update=True, populate_existing=True)
            if row is not None and row.patient_id == owner:
                return row, patient
            # Moved by a merge that committed after the first read: lock the record kept instead.
        raise Conflict("the record was moved to another patient record meanwhile: reload and try again")

    def _record_owner(self, tx: _Tx, patient_id: uuid.UUID, resource: ResourceType) -> Patient:
        """The patient whose chart holds a record now: a merged duplicate's records moved to the
        record it was merged into, while their earlier versions still name the duplicate."""
        patient = self._patient(tx, patient_id)
        seen = {patient.id}
        while resource != RT.PATIENT and patient.merged_into_id is not None:
            if patient.merged_into_id in seen:
                raise NotFound(NOT_FOUND)  # a cycle cannot be made by merge_patients: fail closed
            patient = self._patient(tx, patient.merged_into_id)
            seen.add(patient.id)
        return patient

    def _patient_to_read(self, tx: _Tx, patient_id: str) -> tuple[Patient, bool]:
        """`_patient` for an operation that only reads the record: one Core statement and a
        detached instance, not the ORM's query, identity map and change tracking (a third of
        the cost of the hottest read). Never pass the result to a write. Also says whether any
        duplicate was merged into the record."""
        pid = parse_id(patient_id)
        row = tx.session.connection().execute(_PATIENT_BY_ID, {"id": pid}).first() if pid else None
        if row is None:
            raise NotFound(NOT_FOUND)
        columns = row._asdict()
        replaces_any = bool(columns.pop("carnet_replaces_any"))
        patient = Patient(**columns)
        tx.patient_ids.append(patient.id)
        return patient, replaces_any

    def _relationships(
        self, tx: _Tx, patients: Iterable[Patient]
    ) -> dict[uuid.UUID, frozenset[Relationship]]:
        wanted = list(patients)
        missing = [p for p in wanted if p.id not in tx.relationships]
        if missing:
            computed = care.relationships_of(tx.session, tx.ctx, missing)
            for p in missing:
                tx.relationships[p.id] = computed.get(p.id, frozenset())
        return {p.id: tx.relationships[p.id] for p in wanted if tx.relationships[p.id]}

    def _authorize(
        self,
        tx: _Tx,
        patient: Patient,
        resource: ResourceType,
        *,
        write: bool = False,
        permission: Permission | None = None,
        merged_ok: bool = False,
    ) -> Decision:
        self._check_scopes(tx, resource)
        rels = self._relationships(tx, [patient]).get(patient.id, frozenset())
        decision = decide(
            roles=tx.ctx.roles, resource=resource, relationships=rels, write=write, permission=permission
        )
        if not decision.allowed:
            raise _Refused(decision.reason, [patient.id])
        if write and patient.merged_into_id is not None and not merged_ok:
            # Its records moved to the record kept: a write here would file them on a duplicate.
            raise InvalidInput(
                f"this patient record was merged into Patient/{patient.merged_into_id}: write there"
            )
        tx.reasons.append(decision.reason)
        if Relationship.BREAK_GLASS in rels and not rels & care.CARE:
            tx.reasons.append("break-the-glass")
        return decision

    def _check_scopes(self, tx: _Tx, resource: ResourceType) -> None:
        """A token's SMART scopes narrow what its roles allow (a browser session has none)."""
        if self.actor.scopes is None:
            return
        if tx.kind == AuditKind.BREAK_GLASS_START:
            raise _Refused("break-the-glass is not available to an access token")
        action = _SCOPE_ACTIONS.get(tx.kind, "read")
        try:
            require_scope(self.actor, resource_type=resource.value, action=action)
        except Forbidden as exc:
            raise _Refused(str(exc)) from None

    def _read_fields(self, tx: _Tx, rels: frozenset[Relationship], resource: ResourceType) -> frozenset[str]:
        decision = decide(roles=tx.ctx.roles, resource=resource, relationships=rels)
        return decision.fields if decision.allowed else frozenset()

    def _expose(
        self,
        tx: _Tx,
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
        outside = [p for p in unique if not rels.get(p, frozenset()) & care.CARE]
        tx.exposures.append(
            _Exposure(
                patient_ids=unique,
                channel=channel,
                resource_type=(resource or RT(tx.resource_type)).value,
                outside_care=outside,
                fields=sorted(set(fields) & IDENTIFYING) or sorted(set(fields)),
                shape=shape,
            )
        )
        tx.patient_ids.extend(unique)

    def _dec(self, blob: bytes | None, table: str, column: str, row_id: uuid.UUID) -> str | None:
        return self._keyring.decrypt(blob, table=table, column=column, row_id=row_id)

    def _enc(
        self, value: str | None, facility_id: uuid.UUID, table: str, column: str, row_id: uuid.UUID
    ) -> bytes | None:
        return self._keyring.encrypt(
            value, facility_id=facility_id, table=table, column=column, row_id=row_id
        )

    def _patient_data(self, patient: Patient, fields: frozenset[str]) -> dict[str, Any]:
        """Decrypt only what the actor may see: what is not opened is not even decrypted."""
        data: dict[str, Any] = {
            "id": str(patient.id),
            "updated_at": patient.updated_at,
            "facility_id": str(patient.facility_id),
            "version_id": patient.version_id,
            "gender": patient.gender,
            "active": patient.active,
            "designated_physician_id": _s(patient.designated_physician_id),
            "opposes_other_facilities": patient.opposes_other_facilities,
            "merged_into_id": _s(patient.merged_into_id),
        }
        for name, (column, _kind) in PATIENT_ENCRYPTED.items():
            if name in fields:
                plain = self._dec(getattr(patient, column), "patients", name, patient.id)
                data[name] = _address_view(plain) if name == "address" else plain
        return data

    def _patient_view(self, patient: Patient, fields: frozenset[str]) -> PatientView:
        return _redact(PatientView, self._patient_data(patient, fields), fields)

    def _snapshot(
        self,
        tx: _Tx,
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
        tx.session.add(
            ResourceVersion(
                id=row_id,
                resource_type=resource.value,
                resource_id=resource_id,
                version_id=version,
                patient_id=patient.id,
                facility_id=patient.facility_id,
                recorded_at=tx.now,
                author_id=tx.ctx.account_id,
                action=action,
                snapshot_ct=self._enc(body, patient.facility_id, "resource_versions", "snapshot", row_id),
            )
        )
        tx.resource_ids.append(str(resource_id))

    def _bump(self, tx: _Tx, model: Any, row: Any, expected_version: int, **values: Any) -> None:
        """Update a versioned row only if nobody changed it since `expected_version` (If-Match)."""
        if row.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        result = tx.session.execute(
            update(model)
            .where(model.id == row.id, model.version_id == expected_version)
            .values(version_id=expected_version + 1, updated_at=tx.now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the resource was changed by someone else: reload and try again")
        tx.session.refresh(row)

    # == reads ==================================================================================
    @guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
    def read_patient(self, tx: _Tx, /, *, patient_id: str) -> PatientView:
        """A patient's chart identity, redacted to what the actor's role and relationship open."""
        patient, replaces_any = self._patient_to_read(tx, patient_id)
        decision = self._authorize(tx, patient, RT.PATIENT)
        tx.resource_ids.append(str(patient.id))
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, decision.fields)
        view = self._patient_view(patient, decision.fields)
        return self._with_replaces(tx, patient, view) if replaces_any else view

    def _replaced(self, tx: _Tx, patient_id: uuid.UUID) -> list[uuid.UUID]:
        """The records merged into this one, and those merged into them (at most 100)."""
        found: list[uuid.UUID] = []
        frontier = [patient_id]
        while frontier and len(found) < 100:
            frontier = [
                p
                for p in tx.session.scalars(
                    select(Patient.id).where(Patient.merged_into_id.in_(frontier)).limit(100)
                )
                if p not in found and p != patient_id
            ]
            found.extend(frontier)
        return found[:100]

    def _with_replaces(self, tx: _Tx, patient: Patient, view: PatientView) -> PatientView:
        """The duplicates merged into this record (FHIR Patient.link type replaces), if shown."""
        if "replaces" not in view.visible:
            return view
        replaced = tx.session.scalars(
            select(Patient.id).where(Patient.merged_into_id == patient.id).order_by(Patient.id).limit(100)
        )
        return view.model_copy(update={"replaces": [str(r) for r in replaced] or None})

    @guarded(AuditKind.PHI_SEARCH, RT.PATIENT, targeted=False)
    def search_patients(
        self,
        tx: _Tx,
        /,
        *,
        identifier: str | None = None,
        family: str | None = None,
        given: str | None = None,
        birth_date: dt.date | None = None,
        count: int = SEARCH_MAX_COUNT,
        page: int = 1,
    ) -> PatientPage:
        """Search never browses: an identifier, or a family name with a birth date, or a name
        among the actor's own patients. At most SEARCH_MAX_COUNT results, SEARCH_MAX_PAGE pages."""
        self._require(tx, Permission.PATIENT_SEARCH)
        self._check_scopes(tx, RT.PATIENT)
        if not 1 <= count <= SEARCH_MAX_COUNT:
            raise InvalidInput(f"count must be between 1 and {SEARCH_MAX_COUNT}")
        if not 1 <= page <= SEARCH_MAX_PAGE:
            raise InvalidInput(f"page must be between 1 and {SEARCH_MAX_PAGE}: refine the search")
        rels_open = granting_relationships(roles=tx.ctx.roles, resource=RT.PATIENT)
        blind = self._keyring.blind
        identifier = (identifier or "").strip() or None
        family = (family or "").strip() or None
        given = (given or "").strip() or None
        if identifier is not None:
            shape = SearchShape.IDENTIFIER
            tx.query = "identifier"
            criteria = [Patient.ins_bi == blind.index(IndexKind.IDENTIFIER, identifier)]
            scope = care.patient_filter(tx.ctx, rels_open)
            digest_source = f"identifier={identifier}"
        elif family is not None and birth_date is not None:
            shape = SearchShape.NAME
            tx.query = "family,birthdate" + (",given" if given else "")
            criteria = [
                Patient.family_bi == blind.index(IndexKind.FAMILY, family),
                Patient.birth_date_bi == blind.index(IndexKind.BIRTH_DATE, birth_date.isoformat()),
            ]
            if given is not None:
                criteria.append(Patient.given_bi == blind.index(IndexKind.GIVEN, given))
            scope = care.patient_filter(tx.ctx, rels_open)
            digest_source = f"family={normalize_name(family)}|birth={birth_date}|given={given or ''}"
        elif family is not None or given is not None:
            # A name alone: only among the actor's own patients, matched after decryption.
            # One letter is browsing, not looking someone up; a few letters is a partial sweep.
            terms = [normalize_name(v) for v in (family, given) if v]
            if max(len(t.replace(" ", "")) for t in terms) < NAME_MIN_LETTERS:
                raise InvalidInput(f"a name search needs at least {NAME_MIN_LETTERS} letters")
            specific = any(len(t.replace(" ", "")) >= NAME_SPECIFIC_LETTERS for t in terms)
            shape = SearchShape.NAME if specific else SearchShape.WILDCARD
            tx.query = ",".join(n for n, v in (("family", family), ("given", given)) if v)
            criteria = []
            scope = care.patient_filter(tx.ctx, rels_open & care.CARE)
            digest_source = f"name={normalize_name(family or '')}|{normalize_name(given or '')}"
        else:
            raise InvalidInput(
                "a patient search needs an identifier, or a family name with a birth date,"
                " or a name among your own patients"
            )
        tx.query += f";count={count};page={page}"
        event = SearchEvent(
            shape=shape,
            term_digest=blind.index(IndexKind.IDENTIFIER, digest_source).hex(),
            page=page,
        )
        if scope is None:
            if criteria:
                raise _Refused("no relationship opens Patient to this role")
            self._expose(tx, [], Channel.SEARCH, {}, (), shape=event)
            return PatientPage(items=[], page=page, count=count, has_more=False)
        # A merged duplicate is found through the record it was merged into, never by a search.
        query = select(Patient).where(scope, Patient.merged_into_id.is_(None), *criteria).order_by(Patient.id)
        if criteria:
            found = list(tx.session.scalars(query.offset((page - 1) * count).limit(count + 1)))
        else:
            found = self._match_names(tx, query, family, given)[(page - 1) * count : page * count + 1]
        has_more = len(found) > count
        found = found[:count]
        rels = self._relationships(tx, found)
        if criteria:  # a specific search locates what it finds (see Relationship.LOCATED)
            rels = {pid: r | {Relationship.LOCATED} for pid, r in rels.items()}
        items: list[PatientView] = []
        shown: list[uuid.UUID] = []
        fields_shown: set[str] = set()
        for patient in found:
            fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
            if not fields:
                continue  # the SQL filter should have kept it out; fail closed anyway
            items.append(self._patient_view(patient, fields))
            shown.append(patient.id)
            fields_shown |= fields
        tx.resource_ids.extend(str(p) for p in shown)
        tx.reasons.append(f"search by {shape.value}")
        self._expose(tx, shown, Channel.SEARCH, rels, fields_shown, shape=event)
        return PatientPage(items=items, page=page, count=count, has_more=has_more)

    def _match_names(self, tx: _Tx, query: Any, family: str | None, given: str | None) -> list[Patient]:
        wanted_family = normalize_name(family or "")
        wanted_given = normalize_name(given or "")
        matches = []
        for patient in tx.session.scalars(query.limit(CARE_SET_LIMIT)):
            if wanted_family:
                plain = self._dec(patient.family_ct, "patients", "family", patient.id) or ""
                if wanted_family not in normalize_name(plain):
                    continue
            if wanted_given:
                plain = self._dec(patient.given_ct, "patients", "given", patient.id) or ""
                if wanted_given not in normalize_name(plain):
                    continue
            matches.append(patient)
        return matches

    @guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
    def day_list(self, tx: _Tx, /, *, day: dt.date | None = None) -> DayList:
        """The clinician's day: their appointments of the day and their current inpatients."""
        self._require(tx, Permission.DAY_LIST_READ)
        for listed in (RT.PATIENT, RT.APPOINTMENT, RT.ENCOUNTER):
            self._check_scopes(tx, listed)
        me = tx.ctx.practitioner_id
        if me is None:
            raise _Refused("a day list belongs to a practitioner")
        day = day or tx.now.date()
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        visible = care.visible_filter(tx.ctx)
        appointments = tx.session.execute(
            select(Appointment, Patient)
            .join(Patient, Patient.id == Appointment.patient_id)
            .where(
                Appointment.practitioner_id == me,
                Appointment.start_at >= start,
                Appointment.start_at < start + dt.timedelta(days=1),
                Appointment.status.not_in(INACTIVE_APPOINTMENT),
                visible,
            )
            .order_by(Appointment.start_at)
            .limit(SECTION_LIMIT)
        ).all()
        ward_or_attending = care.patient_filter(tx.ctx, {Relationship.ATTENDING, Relationship.WARD})
        stays: list[Any] = []
        if ward_or_attending is not None:
            stays = list(
                tx.session.execute(
                    select(Encounter, Patient)
                    .join(Patient, Patient.id == Encounter.patient_id)
                    .where(
                        Encounter.status == "in-progress", Encounter.kind == "inpatient", ward_or_attending
                    )
                    .order_by(Encounter.start_at)
                    .limit(SECTION_LIMIT)
                ).all()
            )
        rels = self._relationships(tx, [p for _a, p in appointments] + [p for _e, p in stays])
        shown: list[uuid.UUID] = []
        fields_shown: set[str] = set()
        day_appointments = []
        for appointment, patient in appointments:
            p_fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
            a_fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.APPOINTMENT)
            if not p_fields or not a_fields:
                continue
            day_appointments.append(
                DayAppointment(
                    appointment=_redact(
                        AppointmentView, self._appointment_data(appointment, a_fields), a_fields
                    ),
                    patient=self._patient_view(patient, p_fields),
                )
            )
            shown.append(patient.id)
            fields_shown |= p_fields
            tx.resource_ids.append(str(appointment.id))
        inpatients = []
        for encounter, patient in stays:
            p_fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
            e_fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.ENCOUNTER)
            if not p_fields or not e_fields:
                continue
            inpatients.append(
                DayInpatient(
                    encounter=_redact(EncounterView, _encounter_data(encounter), e_fields),
                    patient=self._patient_view(patient, p_fields),
                )
            )
            shown.append(patient.id)
            fields_shown |= p_fields
            tx.resource_ids.append(str(encounter.id))
        tx.query = f"day={day.isoformat()}"
        tx.reasons.append("own day list")
        event = SearchEvent(shape=SearchShape.LIST, term_digest=f"day-list:{day.isoformat()}", page=1)
        self._expose(tx, shown, Channel.LIST, rels, fields_shown, shape=event)
        return DayList(day=day, appointments=day_appointments, inpatients=inpatients)

    # -- chart sections -------------------------------------------------------------------------
    def _section(
        self, tx: _Tx, patient_id: str, resource: ResourceType, query: Any
    ) -> tuple[list[Any], frozenset[str]]:
        patient = self._patient(tx, patient_id)
        decision = self._authorize(tx, patient, resource)
        rows = list(tx.session.scalars(query.limit(SECTION_LIMIT)))
        tx.resource_ids.extend(str(r.id) for r in rows)
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, decision.fields, resource=resource)
        return rows, decision.fields

    @guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
    def list_allergies(self, tx: _Tx, /, *, patient_id: str) -> list[AllergyView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.ALLERGY,
            select(Allergy).where(Allergy.patient_id == pid).order_by(Allergy.created_at),
        )
        return [_redact(AllergyView, _allergy_data(r), fields) for r in rows]

    @guarded(AuditKind.PHI_READ, RT.NOTE, targeted=True)
    def list_notes(self, tx: _Tx, /, *, patient_id: str) -> list[NoteView]:
        """Clinical notes with every version of their text (amendments never overwrite)."""
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.NOTE,
            select(ClinicalNote).where(ClinicalNote.patient_id == pid).order_by(ClinicalNote.created_at),
        )
        return [
            _redact(NoteView, self._note_data(tx, r, with_text="versions" in fields), fields) for r in rows
        ]

    @guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
    def list_prescriptions(self, tx: _Tx, /, *, patient_id: str) -> list[PrescriptionView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.PRESCRIPTION,
            select(Prescription)
            .where(Prescription.patient_id == pid)
            .order_by(Prescription.authored_at.desc()),
        )
        return [_redact(PrescriptionView, _prescription_data(r), fields) for r in rows]

    @guarded(AuditKind.PHI_READ, RT.COVERAGE, targeted=True)
    def list_coverage(self, tx: _Tx, /, *, patient_id: str) -> CoverageSection:
        """Coverages and health-card readings (the readings only for roles that may see them)."""
        patient = self._patient(tx, patient_id)
        decision = self._authorize(tx, patient, RT.COVERAGE)
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, decision.fields, resource=RT.COVERAGE)
        return self._coverage_section(tx, patient, decision.fields)

    def _coverage_section(self, tx: _Tx, patient: Patient, fields: frozenset[str]) -> CoverageSection:
        rows = list(
            tx.session.scalars(
                select(Coverage)
                .where(Coverage.patient_id == patient.id)
                .order_by(Coverage.period_start.desc())
                .limit(SECTION_LIMIT)
            )
        )
        tx.resource_ids.extend(str(r.id) for r in rows)
        coverages = [
            _redact(
                CoverageView,
                {
                    "id": str(r.id),
                    "updated_at": r.updated_at,
                    "patient_id": str(r.patient_id),
                    "kind": r.kind,
                    "payer": r.payer,
                    "member_id": self._dec(r.member_id_ct, "coverages", "member_id", r.id)
                    if "member_id" in fields
                    else None,
                    "status": r.status,
                    "period_start": r.period_start,
                    "period_end": r.period_end,
                },
                fields,
            )
            for r in rows
        ]
        readings: list[CardReadingView] = []
        rels = self._relationships(tx, [patient]).get(patient.id, frozenset())
        card_fields = self._read_fields(tx, rels, RT.CARD_READING)
        if card_fields and tx.ctx.may(Permission.CARD_READING_READ):
            for r in tx.session.scalars(
                select(CardReading)
                .where(CardReading.patient_id == patient.id)
                .order_by(CardReading.read_at.desc())
                .limit(SECTION_LIMIT)
            ):
                payload = (
                    self._dec(r.payload_ct, "card_readings", "payload", r.id)
                    if "payload" in card_fields
                    else None
                )
                readings.append(
                    _redact(
                        CardReadingView,
                        {
                            "id": str(r.id),
                            "patient_id": str(r.patient_id),
                            "coverage_id": _s(r.coverage_id),
                            "read_at": r.read_at,
                            "card_serial": self._dec(r.card_serial_ct, "card_readings", "card_serial", r.id)
                            if "card_serial" in card_fields
                            else None,
                            "payload": json.loads(payload) if payload else None,
                        },
                        card_fields,
                    )
                )
                tx.resource_ids.append(str(r.id))
        return CoverageSection(coverages=coverages, card_readings=readings)

    @guarded(AuditKind.PHI_READ, RT.APPOINTMENT, targeted=True)
    def list_appointments(self, tx: _Tx, /, *, patient_id: str) -> list[AppointmentView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.APPOINTMENT,
            select(Appointment).where(Appointment.patient_id == pid).order_by(Appointment.start_at.desc()),
        )
        return [_redact(AppointmentView, self._appointment_data(r, fields), fields) for r in rows]

    @guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
    def list_invoices(self, tx: _Tx, /, *, patient_id: str) -> list[InvoiceView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.INVOICE,
            select(Invoice).where(Invoice.patient_id == pid).order_by(Invoice.number),
        )
        return [self._invoice_view(tx, r, fields) for r in rows]

    def _invoice_view(self, tx: _Tx, r: Invoice, fields: frozenset[str]) -> InvoiceView:
        lines = [
            InvoiceLineView(code=line.code, description=line.description, amount_cents=line.amount_cents)
            for line in tx.session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == r.id))
        ]
        payments = [
            PaymentView(id=str(p.id), amount_cents=p.amount_cents, method=p.method, received_at=p.received_at)
            for p in tx.session.scalars(
                select(Payment).where(Payment.invoice_id == r.id).order_by(Payment.received_at)
            )
        ]
        data = {
            "id": str(r.id),
            "updated_at": r.updated_at,
            "patient_id": str(r.patient_id),
            "number": r.number,
            "status": r.status,
            "issued_at": r.issued_at,
            "total_cents": r.total_cents,
            "currency": r.currency,
            "lines": lines,
            "version_id": r.version_id,
            "paid_cents": sum(p.amount_cents for p in payments),
            "payments": payments,
            "encounter_id": _s(r.encounter_id),
            "cancel_reason": r.cancel_reason,
        }
        return _redact(InvoiceView, data, fields)

    @guarded(AuditKind.PHI_READ, RT.OBSERVATION, targeted=True)
    def list_observations(self, tx: _Tx, /, *, patient_id: str) -> list[ObservationView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.OBSERVATION,
            select(Observation)
            .where(Observation.patient_id == pid)
            .order_by(Observation.effective_at.desc()),
        )
        return [
            _redact(
                ObservationView,
                {
                    "id": str(r.id),
                    "updated_at": r.updated_at,
                    "patient_id": str(r.patient_id),
                    "category": r.category,
                    "code": r.code,
                    "display": r.display,
                    "value_number": r.value_number,
                    "unit": r.unit,
                    "value_text": r.value_text,
                    "effective_at": r.effective_at,
                    "status": r.status,
                },
                fields,
            )
            for r in rows
        ]

    @guarded(AuditKind.PHI_READ, RT.CONDITION, targeted=True)
    def list_conditions(self, tx: _Tx, /, *, patient_id: str) -> list[ConditionView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.CONDITION,
            select(Condition).where(Condition.patient_id == pid).order_by(Condition.created_at),
        )
        return [_redact(ConditionView, _condition_data(r), fields) for r in rows]

    @guarded(AuditKind.PHI_HISTORY, RT.PATIENT, targeted=True)
    def history(self, tx: _Tx, /, *, resource_type: str, resource_id: str) -> list[VersionView]:
        """Every stored version of one resource, each redacted like a read of that resource."""
        self._require(tx, Permission.HISTORY_READ)
        try:
            kind = ResourceType(resource_type)
        except ValueError:
            raise _Refused("unknown resource type") from None
        tx.resource_type = kind.value
        rid = parse_id(resource_id)
        if rid is None:
            raise NotFound(NOT_FOUND)
        versions = list(
            tx.session.scalars(
                select(ResourceVersion)
                .where(ResourceVersion.resource_type == kind.value, ResourceVersion.resource_id == rid)
                .order_by(ResourceVersion.version_id)
                .limit(HISTORY_LIMIT)
            )
        )
        if not versions:
            raise NotFound(NOT_FOUND)
        patient = self._record_owner(tx, versions[0].patient_id, kind)
        decision = self._authorize(tx, patient, kind)
        tx.resource_ids.append(str(rid))
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, decision.fields, resource=kind)
        out = []
        for v in versions:
            raw = self._dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}"
            data = {k: val for k, val in json.loads(raw).items() if k in decision.fields}
            out.append(
                VersionView(
                    resource_type=v.resource_type,
                    resource_id=str(v.resource_id),
                    version_id=v.version_id,
                    recorded_at=v.recorded_at,
                    author_id=_s(v.author_id),
                    action=v.action,
                    data=data,
                )
            )
        return out

    # == writes =================================================================================
    @guarded(AuditKind.PHI_CREATE, RT.PATIENT, targeted=False)
    def register_patient(self, tx: _Tx, /, *, data: PatientInput) -> PatientView:
        """Register a patient: encrypted fields, blind indexes, duplicate check, version 1."""
        self._require(tx, Permission.PATIENT_CREATE)
        self._check_scopes(tx, RT.PATIENT)
        facility_id = parse_id(data.facility_id)
        if facility_id is None or facility_id not in tx.ctx.facility_ids:
            raise _Refused("registration outside the actor's facilities")
        # A new patient has no relationship yet: the permission and the facility scope decide.
        tx.reasons.append(f"{Permission.PATIENT_CREATE.value} in the actor's facility")
        designated = self._practitioner_id(tx, data.designated_physician_id, facility_id)
        values = data.model_dump(
            exclude={"facility_id", "designated_physician_id", "opposes_other_facilities"}
        )
        self._check_duplicate(tx, facility_id, values, exclude=None)
        patient_id = new_id()
        patient = Patient(
            id=patient_id,
            facility_id=facility_id,
            gender=data.gender,
            designated_physician_id=designated,
            opposes_other_facilities=data.opposes_other_facilities,
            active=True,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
            **self._patient_columns(facility_id, patient_id, values),
        )
        tx.session.add(patient)
        tx.session.flush()
        tx.patient_ids.append(patient.id)
        full = self._patient_data(patient, PATIENT_IDENTITY | PATIENT_CONTACT)
        self._snapshot(tx, RT.PATIENT, patient.id, 1, patient, "create", full)
        if patient.opposes_other_facilities:
            self._consent_follows_flag(tx, patient)
        return self._written_patient(tx, patient)

    @guarded(AuditKind.PHI_UPDATE, RT.PATIENT, targeted=True)
    def update_patient(
        self, tx: _Tx, /, *, patient_id: str, expected_version: int, changes: PatientChanges
    ) -> PatientView:
        """Change a patient's identity or contact; `expected_version` is the If-Match."""
        patient = self._patient(tx, patient_id)
        self._authorize(tx, patient, RT.PATIENT, write=True)
        given_fields = changes.model_dump(exclude_unset=True, exclude_none=True)
        if not given_fields:
            raise InvalidInput("nothing to change")
        values: dict[str, Any] = {}
        if "designated_physician_id" in given_fields:
            values["designated_physician_id"] = self._practitioner_id(
                tx, changes.designated_physician_id, patient.facility_id
            )
        if "gender" in given_fields:
            values["gender"] = changes.gender
        if "opposes_other_facilities" in given_fields:
            values["opposes_other_facilities"] = changes.opposes_other_facilities
        encrypted = {k: v for k, v in given_fields.items() if k in PATIENT_ENCRYPTED}
        if encrypted:
            current = self._patient_data(patient, PATIENT_IDENTITY | PATIENT_CONTACT)
            merged = {k: current.get(k) for k in PATIENT_ENCRYPTED} | encrypted
            if any(k in encrypted for k in ("ins", "family", "given", "birth_date")):
                self._check_duplicate(tx, patient.facility_id, merged, exclude=patient.id)
            values |= self._patient_columns(patient.facility_id, patient.id, encrypted)
        self._bump(tx, Patient, patient, expected_version, **values)
        full = self._patient_data(patient, PATIENT_IDENTITY | PATIENT_CONTACT)
        self._snapshot(tx, RT.PATIENT, patient.id, patient.version_id, patient, "update", full)
        if "opposes_other_facilities" in given_fields:
            self._consent_follows_flag(tx, patient)
        return self._written_patient(tx, patient)

    def _consent_follows_flag(self, tx: _Tx, patient: Patient) -> None:
        """A restriction set on the patient record itself (registration, a Patient update) is
        recorded as a Consent too, so the patient's decisions are all listed in one place."""
        active = list(
            tx.session.scalars(
                select(Consent).where(
                    Consent.patient_id == patient.id,
                    Consent.kind == OPPOSE_OTHER_FACILITIES,
                    Consent.status == "active",
                )
            )
        )
        if patient.opposes_other_facilities and not active:
            consent = Consent(
                id=new_id(),
                patient_id=patient.id,
                facility_id=patient.facility_id,
                kind=OPPOSE_OTHER_FACILITIES,
                status="active",
                recorded_by=tx.ctx.account_id,
                recorded_at=tx.now,
                version_id=1,
                created_at=tx.now,
                updated_at=tx.now,
            )
            tx.session.add(consent)
            tx.session.flush()
            self._snapshot(tx, RT.CONSENT, consent.id, 1, patient, "create", _consent_data(consent))
        elif not patient.opposes_other_facilities:
            for consent in active:
                self._bump(
                    tx,
                    Consent,
                    consent,
                    consent.version_id,
                    status="inactive",
                    withdrawn_by=tx.ctx.account_id,
                    withdrawn_at=tx.now,
                )
                data = _consent_data(consent)
                self._snapshot(tx, RT.CONSENT, consent.id, consent.version_id, patient, "update", data)

    def _written_patient(self, tx: _Tx, patient: Patient) -> PatientView:
        tx.relationships.clear()  # the write may have made (or ended) a relationship
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields)
        return self._patient_view(patient, fields) if fields else PatientView(id=str(patient.id))

    def _patient_columns(
        self, facility_id: uuid.UUID, patient_id: uuid.UUID, values: dict[str, Any]
    ) -> dict[str, Any]:
        columns: dict[str, Any] = {}
        for name, (column, kind) in PATIENT_ENCRYPTED.items():
            if name not in values:
                continue
            value = values[name]
            if isinstance(value, dt.date):
                value = value.isoformat()
            elif isinstance(value, dict):
                value = json.dumps(value, ensure_ascii=False, sort_keys=True)
            columns[column] = self._enc(value, facility_id, "patients", name, patient_id)
            if kind is not None:
                columns[_BI_COLUMNS[kind]] = self._keyring.index(kind, value)
        return columns

    def _identity_lock(self, tx: _Tx, facility_id: uuid.UUID) -> None:
        """One identity change at a time per facility (PostgreSQL; SQLite serialises every gate
        transaction): two merges crossing the same records would otherwise lock them in opposite
        orders. Taken before any patient row is locked, as `_check_duplicate` does."""
        if tx.session.get_bind().dialect.name == "postgresql":
            tx.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"carnet:patient-identity:{facility_id}"},
            )

    def _check_duplicate(
        self, tx: _Tx, facility_id: uuid.UUID, values: dict[str, Any], exclude: uuid.UUID | None
    ) -> None:
        if tx.session.get_bind().dialect.name == "postgresql":
            # Two clerks registering the same person at once would both find no duplicate: one
            # registration (or identity change) at a time per facility, until the commit.
            tx.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"carnet:patient-identity:{facility_id}"},
            )
        blind = self._keyring.blind
        birth = values.get("birth_date")
        birth_text = birth.isoformat() if isinstance(birth, dt.date) else birth
        query = select(Patient.id).where(Patient.facility_id == facility_id, Patient.merged_into_id.is_(None))
        if exclude is not None:
            query = query.where(Patient.id != exclude)
        if values.get("ins") and tx.session.scalar(
            query.where(Patient.ins_bi == blind.index(IndexKind.IDENTIFIER, values["ins"]))
        ):
            raise Conflict("a patient with this INS is already registered: search for them instead")
        if values.get("family") and birth_text and values.get("given"):
            same = query.where(
                Patient.family_bi == blind.index(IndexKind.FAMILY, values["family"]),
                Patient.given_bi == blind.index(IndexKind.GIVEN, values["given"]),
                Patient.birth_date_bi == blind.index(IndexKind.BIRTH_DATE, birth_text),
            )
            if tx.session.scalar(same):
                raise Conflict(
                    "a patient with the same names and birth date is already registered:"
                    " search for them instead"
                )

    def _practitioner_id(self, tx: _Tx, value: str | None, facility_id: uuid.UUID) -> uuid.UUID | None:
        if value is None:
            return None
        pid = parse_id(value)
        practitioner = tx.session.get(Practitioner, pid) if pid else None
        if (
            practitioner is None
            or practitioner.facility_id not in tx.ctx.facility_ids
            or not practitioner.active
        ):
            raise InvalidInput("unknown practitioner")
        return practitioner.id

    # -- appointments ---------------------------------------------------------------------------
    def _appointment_data(self, a: Appointment, fields: frozenset[str]) -> dict[str, Any]:
        return {
            "id": str(a.id),
            "updated_at": a.updated_at,
            "patient_id": str(a.patient_id),
            "facility_id": str(a.facility_id),
            "practitioner_id": str(a.practitioner_id),
            "location_id": _s(a.location_id),
            "start_at": a.start_at,
            "end_at": a.end_at,
            "status": a.status,
            "cancel_reason": a.cancel_reason,
            "version_id": a.version_id,
            "reason": self._dec(a.reason_ct, "appointments", "reason", a.id) if "reason" in fields else None,
        }

    def _check_slot(
        self,
        tx: _Tx,
        practitioner_id: uuid.UUID,
        start: dt.datetime,
        end: dt.datetime,
        exclude: uuid.UUID | None,
    ) -> None:
        if end <= start:
            raise InvalidInput("an appointment ends after it starts")
        if end - start > dt.timedelta(hours=12):
            raise InvalidInput("an appointment lasts at most 12 hours")
        # One booking at a time per practitioner: the row lock orders concurrent bookings.
        tx.session.execute(
            select(Practitioner.id).where(Practitioner.id == practitioner_id).with_for_update()
        )
        overlap = select(Appointment.id).where(
            Appointment.practitioner_id == practitioner_id,
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
            Appointment.start_at < end,
            Appointment.end_at > start,
        )
        if exclude is not None:
            overlap = overlap.where(Appointment.id != exclude)
        if tx.session.scalar(overlap.limit(1)) is not None:
            raise Conflict("the practitioner is already booked at that time")

    def _written_appointment(self, tx: _Tx, patient: Patient, a: Appointment, action: str) -> AppointmentView:
        tx.relationships.clear()  # the write may have made (or ended) a relationship
        all_fields = frozenset(AppointmentView.model_fields) - {"visible"}
        self._snapshot(
            tx, RT.APPOINTMENT, a.id, a.version_id, patient, action, self._appointment_data(a, all_fields)
        )
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.APPOINTMENT)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.APPOINTMENT)
        return _redact(AppointmentView, self._appointment_data(a, fields), fields)

    @guarded(AuditKind.PHI_CREATE, RT.APPOINTMENT, targeted=True)
    def book_appointment(self, tx: _Tx, /, *, data: AppointmentInput) -> AppointmentView:
        """Book a slot; a practitioner is never double-booked."""
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.APPOINTMENT, write=True)
        practitioner = self._practitioner_id(tx, data.practitioner_id, patient.facility_id)
        assert practitioner is not None
        location = parse_id(data.location_id) if data.location_id else None
        if data.location_id is not None:
            row = tx.session.get(Location, location) if location else None
            if row is None or row.facility_id not in tx.ctx.facility_ids:
                raise InvalidInput("unknown location")
        self._check_slot(tx, practitioner, data.start_at, data.end_at, exclude=None)
        appointment_id = new_id()
        facility = tx.session.get(Practitioner, practitioner)
        assert facility is not None
        appointment = Appointment(
            id=appointment_id,
            facility_id=facility.facility_id,
            patient_id=patient.id,
            practitioner_id=practitioner,
            location_id=location,
            start_at=data.start_at,
            end_at=data.end_at,
            status="booked",
            reason_ct=self._enc(data.reason, facility.facility_id, "appointments", "reason", appointment_id),
            booked_by=tx.ctx.account_id,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(appointment)
        tx.session.flush()
        return self._written_appointment(tx, patient, appointment, "create")

    def _appointment(self, tx: _Tx, appointment_id: str) -> tuple[Appointment, Patient]:
        appointment, patient = self._record_to_change(tx, Appointment, appointment_id)
        self._authorize(tx, patient, RT.APPOINTMENT, write=True)
        return appointment, patient

    @guarded(AuditKind.PHI_UPDATE, RT.APPOINTMENT, targeted=True)
    def amend_appointment(
        self,
        tx: _Tx,
        /,
        *,
        appointment_id: str,
        expected_version: int,
        start_at: dt.datetime,
        end_at: dt.datetime,
    ) -> AppointmentView:
        """Move an appointment (If-Match on `expected_version`)."""
        appointment, patient = self._appointment(tx, appointment_id)
        if appointment.status in INACTIVE_APPOINTMENT:
            raise Conflict("a cancelled appointment cannot be moved: book a new one")
        self._check_slot(tx, appointment.practitioner_id, start_at, end_at, exclude=appointment.id)
        self._bump(tx, Appointment, appointment, expected_version, start_at=start_at, end_at=end_at)
        return self._written_appointment(tx, patient, appointment, "update")

    @guarded(AuditKind.PHI_UPDATE, RT.APPOINTMENT, targeted=True)
    def cancel_appointment(
        self, tx: _Tx, /, *, appointment_id: str, expected_version: int, reason: str
    ) -> AppointmentView:
        appointment, patient = self._appointment(tx, appointment_id)
        if appointment.status in INACTIVE_APPOINTMENT:
            raise Conflict("this appointment is already cancelled")
        text = reason.strip()
        if not text or len(text) > 200:
            raise InvalidInput("a cancellation needs a reason (at most 200 characters)")
        self._bump(tx, Appointment, appointment, expected_version, status="cancelled", cancel_reason=text)
        return self._written_appointment(tx, patient, appointment, "update")

    @guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
    def practitioner_schedule(
        self, tx: _Tx, /, *, practitioner_id: str, day_from: dt.date, day_to: dt.date
    ) -> Schedule:
        """One practitioner's calendar (at most a week), slots only: when, how long, status and
        version of each booked appointment, never who it is for (no patient id, name or reason).
        It exposes no patient: who one slot is for is `reveal_appointment_patient`, one
        appointment at a time, each one patient exposed."""
        self._require(tx, Permission.APPOINTMENT_READ)
        self._check_scopes(tx, RT.APPOINTMENT)
        if day_to < day_from or (day_to - day_from).days >= SCHEDULE_MAX_DAYS:
            raise InvalidInput(f"a calendar shows 1 to {SCHEDULE_MAX_DAYS} days")
        pid = parse_id(practitioner_id)
        practitioner = tx.session.get(Practitioner, pid) if pid else None
        if practitioner is None or practitioner.facility_id not in tx.ctx.facility_ids:
            raise InvalidInput("unknown practitioner")
        start = dt.datetime.combine(day_from, dt.time(), tzinfo=dt.UTC)
        end = dt.datetime.combine(day_to, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=1)
        rows = tx.session.execute(
            select(Appointment, Patient)
            .join(Patient, Patient.id == Appointment.patient_id)
            .where(
                Appointment.practitioner_id == practitioner.id,
                Appointment.start_at >= start,
                Appointment.start_at < end,
                Appointment.status.not_in(INACTIVE_APPOINTMENT),
                care.visible_filter(tx.ctx),
            )
            .order_by(Appointment.start_at)
            .limit(SECTION_LIMIT)
        ).all()
        rels = self._relationships(tx, [p for _a, p in rows])
        entries: list[ScheduleEntry] = []
        for appointment, patient in rows:
            if not self._read_fields(tx, rels.get(patient.id, frozenset()), RT.APPOINTMENT):
                continue  # an appointment this actor may not read at all: not even its slot
            entries.append(
                ScheduleEntry(
                    id=str(appointment.id),
                    start_at=appointment.start_at,
                    end_at=appointment.end_at,
                    status=appointment.status,
                    version_id=appointment.version_id,
                )
            )
            tx.resource_ids.append(str(appointment.id))
        tx.query = f"practitioner={practitioner.id}&from={day_from.isoformat()}&to={day_to.isoformat()}"
        tx.reasons.append("practitioner schedule (slots, no patient)")
        return Schedule(
            practitioner_id=str(practitioner.id), day_from=day_from, day_to=day_to, entries=entries
        )

    @guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
    def reveal_appointment_patient(self, tx: _Tx, /, *, appointment_id: str) -> PatientView:
        """Who one appointment is for, asked from a calendar slot: name, birth date and sex only
        (front-desk minimum necessary: no reason, no contact, nothing clinical). One patient
        exposed (channel chart); detection counts each reveal as a lookup by identifier, so
        revealing slot after slot looks like what it is, an identifier sweep. NotFound when the
        appointment is missing or the actor may not read it or its patient."""
        self._require(tx, Permission.APPOINTMENT_READ)
        aid = parse_id(appointment_id)
        appointment = tx.session.get(Appointment, aid) if aid else None
        if appointment is None:
            raise NotFound(NOT_FOUND)
        patient = self._patient(tx, appointment.patient_id)
        self._authorize(tx, patient, RT.APPOINTMENT)
        fields = self._authorize(tx, patient, RT.PATIENT).fields & SCHEDULE_PATIENT
        if not fields - {"id"}:
            raise _Refused("this role may not see who an appointment is for", [patient.id])
        tx.resource_ids.append(str(appointment.id))
        tx.reasons.append("who an appointment is for")
        rels = self._relationships(tx, [patient])
        event = SearchEvent(
            shape=SearchShape.IDENTIFIER,
            term_digest=self._keyring.blind.index(
                IndexKind.IDENTIFIER, f"appointment:{appointment.id}"
            ).hex(),
            page=1,
        )
        self._expose(tx, [patient.id], Channel.CHART, rels, fields, shape=event)
        return self._patient_view(patient, fields)

    # -- health cards and payments --------------------------------------------------------------
    @guarded(AuditKind.PHI_CREATE, RT.CARD_READING, targeted=True)
    def record_card_reading(self, tx: _Tx, /, *, data: CardReadingInput) -> CoverageSection:
        """Record one reading of the patient's health card. The coverage it proves is linked (the
        same payer and member id) or replaces the active one of its kind, which is ended, never
        deleted: the coverage history is kept. Returns the patient's coverage section."""
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.CARD_READING, write=True)
        if data.rights_end is not None and data.rights_end < data.rights_start:
            raise InvalidInput("the rights end after they start")
        rights_start = dt.datetime.combine(data.rights_start, dt.time(), tzinfo=dt.UTC)
        rights_end = (
            dt.datetime.combine(data.rights_end, dt.time(), tzinfo=dt.UTC) if data.rights_end else None
        )
        current = list(
            tx.session.scalars(
                select(Coverage)
                .where(
                    Coverage.patient_id == patient.id, Coverage.kind == data.kind, Coverage.status == "active"
                )
                .order_by(Coverage.period_start.desc())
            )
        )
        coverage: Coverage | None = None
        for row in current:
            same = (
                row.payer == data.payer
                and self._dec(row.member_id_ct, "coverages", "member_id", row.id) == data.member_id
            )
            if same and coverage is None:
                coverage = row
                if row.period_end != rights_end:
                    self._bump(tx, Coverage, row, row.version_id, period_end=rights_end)
                    self._snapshot_coverage(tx, patient, row, "update")
            else:
                # A card naming another payer or member ends the coverage it replaces.
                self._bump(tx, Coverage, row, row.version_id, status="cancelled", period_end=tx.now)
                self._snapshot_coverage(tx, patient, row, "update")
        if coverage is None:
            coverage_id = new_id()
            coverage = Coverage(
                id=coverage_id,
                facility_id=patient.facility_id,
                patient_id=patient.id,
                kind=data.kind,
                payer=data.payer,
                member_id_ct=self._enc(
                    data.member_id, patient.facility_id, "coverages", "member_id", coverage_id
                ),
                status="active",
                period_start=rights_start,
                period_end=rights_end,
                version_id=1,
                created_at=tx.now,
                updated_at=tx.now,
            )
            tx.session.add(coverage)
            tx.session.flush()
            self._snapshot_coverage(tx, patient, coverage, "create")
        reading_id = new_id()
        payload = json.dumps(data.model_dump(mode="json", exclude={"patient_id"}), sort_keys=True)
        tx.session.add(
            CardReading(
                id=reading_id,
                facility_id=patient.facility_id,
                patient_id=patient.id,
                coverage_id=coverage.id,
                read_at=tx.now,
                read_by=tx.ctx.account_id,
                card_serial_ct=self._enc(
                    data.card_serial, patient.facility_id, "card_readings", "card_serial", reading_id
                ),
                payload_ct=self._enc(payload, patient.facility_id, "card_readings", "payload", reading_id),
            )
        )
        tx.session.flush()
        tx.resource_ids.append(str(reading_id))
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.COVERAGE)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.CARD_READING)
        return self._coverage_section(tx, patient, fields)

    def _snapshot_coverage(self, tx: _Tx, patient: Patient, row: Coverage, action: str) -> None:
        data = {
            "id": str(row.id),
            "kind": row.kind,
            "payer": row.payer,
            "member_id": self._dec(row.member_id_ct, "coverages", "member_id", row.id),
            "status": row.status,
            "period_start": row.period_start,
            "period_end": row.period_end,
        }
        self._snapshot(tx, RT.COVERAGE, row.id, row.version_id, patient, action, data)

    @guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
    def record_payment(self, tx: _Tx, /, *, data: PaymentInput) -> InvoiceView:
        """A payment received against an issued invoice (If-Match on `expected_version`); never
        more than what is due. The invoice is balanced when fully paid."""
        invoice, patient = self._record_to_change(tx, Invoice, data.invoice_id)
        self._authorize(tx, patient, RT.INVOICE, write=True)
        if invoice.status != "issued":
            raise Conflict(f"this invoice is {invoice.status}: only an issued invoice takes a payment")
        if invoice.version_id != data.expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        paid = self._paid(tx, invoice.id)
        due = invoice.total_cents - paid
        if data.amount_cents > due:
            raise InvalidInput(f"the payment is more than the {due / 100:.2f} {invoice.currency} still due")
        status = "balanced" if data.amount_cents == due else invoice.status
        self._first_version(tx, RT.INVOICE, invoice, patient, self._invoice_snapshot(tx, invoice))
        self._bump(tx, Invoice, invoice, data.expected_version, status=status)
        payment_id = new_id()
        tx.session.add(
            Payment(
                id=payment_id,
                invoice_id=invoice.id,
                amount_cents=data.amount_cents,
                method=data.method,
                received_at=tx.now,
                received_by=tx.ctx.account_id,
            )
        )
        tx.session.flush()
        view = self._invoice_view(tx, invoice, ALL_INVOICE_FIELDS)
        self._snapshot(
            tx, RT.INVOICE, invoice.id, invoice.version_id, patient, "update", view.model_dump(mode="json")
        )
        tx.resource_ids.append(str(payment_id))
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.INVOICE)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.INVOICE)
        return self._invoice_view(tx, invoice, fields)

    def _invoice_snapshot(self, tx: _Tx, invoice: Invoice) -> dict[str, Any]:
        data: dict[str, Any] = self._invoice_view(tx, invoice, ALL_INVOICE_FIELDS).model_dump(mode="json")
        return data

    def _written_invoice(self, tx: _Tx, patient: Patient, invoice: Invoice, action: str) -> InvoiceView:
        data = self._invoice_snapshot(tx, invoice)
        self._snapshot(tx, RT.INVOICE, invoice.id, invoice.version_id, patient, action, data)
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.INVOICE)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.INVOICE)
        return self._invoice_view(tx, invoice, fields)

    def _invoice_number(self, tx: _Tx, facility_id: uuid.UUID) -> str:
        """The facility's next invoice number of the year, F<FINESS>-<year>-<sequence>: numbered
        in order without gaps, as French invoicing rules ask; one number at a time per facility."""
        if tx.session.get_bind().dialect.name == "postgresql":
            # SQLite already holds its one write lock (BEGIN IMMEDIATE); PostgreSQL orders two
            # clerks issuing at once here, until the commit, so both cannot take the same number.
            tx.session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"carnet:invoice-number:{facility_id}"},
            )
        finess = tx.session.scalar(select(Facility.finess).where(Facility.id == facility_id))
        if finess is None:
            raise NotFound(NOT_FOUND)
        prefix = f"F{finess}-{tx.now.year:04d}-"
        last = tx.session.scalar(
            select(func.max(Invoice.number)).where(
                Invoice.facility_id == facility_id, Invoice.number.like(prefix + "%")
            )
        )
        sequence = int(last.removeprefix(prefix)) + 1 if last and last.removeprefix(prefix).isdigit() else 1
        return f"{prefix}{sequence:07d}"

    def _invoice_to_change(self, tx: _Tx, invoice_id: str, expected_version: int) -> tuple[Invoice, Patient]:
        """An invoice to change, by a role that bills the patient, at the version the client read
        (a stale one is refused before its content is judged)."""
        invoice, patient = self._record_to_change(tx, Invoice, invoice_id)
        self._authorize(tx, patient, RT.INVOICE, write=True)
        if invoice.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        return invoice, patient

    @guarded(AuditKind.PHI_CREATE, RT.INVOICE, targeted=True)
    def issue_invoice(self, tx: _Tx, /, *, data: InvoiceInput) -> InvoiceView:
        """Invoice a patient (optionally for one of their stays): numbered by the facility,
        total = the sum of its lines, issued now (or kept as a draft), version 1."""
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.INVOICE, write=True)
        if patient.merged_into_id is not None:
            raise Conflict("this patient record was merged: invoice the record it was merged into")
        encounter = self._encounter_id(tx, data.encounter_id, patient)
        if encounter is None and not SqlFacilityWork().in_work(
            tx.session, patient_ids=[patient.id], at=tx.now
        ):
            # An invoice puts its patient in billing's work (carnet.phi.work), which detection
            # trusts: without this, a clerk could whitelist the register one draft at a time.
            raise _Refused(
                "no appointment, stay, open invoice or recent registration here, and no stay named",
                [patient.id],
            )
        total = sum(line.amount_cents for line in data.lines)
        if total > 100_000_000:
            raise InvalidInput("an invoice totals at most 1,000,000.00")
        issued = data.status == "issued"
        invoice = Invoice(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            encounter_id=encounter,
            number=self._invoice_number(tx, patient.facility_id),
            status=data.status,
            issued_at=tx.now if issued else None,
            total_cents=total,
            currency=data.currency,
            cancel_reason=None,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(invoice)
        tx.session.flush()
        for line in data.lines:
            tx.session.add(
                InvoiceLine(
                    invoice_id=invoice.id,
                    code=line.code,
                    description=line.description,
                    amount_cents=line.amount_cents,
                )
            )
        tx.session.flush()
        return self._written_invoice(tx, patient, invoice, "create")

    @guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
    def finalize_invoice(self, tx: _Tx, /, *, invoice_id: str, expected_version: int) -> InvoiceView:
        """Issue a draft invoice: status issued, dated now; it may then be paid."""
        invoice, patient = self._invoice_to_change(tx, invoice_id, expected_version)
        if invoice.status != "draft":
            raise Conflict(f"this invoice is {invoice.status}: only a draft is issued")
        self._first_version(tx, RT.INVOICE, invoice, patient, self._invoice_snapshot(tx, invoice))
        self._bump(tx, Invoice, invoice, expected_version, status="issued", issued_at=tx.now)
        return self._written_invoice(tx, patient, invoice, "update")

    @guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
    def cancel_invoice(
        self, tx: _Tx, /, *, invoice_id: str, expected_version: int, reason: str
    ) -> InvoiceView:
        """Cancel a draft or an unpaid issued invoice, with a reason: kept (never deleted), its
        number never reused, every version in its history. One that took a payment is not
        cancelled: the payment would vanish from the books."""
        invoice, patient = self._invoice_to_change(tx, invoice_id, expected_version)
        reason = reason.strip()
        if not reason or len(reason) > 200:
            raise InvalidInput("a cancellation needs a reason (at most 200 characters)")
        if invoice.status not in ("draft", "issued"):
            raise Conflict(
                f"this invoice is {invoice.status}: only a draft or an issued invoice is cancelled"
            )
        if self._paid(tx, invoice.id):
            raise Conflict("this invoice has received payments: it cannot be cancelled")
        self._first_version(tx, RT.INVOICE, invoice, patient, self._invoice_snapshot(tx, invoice))
        self._bump(tx, Invoice, invoice, expected_version, status="cancelled", cancel_reason=reason)
        return self._written_invoice(tx, patient, invoice, "update")

    def _paid(self, tx: _Tx, invoice_id: uuid.UUID) -> int:
        total = tx.session.scalar(
            select(func.coalesce(func.sum(Payment.amount_cents), 0)).where(Payment.invoice_id == invoice_id)
        )
        return int(total or 0)

    # -- notes ----------------------------------------------------------------------------------
    def _note_data(self, tx: _Tx, note: ClinicalNote, *, with_text: bool) -> dict[str, Any]:
        versions = None
        if with_text:
            versions = [
                NoteVersionView(
                    version=v.version,
                    text=self._dec(v.text_ct, "note_versions", "text", v.id) or "",
                    author_id=str(v.author_id),
                    recorded_at=v.recorded_at,
                    amendment_reason=v.amendment_reason,
                )
                for v in tx.session.scalars(
                    select(NoteVersion).where(NoteVersion.note_id == note.id).order_by(NoteVersion.version)
                )
            ]
        return {
            "id": str(note.id),
            "updated_at": note.updated_at,
            "patient_id": str(note.patient_id),
            "encounter_id": _s(note.encounter_id),
            "author_id": str(note.author_id),
            "kind": note.kind,
            "title": note.title,
            "status": note.status,
            "version_id": note.version_id,
            "versions": versions,
        }

    def _author(self, tx: _Tx) -> uuid.UUID:
        if tx.ctx.practitioner_id is None:
            raise _Refused("only a practitioner writes clinical records")
        return tx.ctx.practitioner_id

    def _written_note(self, tx: _Tx, patient: Patient, note: ClinicalNote, action: str) -> NoteView:
        tx.relationships.clear()  # the write may have made (or ended) a relationship
        data = self._note_data(tx, note, with_text=True)
        snapshot = dict(data, versions=[v.model_dump() for v in data["versions"][-1:]])
        self._snapshot(tx, RT.NOTE, note.id, note.version_id, patient, action, snapshot)
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.NOTE)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.NOTE)
        return _redact(NoteView, data, fields)

    def _add_note_version(
        self, tx: _Tx, note: ClinicalNote, version: int, text: str, author: uuid.UUID, reason: str | None
    ) -> None:
        text = text.strip()
        if not text or len(text) > 100_000:
            raise InvalidInput("a note needs a text (at most 100,000 characters)")
        version_id = new_id()
        tx.session.add(
            NoteVersion(
                id=version_id,
                note_id=note.id,
                version=version,
                text_ct=self._enc(text, note.facility_id, "note_versions", "text", version_id),
                author_id=author,
                recorded_at=tx.now,
                amendment_reason=reason,
            )
        )

    @guarded(AuditKind.PHI_CREATE, RT.NOTE, targeted=True)
    def write_note(
        self,
        tx: _Tx,
        /,
        *,
        patient_id: str,
        kind: str,
        title: str,
        text: str,
        encounter_id: str | None = None,
    ) -> NoteView:
        author = self._author(tx)
        patient = self._patient_for_write(tx, patient_id)
        self._authorize(tx, patient, RT.NOTE, write=True)
        if not kind.strip() or len(kind) > 40 or not title.strip() or len(title) > 200:
            raise InvalidInput("a note needs a kind (LOINC code) and a title (at most 200 characters)")
        encounter = self._encounter_id(tx, encounter_id, patient)
        note = ClinicalNote(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            encounter_id=encounter,
            author_id=author,
            kind=kind.strip(),
            title=title.strip(),
            status="current",
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(note)
        tx.session.flush()
        self._add_note_version(tx, note, 1, text, author, None)
        tx.session.flush()
        return self._written_note(tx, patient, note, "create")

    @guarded(AuditKind.PHI_UPDATE, RT.NOTE, targeted=True)
    def amend_note(
        self, tx: _Tx, /, *, note_id: str, expected_version: int, text: str, reason: str
    ) -> NoteView:
        """Amend a note: a new version of its text; earlier versions stay readable."""
        author = self._author(tx)
        note, patient = self._record_to_change(tx, ClinicalNote, note_id)
        self._authorize(tx, patient, RT.NOTE, write=True)
        if not reason.strip() or len(reason) > 500:
            raise InvalidInput("an amendment needs a reason (at most 500 characters)")
        self._bump(tx, ClinicalNote, note, expected_version)
        self._add_note_version(tx, note, note.version_id, text, author, reason.strip())
        tx.session.flush()
        return self._written_note(tx, patient, note, "update")

    def _encounter_id(self, tx: _Tx, value: str | None, patient: Patient) -> uuid.UUID | None:
        if value is None:
            return None
        eid = parse_id(value)
        encounter = tx.session.get(Encounter, eid) if eid else None
        if encounter is None or encounter.patient_id != patient.id:
            raise InvalidInput("unknown encounter for this patient")
        if encounter.status == "entered-in-error":
            # A stay opened by mistake is no stay: nothing new is written (or billed) against it.
            raise InvalidInput("this stay was entered in error: name the right stay, or none")
        return encounter.id

    # -- prescriptions and allergies ------------------------------------------------------------
    def _written(
        self,
        tx: _Tx,
        patient: Patient,
        resource: ResourceType,
        schema: type[T],
        data: dict[str, Any],
        version: int,
        action: str,
    ) -> T:
        tx.relationships.clear()
        self._snapshot(tx, resource, uuid.UUID(data["id"]), version, patient, action, data)
        rels = self._relationships(tx, [patient])
        fields = self._read_fields(tx, rels.get(patient.id, frozenset()), resource)
        self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=resource)
        return _redact(schema, data, fields)

    @guarded(AuditKind.PHI_CREATE, RT.PRESCRIPTION, targeted=True)
    def prescribe(self, tx: _Tx, /, *, data: PrescriptionInput) -> PrescriptionView:
        """Prescribe. An active allergy to the same substance stops it unless the prescriber
        confirms with `allergy_override_reason` (kept on the prescription)."""
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.PRESCRIPTION, write=True)
        allergic = tx.session.scalar(
            select(Allergy.id).where(
                Allergy.patient_id == patient.id,
                Allergy.substance_code == data.substance_code,
                Allergy.clinical_status == "active",
            )
        )
        warnings: list[str] = []
        override = (data.allergy_override_reason or "").strip() or None
        if allergic is not None:
            if override is None:
                raise AllergyWarning(
                    "the patient has an active allergy to this substance: nothing was prescribed;"
                    " confirm with an allergy override reason"
                )
            warnings.append("active allergy to this substance: prescribed with an override")
        if data.valid_until is not None and data.valid_until <= tx.now:
            raise InvalidInput("valid_until must be in the future")
        prescription = Prescription(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            prescriber_id=author,
            encounter_id=self._encounter_id(tx, data.encounter_id, patient),
            medication_code=data.medication_code,
            medication_display=data.medication_display,
            substance_code=data.substance_code,
            dosage_text=data.dosage_text,
            status="active",
            authored_at=tx.now,
            valid_until=data.valid_until,
            allergy_override_reason=override if allergic is not None else None,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(prescription)
        tx.session.flush()
        snapshot = _prescription_data(prescription) | {"warnings": warnings}
        return self._written(tx, patient, RT.PRESCRIPTION, PrescriptionView, snapshot, 1, "create")

    @guarded(AuditKind.PHI_UPDATE, RT.PRESCRIPTION, targeted=True)
    def stop_prescription(
        self, tx: _Tx, /, *, prescription_id: str, expected_version: int, reason: str
    ) -> PrescriptionView:
        self._author(tx)
        prescription, patient = self._record_to_change(tx, Prescription, prescription_id)
        self._authorize(tx, patient, RT.PRESCRIPTION, write=True)
        if prescription.status != "active":
            raise Conflict("only an active prescription can be stopped")
        if not reason.strip() or len(reason) > 500:
            raise InvalidInput("stopping a prescription needs a reason (at most 500 characters)")
        self._bump(
            tx, Prescription, prescription, expected_version, status="stopped", stop_reason=reason.strip()
        )
        data = _prescription_data(prescription)
        return self._written(
            tx, patient, RT.PRESCRIPTION, PrescriptionView, data, prescription.version_id, "update"
        )

    @guarded(AuditKind.PHI_CREATE, RT.ALLERGY, targeted=True)
    def record_allergy(self, tx: _Tx, /, *, data: AllergyInput) -> AllergyView:
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.ALLERGY, write=True)
        allergy = Allergy(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            substance_code=data.substance_code,
            substance_display=data.substance_display,
            criticality=data.criticality,
            clinical_status="active",
            recorded_by=author,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(allergy)
        tx.session.flush()
        return self._written(tx, patient, RT.ALLERGY, AllergyView, _allergy_data(allergy), 1, "create")

    # -- stays: admit, transfer, discharge; every version kept with its author -----------------
    def _location_id(self, tx: _Tx, value: str | None, facility_id: uuid.UUID) -> uuid.UUID | None:
        if value is None:
            return None
        lid = parse_id(value)
        location = tx.session.get(Location, lid) if lid else None
        if location is None or location.facility_id != facility_id or not location.active:
            raise InvalidInput("unknown location")
        return location.id

    def _first_version(
        self, tx: _Tx, resource: ResourceType, row: Any, patient: Patient, data: dict[str, Any]
    ) -> None:
        """A record written before it was versioned (seeded, imported) gets its state as it
        stood as its first stored version, by the system, so no earlier state is lost."""
        kept = tx.session.scalar(
            select(ResourceVersion.id)
            .where(ResourceVersion.resource_type == resource.value, ResourceVersion.resource_id == row.id)
            .limit(1)
        )
        if kept is not None:
            return
        row_id = new_id()
        body = json.dumps(data, default=str, sort_keys=True, ensure_ascii=False)
        tx.session.add(
            ResourceVersion(
                id=row_id,
                resource_type=resource.value,
                resource_id=row.id,
                version_id=row.version_id,
                patient_id=patient.id,
                facility_id=patient.facility_id,
                recorded_at=row.updated_at or row.created_at,
                author_id=None,
                action="create",
                snapshot_ct=self._enc(body, patient.facility_id, "resource_versions", "snapshot", row_id),
            )
        )

    def _stay(self, tx: _Tx, encounter_id: str, expected_version: int) -> tuple[Encounter, Patient]:
        """A stay to change: in progress, written by a practitioner in the patient's care, at
        the version the client read (a stale one is refused before its content is judged)."""
        self._author(tx)
        encounter, patient = self._record_to_change(tx, Encounter, encounter_id)
        self._authorize(tx, patient, RT.ENCOUNTER, write=True)
        if encounter.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        if encounter.status != "in-progress":
            raise Conflict(
                f"this stay is {encounter.status}: only a stay in progress is transferred or discharged"
            )
        self._first_version(tx, RT.ENCOUNTER, encounter, patient, _encounter_data(encounter))
        return encounter, patient

    @guarded(AuditKind.PHI_CREATE, RT.ENCOUNTER, targeted=True)
    def admit_patient(self, tx: _Tx, /, *, data: EncounterInput) -> EncounterView:
        """Admit a patient (or open a visit): a stay in progress, version 1. Its attending
        physician and its ward's nurses gain a care relationship, which is why only a
        practitioner already caring for the patient admits (a stay cannot open a chart)."""
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.ENCOUNTER, write=True)
        if not patient.active or patient.merged_into_id is not None:
            raise Conflict("this patient record is inactive: admit the active record")
        start = data.start_at or tx.now
        if start.tzinfo is None:
            raise InvalidInput("the admission time needs a time zone")
        if start > tx.now + dt.timedelta(minutes=5):
            raise InvalidInput("an admission starts now or in the past (book an appointment for later)")
        location = self._location_id(tx, data.location_id, patient.facility_id)
        attending = self._practitioner_id(tx, data.attending_id, patient.facility_id)
        # One stay in progress per patient: concurrent admissions are ordered by a lock on the
        # patient's row (a lock on stays that do not exist yet would order nothing). A no-op
        # UPDATE locks it on both engines: PostgreSQL locks the row, SQLite (whose SELECTs run
        # outside any transaction and have no FOR UPDATE) takes its one write lock here.
        tx.session.execute(
            update(Patient)
            .where(Patient.id == patient.id)
            .values(version_id=Patient.version_id)
            .execution_options(synchronize_session=False)
        )
        current = tx.session.scalar(
            select(Encounter.id)
            .where(Encounter.patient_id == patient.id, Encounter.status == "in-progress")
            .limit(1)
        )
        if current is not None:
            raise Conflict("the patient already has a stay in progress: transfer or discharge it")
        encounter = Encounter(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            kind=data.kind,
            status="in-progress",
            start_at=start,
            end_at=None,
            location_id=location,
            attending_id=attending or author,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(encounter)
        tx.session.flush()
        return self._written(
            tx, patient, RT.ENCOUNTER, EncounterView, _encounter_data(encounter), 1, "create"
        )

    @guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
    def transfer_encounter(
        self,
        tx: _Tx,
        /,
        *,
        encounter_id: str,
        expected_version: int,
        location_id: str | None,
        attending_id: str | None = None,
    ) -> EncounterView:
        """Move a stay to another location (and/or attending physician); If-Match on the version."""
        encounter, patient = self._stay(tx, encounter_id, expected_version)
        values: dict[str, Any] = {}
        location = self._location_id(tx, location_id, patient.facility_id)
        if location is not None and location != encounter.location_id:
            values["location_id"] = location
        attending = self._practitioner_id(tx, attending_id, patient.facility_id)
        if attending is not None and attending != encounter.attending_id:
            values["attending_id"] = attending
        if not values:
            raise InvalidInput("a transfer names a new location (or a new attending physician)")
        self._bump(tx, Encounter, encounter, expected_version, **values)
        data = _encounter_data(encounter)
        return self._written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")

    @guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
    def discharge_encounter(
        self, tx: _Tx, /, *, encounter_id: str, expected_version: int, end_at: dt.datetime | None = None
    ) -> EncounterView:
        """End a stay: status finished, the period's end (now when not given)."""
        encounter, patient = self._stay(tx, encounter_id, expected_version)
        end = end_at or tx.now
        if end.tzinfo is None:
            raise InvalidInput("the discharge time needs a time zone")
        if end > tx.now + dt.timedelta(minutes=5) or end < encounter.start_at:
            raise InvalidInput("a discharge happens after the admission and not in the future")
        self._bump(tx, Encounter, encounter, expected_version, status="finished", end_at=end)
        data = _encounter_data(encounter)
        return self._written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")

    @guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
    def mark_encounter_entered_in_error(
        self, tx: _Tx, /, *, encounter_id: str, expected_version: int
    ) -> EncounterView:
        """A stay opened by mistake (wrong patient, duplicate admission): status
        entered-in-error, kept and readable with every earlier version. It is no longer in
        progress, so the patient can be admitted again, and the care relationships a stay
        makes (its attending, its ward's nurses: computed from stays in progress, see
        carnet.phi.care) end with it: a mistaken admission leaves no lasting access behind.
        Not under break-the-glass alone, as for admitting (WRITE_RULES)."""
        self._author(tx)
        encounter, patient = self._record_to_change(tx, Encounter, encounter_id)
        self._authorize(tx, patient, RT.ENCOUNTER, write=True)
        if encounter.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        if encounter.status == "entered-in-error":
            raise Conflict("this stay is already marked entered-in-error")
        self._first_version(tx, RT.ENCOUNTER, encounter, patient, _encounter_data(encounter))
        self._bump(tx, Encounter, encounter, expected_version, status="entered-in-error")
        data = _encounter_data(encounter)
        return self._written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")

    # -- problems and diagnoses (ICD-10), every version kept ------------------------------------
    @guarded(AuditKind.PHI_CREATE, RT.CONDITION, targeted=True)
    def record_condition(self, tx: _Tx, /, *, data: ConditionInput) -> ConditionView:
        """A problem or diagnosis (ICD-10), by a physician in the patient's care (or under
        break-the-glass: a diagnosis opens no access). Version 1, kept."""
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.CONDITION, write=True)
        if not patient.active or patient.merged_into_id is not None:
            raise Conflict("this patient record is inactive: record the problem on the active record")
        self._check_onset(tx, data.onset_at)
        condition = Condition(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            code=data.code,
            display=data.display.strip(),
            clinical_status=data.clinical_status,
            verification_status=data.verification_status,
            onset_at=data.onset_at,
            recorded_by=author,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(condition)
        tx.session.flush()
        return self._written(
            tx, patient, RT.CONDITION, ConditionView, _condition_data(condition), 1, "create"
        )

    def _check_onset(self, tx: _Tx, onset: dt.datetime | None) -> None:
        if onset is not None and (onset.tzinfo is None or onset > tx.now + dt.timedelta(minutes=5)):
            raise InvalidInput("a problem's onset has a time zone and is not in the future")

    @guarded(AuditKind.PHI_UPDATE, RT.CONDITION, targeted=True)
    def amend_condition(
        self,
        tx: _Tx,
        /,
        *,
        condition_id: str,
        expected_version: int,
        clinical_status: str | None = None,
        verification_status: str | None = None,
        onset_at: dt.datetime | None = None,
        code: str | None = None,
    ) -> ConditionView:
        """Change a problem's clinical status (e.g. resolved), its verification status
        (confirmed, refuted...) or its onset; or mark it entered-in-error (kept, still read
        with that status, nothing else changed). Its code is not changed: a wrong diagnosis
        is marked entered-in-error and the right one recorded. If-Match; every version kept."""
        self._author(tx)
        row, patient = self._record_to_change(tx, Condition, condition_id)
        self._authorize(tx, patient, RT.CONDITION, write=True)
        if row.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        if row.verification_status == "entered-in-error":
            raise Conflict("this problem was entered in error: record a new one")
        if code is not None and code != row.code:
            raise InvalidInput(
                "a problem's code is not changed: mark it entered-in-error and record the right one"
            )
        values: dict[str, Any]
        if verification_status == "entered-in-error":
            values = {"verification_status": verification_status}
        else:
            if clinical_status is not None and clinical_status not in CONDITION_CLINICAL_STATUSES:
                raise InvalidInput("clinical status must be one of " + ", ".join(CONDITION_CLINICAL_STATUSES))
            if verification_status is not None and verification_status not in CONDITION_VERIFICATION_STATUSES:
                raise InvalidInput(
                    "verification status must be one of " + ", ".join(CONDITION_VERIFICATION_STATUSES)
                )
            self._check_onset(tx, onset_at)
            values = {
                "clinical_status": clinical_status or row.clinical_status,
                "verification_status": verification_status or row.verification_status,
                "onset_at": onset_at if onset_at is not None else row.onset_at,
            }
            current = {k: getattr(row, k) for k in values}
            if values == current:
                raise InvalidInput(
                    "an amendment changes the clinical status, the verification status or the onset"
                )
        self._first_version(tx, RT.CONDITION, row, patient, _condition_data(row))
        self._bump(tx, Condition, row, expected_version, **values)
        data = _condition_data(row)
        return self._written(tx, patient, RT.CONDITION, ConditionView, data, row.version_id, "update")

    # -- observations and lab reports -----------------------------------------------------------
    @guarded(AuditKind.PHI_CREATE, RT.OBSERVATION, targeted=True)
    def record_observation(self, tx: _Tx, /, *, data: ObservationInput) -> ObservationView:
        """A vital sign or a lab result, by a practitioner in the patient's care."""
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.OBSERVATION, write=True)
        if (data.value_number is None) == (data.value_text is None):
            raise InvalidInput("an Observation has one value: a number (with its unit) or a text")
        if data.effective_at.tzinfo is None or data.effective_at > tx.now + dt.timedelta(minutes=5):
            raise InvalidInput("an Observation's time has a time zone and is not in the future")
        observation = Observation(
            id=new_id(),
            facility_id=patient.facility_id,
            patient_id=patient.id,
            encounter_id=self._encounter_id(tx, data.encounter_id, patient),
            report_id=None,
            category=data.category,
            code=data.code,
            display=data.display,
            value_number=data.value_number,
            unit=data.unit,
            value_text=data.value_text,
            effective_at=data.effective_at,
            status=data.status,
            performer_id=author,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(observation)
        tx.session.flush()
        return self._written(
            tx, patient, RT.OBSERVATION, ObservationView, _observation_data(observation), 1, "create"
        )

    @guarded(AuditKind.PHI_UPDATE, RT.OBSERVATION, targeted=True)
    def amend_observation(
        self,
        tx: _Tx,
        /,
        *,
        observation_id: str,
        expected_version: int,
        status: str,
        value_number: float | None = None,
        unit: str | None = None,
        value_text: str | None = None,
    ) -> ObservationView:
        """Correct a vital sign or a lab result (status amended or corrected, a new value) or mark
        it entered-in-error (kept, value unchanged). If-Match on the version; every earlier
        version stays in the history, with its author and time."""
        self._author(tx)
        row, patient = self._record_to_change(tx, Observation, observation_id)
        self._authorize(tx, patient, RT.OBSERVATION, write=True)
        if row.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        if row.status == "entered-in-error":
            raise Conflict("this Observation was entered in error: record a new one")
        values: dict[str, Any]
        if status == "entered-in-error":
            values = {"status": status}
        elif status in ("amended", "corrected"):
            if (value_number is None) == (value_text is None):
                raise InvalidInput("an Observation has one value: a number (with its unit) or a text")
            new_unit = unit if value_number is not None else None
            if (value_number, new_unit, value_text) == (row.value_number, row.unit, row.value_text):
                raise InvalidInput("a correction changes the value")
            values = {
                "status": status,
                "value_number": value_number,
                "unit": new_unit,
                "value_text": value_text,
            }
        else:
            raise InvalidInput(
                "an Observation is corrected (status amended or corrected) or marked entered-in-error"
            )
        self._first_version(tx, RT.OBSERVATION, row, patient, _observation_data(row))
        self._bump(tx, Observation, row, expected_version, **values)
        data = _observation_data(row)
        return self._written(tx, patient, RT.OBSERVATION, ObservationView, data, row.version_id, "update")

    @guarded(AuditKind.PHI_CREATE, RT.DIAGNOSTIC_REPORT, targeted=True)
    def record_diagnostic_report(self, tx: _Tx, /, *, data: DiagnosticReportInput) -> DiagnosticReportView:
        """A lab report grouping Observations of the same patient, none reported already. An
        Observation of anyone else is refused in the same words as a missing one."""
        author = self._author(tx)
        patient = self._patient_for_write(tx, data.patient_id)
        self._authorize(tx, patient, RT.DIAGNOSTIC_REPORT, write=True)
        if data.issued_at.tzinfo is None or data.issued_at > tx.now + dt.timedelta(minutes=5):
            raise InvalidInput("a report's issued time has a time zone and is not in the future")
        observations: list[Observation] = []
        for number, raw in enumerate(data.result_ids, start=1):
            oid = parse_id(raw)
            row = tx.session.get(Observation, oid, with_for_update=True) if oid else None
            if row is None or row.patient_id != patient.id:
                raise InvalidInput(f"result {number} is not an Observation of this report's patient")
            if row.report_id is not None:
                raise Conflict(f"result {number} already belongs to another report")
            if row in observations:
                raise InvalidInput(f"result {number} is listed twice")
            observations.append(row)
        report_id = new_id()
        conclusion = (data.conclusion or "").strip() or None
        report = DiagnosticReport(
            id=report_id,
            facility_id=patient.facility_id,
            patient_id=patient.id,
            code=data.code,
            display=data.display,
            status=data.status,
            issued_at=data.issued_at,
            conclusion_ct=self._enc(
                conclusion, patient.facility_id, "diagnostic_reports", "conclusion", report_id
            ),
            performer_id=author,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(report)
        tx.session.flush()
        for row in observations:
            row.report_id = report.id
        tx.session.flush()
        snapshot = {
            "id": str(report.id),
            "updated_at": report.updated_at,
            "patient_id": str(patient.id),
            "facility_id": str(patient.facility_id),
            "code": report.code,
            "display": report.display,
            "status": report.status,
            "issued_at": report.issued_at,
            "conclusion": conclusion,
            "performer_id": str(author),
            "result_ids": [str(o.id) for o in observations],
            "version_id": 1,
        }
        return self._written(tx, patient, RT.DIAGNOSTIC_REPORT, DiagnosticReportView, snapshot, 1, "create")

    @guarded(AuditKind.PHI_UPDATE, RT.DIAGNOSTIC_REPORT, targeted=True)
    def amend_diagnostic_report(
        self,
        tx: _Tx,
        /,
        *,
        report_id: str,
        expected_version: int,
        status: str,
        conclusion: str | None = None,
        result_ids: list[str] | None = None,
    ) -> DiagnosticReportView:
        """Amend a lab report (status amended or corrected: its conclusion and results, the
        results Observations of the same patient in no other report, as on creation) or mark
        it entered-in-error (kept, content unchanged). If-Match; every version stays."""
        self._author(tx)
        report, patient = self._record_to_change(tx, DiagnosticReport, report_id)
        self._authorize(tx, patient, RT.DIAGNOSTIC_REPORT, write=True)
        if report.version_id != expected_version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        if report.status == "entered-in-error":
            raise Conflict("this report was entered in error: record a new one")
        current = list(
            tx.session.scalars(
                select(Observation)
                .where(Observation.report_id == report.id)
                .order_by(Observation.effective_at, Observation.id)
            )
        )
        old = self._dec(report.conclusion_ct, "diagnostic_reports", "conclusion", report.id)

        def data(conclusion_now: str | None, results: list[Observation]) -> dict[str, Any]:
            return {
                "id": str(report.id),
                "updated_at": report.updated_at,
                "patient_id": str(patient.id),
                "facility_id": str(patient.facility_id),
                "code": report.code,
                "display": report.display,
                "status": report.status,
                "issued_at": report.issued_at,
                "conclusion": conclusion_now,
                "performer_id": _s(report.performer_id),
                "result_ids": [str(o.id) for o in results],
                "version_id": report.version_id,
            }

        self._first_version(tx, RT.DIAGNOSTIC_REPORT, report, patient, data(old, current))
        if status == "entered-in-error":
            self._bump(tx, DiagnosticReport, report, expected_version, status=status)
            return self._written(
                tx,
                patient,
                RT.DIAGNOSTIC_REPORT,
                DiagnosticReportView,
                data(old, current),
                report.version_id,
                "update",
            )
        if status not in ("amended", "corrected"):
            raise InvalidInput("a report is amended (status amended or corrected) or marked entered-in-error")
        observations: list[Observation] = []
        for number, raw in enumerate(result_ids or [], start=1):
            oid = parse_id(raw)
            row = tx.session.get(Observation, oid, with_for_update=True) if oid else None
            if row is None or row.patient_id != patient.id:
                raise InvalidInput(f"result {number} is not an Observation of this report's patient")
            if row.report_id is not None and row.report_id != report.id:
                raise Conflict(f"result {number} already belongs to another report")
            if row in observations:
                raise InvalidInput(f"result {number} is listed twice")
            observations.append(row)
        if not observations:
            raise InvalidInput("a lab report groups its results: result needs an Observation reference")
        text_now = (conclusion or "").strip() or None
        if text_now == old and {o.id for o in observations} == {o.id for o in current}:
            raise InvalidInput("an amendment changes the conclusion or the results")
        self._bump(
            tx,
            DiagnosticReport,
            report,
            expected_version,
            status=status,
            conclusion_ct=self._enc(
                text_now, patient.facility_id, "diagnostic_reports", "conclusion", report.id
            ),
        )
        for row in current:
            if row not in observations:
                row.report_id = None
        for row in observations:
            row.report_id = report.id
        tx.session.flush()
        observations.sort(key=lambda o: (o.effective_at, o.id))
        return self._written(
            tx,
            patient,
            RT.DIAGNOSTIC_REPORT,
            DiagnosticReportView,
            data(text_now, observations),
            report.version_id,
            "update",
        )

    # == break-the-glass ========================================================================
    @guarded(AuditKind.BREAK_GLASS_START, RT.PATIENT, targeted=True)
    def break_glass(
        self, tx: _Tx, /, *, patient_id: str, reason: BreakGlassReason | str, justification: str
    ) -> BreakGlassGrant:
        """Emergency access to ONE patient for one hour, after a fresh second factor.

        Ends the actor's previous break-the-glass (one patient at a time). Recorded for review
        (carnet.access.breakglass) with `alert_state` pending for detection to alert on.
        """
        self._require(tx, Permission.BREAK_GLASS)
        self._check_scopes(tx, RT.PATIENT)  # refuses any access token
        if tx.ctx.account_id is None:
            raise _Refused("break-the-glass needs a staff account")
        proven = self.actor.second_factor_at
        if proven is None or tx.now - proven > STEP_UP_FRESHNESS or proven > tx.now + dt.timedelta(minutes=1):
            raise StepUpRequired("break-the-glass needs a second factor proven in the last 5 minutes")
        try:
            code = BreakGlassReason(reason)
        except ValueError:
            raise InvalidInput(
                f"reason must be one of: {', '.join(r.value for r in BreakGlassReason)}"
            ) from None
        text = justification.strip()
        if len(text) < 10 or len(text) > 1000:
            raise InvalidInput("break-the-glass needs a justification of 10 to 1000 characters")
        patient = self._patient(tx, patient_id)
        rels = self._relationships(tx, [patient]).get(patient.id, frozenset())
        if not rels:
            raise _Refused("patient outside the actor's facilities or restricted", [patient.id])
        # Would break-the-glass open anything at all for these roles? (Front desk: no.)
        if not decide(
            roles=tx.ctx.roles, resource=RT.PATIENT, relationships=[Relationship.BREAK_GLASS]
        ).allowed:
            raise _Refused("this role cannot break the glass", [patient.id])
        tx.session.execute(
            update(BreakGlassAccess)
            .where(
                BreakGlassAccess.account_id == tx.ctx.account_id,
                BreakGlassAccess.ended_at.is_(None),
                BreakGlassAccess.expires_at > tx.now,
            )
            .values(ended_at=tx.now)
        )
        access = BreakGlassAccess(
            id=new_id(),
            account_id=tx.ctx.account_id,
            patient_id=patient.id,
            facility_id=patient.facility_id,
            reason_code=code.value,
            justification=text,
            started_at=tx.now,
            expires_at=tx.now + BREAK_GLASS_DURATION,
            second_factor_at=proven,
            alert_state="pending",
        )
        tx.session.add(access)
        tx.session.flush()
        tx.resource_ids.append(str(access.id))
        # The officer's alert commits with the access itself (or neither does); the audit
        # event of this access names it.
        tx.resource_ids.extend(str(alert.id) for alert in alert_break_glass(tx.session))
        tx.break_glass_reason = f"{code.value}: {text}"
        tx.reasons.append("break-the-glass started")

        def link(seq: int) -> None:
            access.audit_seq = seq
            tx.session.flush()

        tx.after_audit.append(link)
        return BreakGlassGrant(
            id=str(access.id),
            patient_id=str(patient.id),
            reason_code=code.value,
            started_at=access.started_at,
            expires_at=access.expires_at,
        )

    # == the FHIR API's extra operations (single records by id, stays, retained deletion) =======
    def _read_one(self, tx: _Tx, kind: ResourceType, resource_id: str) -> tuple[Any, frozenset[str]]:
        """One record by its id (a FHIR read), authorized and redacted like its chart section."""
        model = _RECORD_MODELS[kind]
        rid = parse_id(resource_id)
        row = tx.session.get(model, rid) if rid else None
        if row is None:
            raise NotFound(NOT_FOUND)
        patient = self._patient(tx, row.patient_id)
        decision = self._authorize(tx, patient, kind)
        tx.resource_ids.append(str(row.id))
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, decision.fields, resource=kind)
        return row, decision.fields

    @guarded(AuditKind.PHI_READ, RT.APPOINTMENT, targeted=True)
    def read_appointment(self, tx: _Tx, /, *, appointment_id: str) -> AppointmentView:
        row, fields = self._read_one(tx, RT.APPOINTMENT, appointment_id)
        return _redact(AppointmentView, self._appointment_data(row, fields), fields)

    @guarded(AuditKind.PHI_READ, RT.NOTE, targeted=True)
    def read_note(self, tx: _Tx, /, *, note_id: str) -> NoteView:
        row, fields = self._read_one(tx, RT.NOTE, note_id)
        return _redact(NoteView, self._note_data(tx, row, with_text="versions" in fields), fields)

    @guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
    def read_prescription(self, tx: _Tx, /, *, prescription_id: str) -> PrescriptionView:
        row, fields = self._read_one(tx, RT.PRESCRIPTION, prescription_id)
        return _redact(PrescriptionView, _prescription_data(row), fields)

    @guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
    def read_allergy(self, tx: _Tx, /, *, allergy_id: str) -> AllergyView:
        row, fields = self._read_one(tx, RT.ALLERGY, allergy_id)
        return _redact(AllergyView, _allergy_data(row), fields)

    @guarded(AuditKind.PHI_READ, RT.OBSERVATION, targeted=True)
    def read_observation(self, tx: _Tx, /, *, observation_id: str) -> ObservationView:
        row, fields = self._read_one(tx, RT.OBSERVATION, observation_id)
        return _redact(ObservationView, _observation_data(row), fields)

    @guarded(AuditKind.PHI_READ, RT.CONDITION, targeted=True)
    def read_condition(self, tx: _Tx, /, *, condition_id: str) -> ConditionView:
        row, fields = self._read_one(tx, RT.CONDITION, condition_id)
        return _redact(ConditionView, _condition_data(row), fields)

    @guarded(AuditKind.PHI_READ, RT.ENCOUNTER, targeted=True)
    def read_encounter(self, tx: _Tx, /, *, encounter_id: str) -> EncounterView:
        row, fields = self._read_one(tx, RT.ENCOUNTER, encounter_id)
        return _redact(EncounterView, _encounter_data(row), fields)

    @guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
    def read_invoice(self, tx: _Tx, /, *, invoice_id: str) -> InvoiceView:
        row, fields = self._read_one(tx, RT.INVOICE, invoice_id)
        return self._invoice_view(tx, row, fields)

    @guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
    def read_payment(self, tx: _Tx, /, *, payment_id: str) -> InvoiceView:
        """A payment, read as the invoice it paid (a payment is part of its invoice)."""
        pid = parse_id(payment_id)
        payment = tx.session.get(Payment, pid) if pid else None
        if payment is None:
            raise NotFound(NOT_FOUND)
        row, fields = self._read_one(tx, RT.INVOICE, str(payment.invoice_id))
        tx.resource_ids.append(str(payment.id))
        return self._invoice_view(tx, row, fields)

    # -- care teams and referrals ---------------------------------------------------------------
    # A care relationship OPENS the chart to the practitioner it names (carnet.phi.care), so
    # making one is guarded like reading the chart and more: only a physician in the patient's
    # care by a lasting clinical relationship (not break-the-glass, not a referral: see
    # WRITE_RULES), to an active colleague of the patient's facility, never to themself, with a
    # required, bounded end. Ending one is allowed to whoever made it, whoever it names, and any
    # physician who could have made it; it is kept (end_at set), and its access stops at once.
    @guarded(AuditKind.PHI_READ, RT.CARE_TEAM, targeted=True)
    def list_care_team(self, tx: _Tx, /, *, patient_id: str) -> list[CareTeamView]:
        """The patient's care relationships, current and ended, newest first."""
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.CARE_TEAM,
            select(CareRelationship)
            .where(CareRelationship.patient_id == pid)
            .order_by(CareRelationship.start_at.desc()),
        )
        versions = self._care_versions(tx, rows, with_reason="reason" in fields)
        return [
            _redact(CareTeamView, _care_team_data(r, tx.now, *versions.get(r.id, (1, None))), fields)
            for r in rows
        ]

    @guarded(AuditKind.PHI_READ, RT.CARE_TEAM, targeted=True)
    def read_care_team(self, tx: _Tx, /, *, care_team_id: str) -> CareTeamView:
        row, fields = self._read_one(tx, RT.CARE_TEAM, care_team_id)
        version, reason = self._care_versions(tx, [row], with_reason="reason" in fields).get(
            row.id, (1, None)
        )
        return _redact(CareTeamView, _care_team_data(row, tx.now, version, reason), fields)

    def _care_versions(
        self, tx: _Tx, rows: Sequence[CareRelationship], *, with_reason: bool
    ) -> dict[uuid.UUID, tuple[int, str | None]]:
        """Each relationship's current version (its latest stored one; a seeded relationship
        has none: version 1) and the reason it was made, from that version's snapshot."""
        if not rows:
            return {}
        latest: dict[uuid.UUID, ResourceVersion] = {}
        for v in tx.session.scalars(
            select(ResourceVersion)
            .where(
                ResourceVersion.resource_type == RT.CARE_TEAM.value,
                ResourceVersion.resource_id.in_([r.id for r in rows]),
            )
            .order_by(ResourceVersion.version_id)
        ):
            latest[v.resource_id] = v
        out: dict[uuid.UUID, tuple[int, str | None]] = {}
        for rid, v in latest.items():
            reason = None
            if with_reason:
                raw = self._dec(v.snapshot_ct, "resource_versions", "snapshot", v.id) or "{}"
                reason = json.loads(raw).get("reason")
            out[rid] = (v.version_id, reason)
        return out

    def _make_care(self, tx: _Tx, data: CareRelationshipInput, kind: Relationship) -> CareTeamView:
        what = "a referral" if kind == Relationship.REFERRAL else "a care-team membership"
        # Exclusive: one relationship at a time per patient, the duplicate check below and the
        # insert cannot interleave.
        patient = self._patient_for_write(tx, data.patient_id, exclusive=True)
        self._authorize(tx, patient, RT.CARE_TEAM, write=True)
        me = tx.ctx.practitioner_id
        if me is None:
            raise _Refused(
                "only a practitioner in the patient's care makes a care relationship", [patient.id]
            )
        if tx.ctx.acting_facility_id != patient.facility_id:
            raise InvalidInput(f"{what} is made by a practitioner of the patient's facility")
        reason = " ".join(data.reason.split())
        if not 3 <= len(reason) <= 500:
            raise InvalidInput(f"{what} needs a reason of 3 to 500 characters")
        target = parse_id(data.practitioner_id)
        practitioner = tx.session.get(Practitioner, target) if target is not None else None
        if practitioner is None or not practitioner.active or practitioner.facility_id != patient.facility_id:
            raise InvalidInput("the practitioner must be an active practitioner of the patient's facility")
        if practitioner.id == me:
            raise InvalidInput(f"{what} names a colleague: a practitioner cannot name themself")
        longest = REFERRAL_MAX_DURATION if kind == Relationship.REFERRAL else CARE_TEAM_MAX_DURATION
        end = data.end_at
        if end is None:
            raise InvalidInput(f"{what} needs an end date (period.end), at most {longest.days} days ahead")
        if end.tzinfo is None:
            raise InvalidInput("the end date needs a time zone")
        if end <= tx.now:
            raise InvalidInput("the end date must be in the future")
        if end > tx.now + longest:
            raise InvalidInput(f"{what} lasts at most {longest.days} days")
        existing = tx.session.scalar(
            select(CareRelationship.id).where(
                CareRelationship.patient_id == patient.id,
                CareRelationship.practitioner_id == practitioner.id,
                CareRelationship.kind == kind.value,
                CareRelationship.start_at <= tx.now,
                or_(CareRelationship.end_at.is_(None), CareRelationship.end_at > tx.now),
            )
        )
        if existing is not None:
            raise Conflict(f"{what} of this patient to this practitioner is active: CareTeam/{existing}")
        row = CareRelationship(
            id=new_id(),
            patient_id=patient.id,
            practitioner_id=practitioner.id,
            facility_id=patient.facility_id,
            kind=kind.value,
            start_at=tx.now,
            end_at=end,
            created_by=tx.ctx.account_id,
        )
        tx.session.add(row)
        tx.session.flush()
        tx.reasons.append(f"{kind.value} to Practitioner/{practitioner.id} until {end.isoformat()}")
        self._judge_care(tx, practitioner.id)
        data_out = _care_team_data(row, tx.now, 1, reason)
        return self._written(tx, patient, RT.CARE_TEAM, CareTeamView, data_out, 1, "create")

    def _judge_care(self, tx: _Tx, practitioner_id: uuid.UUID) -> None:
        """Detection sees each care relationship made by a colleague: how many this account made,
        and how many name this practitioner, in 24 hours (this one included). An alert it raises
        commits with the relationship, and the audit event names it."""
        since = tx.now - dt.timedelta(hours=24)
        made = select(func.count()).where(
            CareRelationship.created_by.is_not(None), CareRelationship.start_at > since
        )
        by_actor = tx.session.scalar(made.where(CareRelationship.created_by == tx.ctx.account_id))
        named = tx.session.scalar(made.where(CareRelationship.practitioner_id == practitioner_id))
        alert = judge_care_relationship(
            tx.session,
            actor=self.actor,
            practitioner_id=practitioner_id,
            by_actor_24h=int(by_actor or 0),
            to_practitioner_24h=int(named or 0),
            at=tx.now,
        )
        if alert is not None:
            tx.session.flush()
            tx.resource_ids.append(str(alert.id))

    @guarded(AuditKind.PHI_CREATE, RT.CARE_TEAM, targeted=True)
    def refer_patient(self, tx: _Tx, /, *, data: CareRelationshipInput) -> CareTeamView:
        """Refer a patient in one's care to a colleague of the same facility: the colleague sees
        the chart from now until `end_at` (required, at most REFERRAL_MAX_DURATION)."""
        return self._make_care(tx, data, Relationship.REFERRAL)

    @guarded(AuditKind.PHI_CREATE, RT.CARE_TEAM, targeted=True)
    def add_care_team_member(self, tx: _Tx, /, *, data: CareRelationshipInput) -> CareTeamView:
        """Add a colleague of the same facility (physician or nurse) to a patient's care team,
        until `end_at` (required, at most CARE_TEAM_MAX_DURATION; renewed by adding again)."""
        return self._make_care(tx, data, Relationship.CARE_TEAM)

    @guarded(AuditKind.PHI_UPDATE, RT.CARE_TEAM, targeted=True)
    def end_care_relationship(
        self, tx: _Tx, /, *, care_team_id: str, expected_version: int | None = None
    ) -> CareTeamView:
        """End a care relationship now (kept, end_at set): the access it gave stops at once.
        Idempotent: ending an ended one changes nothing. `expected_version` (If-Match): 412."""
        row, patient = self._record_to_change(tx, CareRelationship, care_team_id)
        me, account = tx.ctx.practitioner_id, tx.ctx.account_id
        if (me is not None and row.practitioner_id == me) or (
            account is not None and row.created_by == account
        ):
            # Whoever it names, or whoever made it, may end it: ending only takes access away.
            self._check_scopes(tx, RT.CARE_TEAM)
            if not self._relationships(tx, [patient]).get(patient.id):
                raise _Refused("patient outside the actor's facilities or restricted", [patient.id])
            tx.reasons.append("ends a care relationship it names or made")
        else:
            self._authorize(tx, patient, RT.CARE_TEAM, write=True)
        version, reason = self._care_versions(tx, [row], with_reason=True).get(row.id, (1, None))
        if expected_version is not None and expected_version != version:
            raise Conflict("the resource was changed by someone else: reload and try again")
        tx.resource_ids.append(str(row.id))
        if row.end_at is not None and row.end_at <= tx.now:
            rels = self._relationships(tx, [patient])
            fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.CARE_TEAM)
            self._expose(tx, [patient.id], Channel.WRITE, rels, fields, resource=RT.CARE_TEAM)
            tx.reasons.append("already ended: nothing changed")
            return _redact(CareTeamView, _care_team_data(row, tx.now, version, reason), fields)
        if version == 1 and not self._care_versions(tx, [row], with_reason=False):
            # Made before relationships were versioned (seeded): keep its state as version 1.
            row_id = new_id()
            before = json.dumps(_care_team_data(row, row.start_at, 1, None), default=str, sort_keys=True)
            tx.session.add(
                ResourceVersion(
                    id=row_id,
                    resource_type=RT.CARE_TEAM.value,
                    resource_id=row.id,
                    version_id=1,
                    patient_id=patient.id,
                    facility_id=patient.facility_id,
                    recorded_at=row.start_at,
                    author_id=row.created_by,
                    action="create",
                    snapshot_ct=self._enc(
                        before, patient.facility_id, "resource_versions", "snapshot", row_id
                    ),
                )
            )
        # Never after its start: a relationship that had not started yet ends unstarted.
        row.end_at = max(tx.now, row.start_at)
        tx.session.flush()
        tx.reasons.append(f"{row.kind} of Practitioner/{row.practitioner_id} ended")
        data = _care_team_data(row, tx.now, version + 1, reason)
        return self._written(tx, patient, RT.CARE_TEAM, CareTeamView, data, version + 1, "update")

    # -- lab reports ----------------------------------------------------------------------------
    def _reports(
        self, tx: _Tx, rows: Sequence[DiagnosticReport], fields: frozenset[str]
    ) -> list[DiagnosticReportView]:
        results: dict[uuid.UUID, list[str]] = {}
        if "result_ids" in fields and rows:
            for report_id, observation_id in tx.session.execute(
                select(Observation.report_id, Observation.id)
                .where(Observation.report_id.in_([r.id for r in rows]))
                .order_by(Observation.effective_at, Observation.id)
                .limit(SECTION_LIMIT * 10)
            ):
                if report_id is not None:
                    results.setdefault(report_id, []).append(str(observation_id))
        views = []
        for r in rows:
            conclusion = (
                self._dec(r.conclusion_ct, "diagnostic_reports", "conclusion", r.id)
                if "conclusion" in fields
                else None
            )
            data = {
                "id": str(r.id),
                "updated_at": r.updated_at,
                "patient_id": str(r.patient_id),
                "facility_id": str(r.facility_id),
                "code": r.code,
                "display": r.display,
                "status": r.status,
                "issued_at": r.issued_at,
                "conclusion": conclusion,
                "performer_id": _s(r.performer_id),
                "result_ids": results.get(r.id, []),
                "version_id": r.version_id,
            }
            views.append(_redact(DiagnosticReportView, data, fields))
        return views

    @guarded(AuditKind.PHI_READ, RT.DIAGNOSTIC_REPORT, targeted=True)
    def list_diagnostic_reports(self, tx: _Tx, /, *, patient_id: str) -> list[DiagnosticReportView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.DIAGNOSTIC_REPORT,
            select(DiagnosticReport)
            .where(DiagnosticReport.patient_id == pid)
            .order_by(DiagnosticReport.issued_at.desc()),
        )
        return self._reports(tx, rows, fields)

    @guarded(AuditKind.PHI_READ, RT.DIAGNOSTIC_REPORT, targeted=True)
    def read_diagnostic_report(self, tx: _Tx, /, *, report_id: str) -> DiagnosticReportView:
        row, fields = self._read_one(tx, RT.DIAGNOSTIC_REPORT, report_id)
        return self._reports(tx, [row], fields)[0]

    # -- consents: the patient's privacy decisions, honoured by the policy ----------------------
    @guarded(AuditKind.PHI_READ, RT.CONSENT, targeted=True)
    def list_consents(self, tx: _Tx, /, *, patient_id: str) -> list[ConsentView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.CONSENT,
            select(Consent).where(Consent.patient_id == pid).order_by(Consent.recorded_at.desc()),
        )
        return [_redact(ConsentView, _consent_data(r), fields) for r in rows]

    @guarded(AuditKind.PHI_READ, RT.CONSENT, targeted=True)
    def read_consent(self, tx: _Tx, /, *, consent_id: str) -> ConsentView:
        row, fields = self._read_one(tx, RT.CONSENT, consent_id)
        return _redact(ConsentView, _consent_data(row), fields)

    def _set_opposition(self, tx: _Tx, patient: Patient, opposes: bool) -> None:
        """The flag the policy reads (care.visible_filter), changed as a new Patient version."""
        if patient.opposes_other_facilities == opposes:
            return
        self._bump(tx, Patient, patient, patient.version_id, opposes_other_facilities=opposes)
        full = self._patient_data(patient, PATIENT_IDENTITY | PATIENT_CONTACT)
        self._snapshot(tx, RT.PATIENT, patient.id, patient.version_id, patient, "update", full)

    @guarded(AuditKind.PHI_CREATE, RT.CONSENT, targeted=True)
    def record_consent(
        self, tx: _Tx, /, *, patient_id: str, kind: str = OPPOSE_OTHER_FACILITIES
    ) -> ConsentView:
        """Record a patient's privacy decision; it takes effect at once, for every actor."""
        if kind not in CONSENT_KINDS:
            raise InvalidInput(f"consent kind must be one of: {', '.join(sorted(CONSENT_KINDS))}")
        # Exclusive: it may change the patient row (the opposition flag), and two decisions
        # of one kind cannot both pass the check below.
        patient = self._patient_for_write(tx, patient_id, exclusive=True)
        self._authorize(tx, patient, RT.CONSENT, write=True)
        active = tx.session.scalar(
            select(Consent.id).where(
                Consent.patient_id == patient.id, Consent.kind == kind, Consent.status == "active"
            )
        )
        if active is not None:
            raise Conflict("this patient already has an active consent of this kind")
        consent = Consent(
            id=new_id(),
            patient_id=patient.id,
            facility_id=patient.facility_id,
            kind=kind,
            status="active",
            recorded_by=tx.ctx.account_id,
            recorded_at=tx.now,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(consent)
        tx.session.flush()
        self._set_opposition(tx, patient, True)
        tx.reasons.append(f"consent {kind} recorded")
        return self._written(tx, patient, RT.CONSENT, ConsentView, _consent_data(consent), 1, "create")

    @guarded(AuditKind.PHI_UPDATE, RT.CONSENT, targeted=True)
    def withdraw_consent(self, tx: _Tx, /, *, consent_id: str, expected_version: int) -> ConsentView:
        """Withdraw a decision (kept, status inactive); the restriction ends with the last one."""
        # Exclusive: withdrawing the last one changes the patient row (the opposition flag).
        consent, patient = self._record_to_change(tx, Consent, consent_id, exclusive=True)
        self._authorize(tx, patient, RT.CONSENT, write=True)
        if consent.status != "active":
            raise Conflict("this consent is already withdrawn")
        self._bump(
            tx,
            Consent,
            consent,
            expected_version,
            status="inactive",
            withdrawn_by=tx.ctx.account_id,
            withdrawn_at=tx.now,
        )
        others = tx.session.scalar(
            select(Consent.id).where(
                Consent.patient_id == patient.id,
                Consent.kind == consent.kind,
                Consent.status == "active",
                Consent.id != consent.id,
            )
        )
        if consent.kind == OPPOSE_OTHER_FACILITIES and others is None:
            self._set_opposition(tx, patient, False)
        tx.reasons.append(f"consent {consent.kind} withdrawn")
        data = _consent_data(consent)
        return self._written(tx, patient, RT.CONSENT, ConsentView, data, consent.version_id, "update")

    # -- provenance: who wrote which version, from the versioned history ------------------------
    def _provenance(self, tx: _Tx, versions: Sequence[ResourceVersion]) -> list[ProvenanceView]:
        """Authorized like a read of the target; shows authors and times, never content."""
        self._require(tx, Permission.HISTORY_READ)
        kind = ResourceType(versions[0].resource_type)
        patient = self._record_owner(tx, versions[0].patient_id, kind)
        self._authorize(tx, patient, kind)
        tx.resource_ids.extend(str(v.id) for v in versions)
        rels = self._relationships(tx, [patient])
        self._expose(tx, [patient.id], Channel.CHART, rels, {"patient_id"}, resource=kind)
        return self._provenance_views(tx, versions)

    def _provenance_views(self, tx: _Tx, versions: Sequence[ResourceVersion]) -> list[ProvenanceView]:
        authors = {v.author_id for v in versions if v.author_id is not None}
        practitioners: dict[uuid.UUID, uuid.UUID | None] = {}
        if authors:
            practitioners = {
                account: practitioner
                for account, practitioner in tx.session.execute(
                    select(Account.id, Account.practitioner_id).where(Account.id.in_(authors))
                )
            }
        return [
            ProvenanceView(
                id=str(v.id),
                target_type=v.resource_type,
                target_id=str(v.resource_id),
                target_version=v.version_id,
                patient_id=str(v.patient_id),
                recorded_at=v.recorded_at,
                action=v.action,
                author_account_id=_s(v.author_id),
                author_practitioner_id=_s(practitioners.get(v.author_id)) if v.author_id else None,
            )
            for v in versions
        ]

    @guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
    def list_provenance(self, tx: _Tx, /, *, target_type: str, target_id: str) -> list[ProvenanceView]:
        """The provenance of every stored version of one resource (FHIR Provenance?target=)."""
        tx.resource_type = "Provenance"
        try:
            ResourceType(target_type)
        except ValueError:
            raise InvalidInput("unknown target resource type") from None
        rid = parse_id(target_id)
        if rid is None:
            raise NotFound(NOT_FOUND)
        versions = list(
            tx.session.scalars(
                select(ResourceVersion)
                .where(ResourceVersion.resource_type == target_type, ResourceVersion.resource_id == rid)
                .order_by(ResourceVersion.version_id)
                .limit(HISTORY_LIMIT)
            )
        )
        if not versions:
            raise NotFound(NOT_FOUND)
        return self._provenance(tx, versions)

    @guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
    def list_patient_provenance(self, tx: _Tx, /, *, patient_id: str) -> list[ProvenanceView]:
        """Who wrote what in one patient's record (FHIR Provenance?patient=), newest first:
        only the versions of the resource types the actor may read for this patient."""
        tx.resource_type = "Provenance"
        self._require(tx, Permission.HISTORY_READ)
        patient = self._patient(tx, patient_id)
        self._authorize(tx, patient, RT.PATIENT)
        rels = self._relationships(tx, [patient])
        readable = [
            t.value for t in ResourceType if self._read_fields(tx, rels.get(patient.id, frozenset()), t)
        ]
        if self.actor.scopes is not None:  # a token: only the types its scopes read
            readable = [t for t in readable if _token_reads(self.actor, t)]
        # The records of duplicates merged into this one moved here; their earlier versions
        # still name the duplicate they were written under.
        replaced = self._replaced(tx, patient.id)
        whose = ResourceVersion.patient_id == patient.id
        if replaced:
            moved = and_(
                ResourceVersion.patient_id.in_(replaced), ResourceVersion.resource_type != RT.PATIENT.value
            )
            whose = or_(whose, moved)
        versions = list(
            tx.session.scalars(
                select(ResourceVersion)
                .where(whose, ResourceVersion.resource_type.in_(readable))
                .order_by(ResourceVersion.recorded_at.desc(), ResourceVersion.version_id.desc())
                .limit(HISTORY_LIMIT)
            )
        )
        tx.resource_ids.extend(str(v.id) for v in versions)
        self._expose(tx, [patient.id], Channel.CHART, rels, {"patient_id"}, resource=RT.PATIENT)
        return self._provenance_views(tx, versions)

    @guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
    def read_provenance(self, tx: _Tx, /, *, provenance_id: str) -> ProvenanceView:
        tx.resource_type = "Provenance"
        vid = parse_id(provenance_id)
        version = tx.session.get(ResourceVersion, vid) if vid else None
        if version is None:
            raise NotFound(NOT_FOUND)
        return self._provenance(tx, [version])[0]

    @guarded(AuditKind.PHI_READ, RT.ENCOUNTER, targeted=True)
    def list_encounters(self, tx: _Tx, /, *, patient_id: str) -> list[EncounterView]:
        pid = parse_id(patient_id)
        rows, fields = self._section(
            tx,
            patient_id,
            RT.ENCOUNTER,
            select(Encounter).where(Encounter.patient_id == pid).order_by(Encounter.start_at.desc()),
        )
        return [_redact(EncounterView, _encounter_data(r), fields) for r in rows]

    @guarded(AuditKind.PHI_DELETE, RT.PATIENT, targeted=True)
    def deactivate_patient(self, tx: _Tx, /, *, patient_id: str, expected_version: int) -> PatientView:
        """A FHIR delete of a Patient: the record is kept, marked inactive, versioned and audited."""
        patient = self._patient(tx, patient_id)
        self._authorize(tx, patient, RT.PATIENT, write=True)
        if not patient.active:
            raise Conflict("this patient record is already inactive")
        self._bump(tx, Patient, patient, expected_version, active=False)
        full = self._patient_data(patient, PATIENT_IDENTITY | PATIENT_CONTACT)
        self._snapshot(tx, RT.PATIENT, patient.id, patient.version_id, patient, "delete", full)
        return self._written_patient(tx, patient)

    # -- identity vigilance: two records of one person made one ---------------------------------
    @guarded(AuditKind.PHI_MERGE, RT.PATIENT, targeted=True)
    def merge_patients(
        self,
        tx: _Tx,
        /,
        *,
        source_id: str,
        target_id: str,
        source_version: int,
        target_version: int,
        reason: str,
    ) -> PatientView:
        """Merge a duplicate (`source`) into the record kept (`target`), all in one transaction.

        Both are active records of one facility, each at the version the clerk read (If-Match).
        The source becomes inactive with `merged_into_id`; every record filed under it (see
        MERGED_RECORDS) is re-filed under the target; the target takes the source's INS and
        contact details where it has none. Each patient gets a new version; the source's, the
        merge record, lists every record moved (so the merge can be reversed exactly), and the
        moved records keep their versions, which still show under whom they were written.
        """
        self._require(tx, Permission.PATIENT_MERGE)
        self._check_scopes(tx, RT.PATIENT)
        source = self._patient(tx, source_id)
        # A merged source is judged below, after its version: a stale merge is 412 like any other.
        self._authorize(
            tx, source, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True
        )
        self._identity_lock(tx, source.facility_id)
        # Both rows are held before anything moves (issue #9): a write filing a record under
        # either one waits for the merge, then sees it and is refused (`_patient_for_write`);
        # one already running makes the merge wait for its commit, and its record moves too.
        # FOR NO KEY UPDATE, not FOR UPDATE: the foreign-key checks (KEY SHARE) of an
        # amendment holding a record row the merge waits for must not wait on the merge.
        # Read as it stands now that no other identity change runs.
        tx.session.refresh(source, with_for_update={"key_share": True})
        target = self._patient_for_write(tx, target_id, exclusive=True)
        if target.id == source.id:
            raise InvalidInput("a patient cannot be merged into itself: name two different records")
        self._authorize(
            tx, target, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True
        )
        reason = " ".join((reason or "").split())
        if not MERGE_REASON_MIN <= len(reason) <= MERGE_REASON_MAX:
            raise InvalidInput(
                f"a merge needs a reason ({MERGE_REASON_MIN} to {MERGE_REASON_MAX} characters)"
            )
        for patient, expected in ((source, source_version), (target, target_version)):
            if patient.version_id != expected:
                raise Conflict(f"Patient/{patient.id} was changed by someone else: reload and try again")
        if source.facility_id != target.facility_id:
            raise InvalidInput(
                "the two records belong to different facilities: a merge stays in one facility"
            )
        for patient in (source, target):
            if not patient.active or patient.merged_into_id is not None:
                raise InvalidInput(
                    f"Patient/{patient.id} is inactive (merged or deleted): merge active records"
                )
        in_progress = tx.session.scalar(
            select(func.count())
            .select_from(Encounter)
            .where(Encounter.patient_id.in_([source.id, target.id]), Encounter.status == "in-progress")
        )
        if (in_progress or 0) > 1:
            raise InvalidInput(
                "both records have a stay in progress: discharge one of them (or mark it entered in"
                " error) first, a patient is in one stay at a time"
            )
        accounts = tx.session.scalar(
            select(func.count()).select_from(Account).where(Account.patient_id.in_([source.id, target.id]))
        )
        if (accounts or 0) > 1:
            raise InvalidInput("both records have a patient portal account: close one of them first")
        # Re-file every record of the duplicate under the record kept.
        moved: dict[str, list[str]] = {}
        for name, model in MERGED_RECORDS:
            ids = tx.session.scalars(
                update(model)
                .where(model.patient_id == source.id)
                .values(patient_id=target.id)
                .returning(model.id)
                .execution_options(synchronize_session=False)
            ).all()
            if ids:
                moved[name] = sorted(str(i) for i in ids)
        portal = tx.session.scalars(
            update(Account)
            .where(Account.patient_id == source.id)
            .values(patient_id=target.id)
            .returning(Account.id)
            .execution_options(synchronize_session=False)
        ).all()
        # The record kept takes what it lacks: the INS, contact details, a designated physician,
        # and the stricter privacy choice (an opposition of either record holds for the person).
        taken = {
            name: self._dec(getattr(source, column), "patients", name, source.id)
            for name, (column, _kind) in PATIENT_ENCRYPTED.items()
            if name in MERGE_FILLS and getattr(source, column) is not None and getattr(target, column) is None
        }
        values = self._patient_columns(target.facility_id, target.id, taken)
        if target.designated_physician_id is None and source.designated_physician_id is not None:
            values["designated_physician_id"] = source.designated_physician_id
        if source.opposes_other_facilities and not target.opposes_other_facilities:
            values["opposes_other_facilities"] = True
        self._bump(tx, Patient, source, source_version, active=False, merged_into_id=target.id)
        self._bump(tx, Patient, target, target_version, **values)
        everything = PATIENT_IDENTITY | PATIENT_CONTACT
        merge = {
            "at": tx.now.isoformat(),
            "reason": reason,
            "source": str(source.id),
            "target": str(target.id),
        }
        source_data = self._patient_data(source, everything)
        self._snapshot(
            tx,
            RT.PATIENT,
            source.id,
            source.version_id,
            source,
            "update",
            source_data
            | {
                "merge": merge
                | {
                    "moved": moved,
                    "portal_account": [str(a) for a in portal],
                    "took": sorted(taken) + sorted(k for k in values if k == "designated_physician_id"),
                }
            },
        )
        replaces = [
            str(r)
            for r in tx.session.scalars(
                select(Patient.id).where(Patient.merged_into_id == target.id).order_by(Patient.id).limit(100)
            )
        ]
        target_data = self._patient_data(target, everything) | {"replaces": replaces}
        self._snapshot(
            tx, RT.PATIENT, target.id, target.version_id, target, "update", target_data | {"merge": merge}
        )
        if values.get("opposes_other_facilities"):
            self._consent_follows_flag(tx, target)
        tx.resource_ids.extend(i for ids in moved.values() for i in ids)
        total = sum(len(ids) for ids in moved.values())
        tx.reasons.append(f"merge of a duplicate: {total} records moved")
        return self._both_charts(tx, source, target, shown=target)

    @guarded(AuditKind.PHI_UNMERGE, RT.PATIENT, targeted=True)
    def unmerge_patients(
        self,
        tx: _Tx,
        /,
        *,
        source_id: str,
        target_id: str,
        source_version: int,
        target_version: int,
        reason: str,
    ) -> PatientView:
        """Reverse a merge done in error, from its merge record (the source's version written by
        `merge_patients`): the records it moved go back to the source, the source is active
        again, and the target gives back the fields it took (where it still holds the source's
        value). Records written on the target since the merge stay there; an opposition to other
        facilities taken by the target stays (withdrawing it is the patient's decision).
        Both records are stale-checked (If-Match); each gets a new version."""
        self._require(tx, Permission.PATIENT_MERGE)
        self._check_scopes(tx, RT.PATIENT)
        source = self._patient(tx, source_id)
        self._authorize(
            tx, source, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE, merged_ok=True
        )
        self._identity_lock(tx, source.facility_id)
        # Locked as a merge locks them (see merge_patients), before anything moves back.
        tx.session.refresh(source, with_for_update={"key_share": True})
        if source.merged_into_id is None:
            raise InvalidInput(f"Patient/{source.id} is not a merged record: there is nothing to reverse")
        target = self._patient_for_write(tx, source.merged_into_id, exclusive=True)
        self._authorize(tx, target, RT.PATIENT, write=True, permission=Permission.PATIENT_MERGE)
        if parse_id(target_id) != target.id:
            raise InvalidInput("the target is not the record this patient was merged into")
        reason = " ".join((reason or "").split())
        if not MERGE_REASON_MIN <= len(reason) <= MERGE_REASON_MAX:
            raise InvalidInput(
                f"reversing a merge needs a reason ({MERGE_REASON_MIN} to {MERGE_REASON_MAX} characters)"
            )
        for patient, expected in ((source, source_version), (target, target_version)):
            if patient.version_id != expected:
                raise Conflict(f"Patient/{patient.id} was changed by someone else: reload and try again")
        record = tx.session.scalar(
            select(ResourceVersion).where(
                ResourceVersion.resource_type == RT.PATIENT.value,
                ResourceVersion.resource_id == source.id,
                ResourceVersion.version_id == source.version_id,
            )
        )
        raw = self._dec(record.snapshot_ct, "resource_versions", "snapshot", record.id) if record else None
        merge = json.loads(raw or "{}").get("merge") or {}
        if merge.get("target") != str(target.id) or not isinstance(merge.get("moved"), dict):
            raise InvalidInput("the merge record of this patient is missing: it cannot be reversed here")
        moved_back: dict[str, list[str]] = {}
        for name, model in MERGED_RECORDS:
            ids = [i for i in (parse_id(v) for v in merge["moved"].get(name) or []) if i is not None]
            if not ids:
                continue
            back = tx.session.scalars(
                update(model)
                .where(model.id.in_(ids), model.patient_id == target.id)
                .values(patient_id=source.id)
                .returning(model.id)
                .execution_options(synchronize_session=False)
            ).all()
            if back:
                moved_back[name] = sorted(str(i) for i in back)
        accounts = [i for i in (parse_id(v) for v in merge.get("portal_account") or []) if i is not None]
        if accounts:
            tx.session.execute(
                update(Account)
                .where(Account.id.in_(accounts), Account.patient_id == target.id)
                .values(patient_id=source.id)
                .execution_options(synchronize_session=False)
            )
        # Give back what the target took, where it still holds the source's value.
        values: dict[str, Any] = {}
        for name in merge.get("took") or []:
            if name == "designated_physician_id":
                if target.designated_physician_id == source.designated_physician_id:
                    values["designated_physician_id"] = None
                continue
            if name not in MERGE_FILLS:
                continue
            column, kind = PATIENT_ENCRYPTED[name]
            mine = self._dec(getattr(target, column), "patients", name, target.id)
            theirs = self._dec(getattr(source, column), "patients", name, source.id)
            if mine is not None and mine == theirs:
                values[column] = None
                if kind is not None:
                    values[_BI_COLUMNS[kind]] = None
        self._bump(tx, Patient, source, source_version, active=True, merged_into_id=None)
        self._bump(tx, Patient, target, target_version, **values)
        everything = PATIENT_IDENTITY | PATIENT_CONTACT
        unmerge = {
            "at": tx.now.isoformat(),
            "reason": reason,
            "source": str(source.id),
            "target": str(target.id),
        }
        self._snapshot(
            tx,
            RT.PATIENT,
            source.id,
            source.version_id,
            source,
            "update",
            self._patient_data(source, everything) | {"unmerge": unmerge | {"moved_back": moved_back}},
        )
        self._snapshot(
            tx,
            RT.PATIENT,
            target.id,
            target.version_id,
            target,
            "update",
            self._patient_data(target, everything) | {"unmerge": unmerge},
        )
        tx.resource_ids.extend(i for ids in moved_back.values() for i in ids)
        total = sum(len(ids) for ids in moved_back.values())
        tx.reasons.append(f"reversal of a merge: {total} records moved back")
        return self._both_charts(tx, source, target, shown=source)

    def _both_charts(self, tx: _Tx, source: Patient, target: Patient, *, shown: Patient) -> PatientView:
        """A merge or its reversal: both charts were opened to decide it, one exposure each; the
        answer is the record `shown`, with the duplicates it now replaces."""
        tx.relationships.clear()
        rels = self._relationships(tx, [source, target])
        for patient in (source, target):
            fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
            self._expose(tx, [patient.id], Channel.CHART, rels, fields)
        fields = self._read_fields(tx, rels.get(shown.id, frozenset()), RT.PATIENT)
        return self._with_replaces(tx, shown, self._patient_view(shown, fields))

    @guarded(AuditKind.PHI_TRANSACTION, RT.PATIENT, targeted=False)
    def run_transaction(self, tx: _Tx, /, *, steps: Sequence[TransactionStep]) -> list[Any]:
        """All or nothing (a FHIR transaction Bundle): each step names a write operation and
        builds its arguments from the results so far, so references between the bundle's
        entries resolve. The steps run in ONE guarded transaction, one audit event; any
        refusal or error rolls back every step and names the entry that failed."""
        if not 1 <= len(steps) <= TRANSACTION_LIMIT:
            raise InvalidInput(f"a transaction holds 1 to {TRANSACTION_LIMIT} entries")
        tx.query = f"transaction;entries={len(steps)}"
        results: list[Any] = []
        for number, (name, arguments) in enumerate(steps, start=1):
            if name not in TRANSACTION_OPERATIONS:
                raise InvalidInput(f"entry {number}: {name} cannot be part of a transaction")
            operation = getattr(Gate, name)
            body = operation.__wrapped__
            # Each step is checked (token scopes) as the write it is, not as a "transaction".
            tx.kind = operation.__gate_audit_kind__
            try:
                results.append(body(self, tx, **arguments(results)))
            except _Refused as exc:
                raise _Refused(f"entry {number}: {exc.reason}", exc.patient_ids) from None
            except (InvalidInput, Conflict, NotFound) as exc:
                raise type(exc)(f"entry {number}: {exc}") from None
            finally:
                tx.kind = AuditKind.PHI_TRANSACTION
        return results

    # == bulk export (invariant 3) ==============================================================
    def _approved_export(self, tx: _Tx, export_id: str) -> ExportRequest:
        """The actor's own approved, unexpired, unused export request (locked), or a refusal."""
        self._require(tx, Permission.PATIENT_READ)
        self._check_scopes(tx, RT.PATIENT)
        row_id = parse_id(export_id)
        if row_id is None:
            raise InvalidInput("not an export request id")
        request = tx.session.get(ExportRequest, row_id, with_for_update=True)
        if request is None:
            raise NotFound(NOT_FOUND)
        tx.resource_ids.append(str(request.id))
        if tx.ctx.account_id is None or request.requested_by != tx.ctx.account_id:
            raise _Refused("an export request is used only by the account that asked for it")
        status = status_of(request, tx.now)
        if status != ExportStatus.APPROVED:
            raise _Refused(f"export request is {status.value}, not approved")
        if request.facility_id not in tx.ctx.facility_ids or request.decided_by is None:
            raise _Refused("export request outside the actor's facilities")
        return request

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=False)
    def export(self, tx: _Tx, /, *, export_id: str) -> PatientExport:
        """The patients of an approved export request of this actor, once, watermarked.

        The request (carnet.access.exports) says which patients were asked for; the policy
        still decides who is in it and which fields each shows, as for any other read."""
        request = self._approved_export(tx, export_id)
        scope = ExportScope(request.scope)
        if scope == ExportScope.CARE:
            opened = granting_relationships(roles=tx.ctx.roles, resource=RT.PATIENT) & care.CARE
            wanted = care.patient_filter(tx.ctx, opened)
        elif scope == ExportScope.PATIENTS:
            wanted = and_(care.visible_filter(tx.ctx), Patient.id.in_(listed_patients(request)))
        else:
            wanted = care.visible_filter(tx.ctx)
        found: list[Patient] = []
        if wanted is not None:
            query = select(Patient).where(wanted, Patient.facility_id == request.facility_id)
            found = list(tx.session.scalars(query.order_by(Patient.id).limit(EXPORT_LIMIT + 1)))
        if len(found) > EXPORT_LIMIT:
            raise InvalidInput(f"an export holds at most {EXPORT_LIMIT} patients: narrow its scope")
        rels: dict[uuid.UUID, frozenset[Relationship]] = {}
        for start in range(0, len(found), EXPORT_CHUNK):
            rels |= self._relationships(tx, found[start : start + EXPORT_CHUNK])
        items: list[PatientView] = []
        shown: list[uuid.UUID] = []
        fields_shown: set[str] = set()
        for patient in found:
            fields = self._read_fields(tx, rels.get(patient.id, frozenset()), RT.PATIENT)
            if not fields:
                continue  # the policy opens nothing of this one to this actor
            items.append(self._patient_view(patient, fields))
            shown.append(patient.id)
            fields_shown |= fields
        request.status = ExportStatus.USED.value
        request.used_at = tx.now
        request.exported_count = len(shown)
        tx.session.flush()
        tx.query = f"export={request.id};scope={scope.value}"
        tx.reasons.append(f"approved export {request.id} ({scope.value}, {len(shown)} patients)")
        self._expose(tx, shown, Channel.EXPORT, rels, fields_shown)
        return PatientExport(
            export_id=str(request.id),
            purpose=request.purpose,
            requested_by=str(request.requested_by),
            approved_by=str(request.decided_by),
            exported_at=tx.now,
            items=items,
        )

    # -- the same export, run asynchronously (FHIR Bulk Data kick-off, status, file) -----------
    def _export_job(self, tx: _Tx, job_id: str, *, lock: bool = True) -> ExportFile:
        """One of the actor's own export jobs; anyone else's answers like a missing one. Locked
        for a change; a poll does not lock (it must not wait for the run)."""
        self._require(tx, Permission.PATIENT_READ)
        self._check_scopes(tx, RT.PATIENT)
        jid = parse_id(job_id)
        job = tx.session.get(ExportFile, jid, with_for_update=lock) if jid else None
        if job is None:
            raise NotFound(NOT_FOUND)
        tx.resource_ids.extend([str(job.id), str(job.export_request_id)])
        if tx.ctx.account_id is None or job.account_id != tx.ctx.account_id:
            raise _Refused("an export job is seen only by the account that started it")
        return job

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=False)
    def queue_export(self, tx: _Tx, /, *, export_id: str) -> ExportJobView:
        """Accept an approved export request to run in the background: the same checks as
        `export`, nothing read yet; one job per request (it is still used once)."""
        request = self._approved_export(tx, export_id)
        started = tx.session.scalar(select(ExportFile.id).where(ExportFile.export_request_id == request.id))
        if started is not None:
            raise Conflict("this export was already started: poll its status")
        assert tx.ctx.account_id is not None  # _approved_export checked it
        job = ExportFile(
            id=new_id(),
            export_request_id=request.id,
            account_id=tx.ctx.account_id,
            facility_id=request.facility_id,
            status="running",
            created_at=tx.now,
        )
        tx.session.add(job)
        tx.session.flush()
        tx.resource_ids.append(str(job.id))
        tx.query = f"export={request.id};async"
        tx.reasons.append(f"export {request.id} queued")
        return _job_view(job)

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
    def run_export_job(
        self, tx: _Tx, /, *, job_id: str, render: Callable[[PatientExport], str]
    ) -> ExportJobView:
        """Run a queued export: exactly `export` (policy, exposures on channel export, the
        request used), its output rendered by `render` and kept encrypted until downloaded."""
        job = self._export_job(tx, job_id)
        if job.status != "running":
            raise Conflict(f"this export job is {job.status}, not waiting to run")
        export: PatientExport = Gate.export.__wrapped__(self, tx, export_id=str(job.export_request_id))  # type: ignore[attr-defined]
        job.ndjson_ct = self._enc(render(export), job.facility_id, "export_files", "ndjson", job.id)
        job.status = "completed"
        job.completed_at = tx.now
        job.patient_count = len(export.items)
        tx.session.flush()
        return _job_view(job)

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
    def abandon_export_job(
        self, tx: _Tx, /, *, job_id: str, reason: str, cancelled: bool = False
    ) -> ExportJobView:
        """A job that could not run is marked failed (its refusal or error is audited already);
        one the requester cancels is marked cancelled, its file (if any) erased undownloaded."""
        job = self._export_job(tx, job_id)
        if job.status not in (("running", "completed") if cancelled else ("running",)):
            raise Conflict(f"this export job is {job.status}")
        job.status = "cancelled" if cancelled else "failed"
        job.failure = (reason.strip() or job.status)[:200]
        job.ndjson_ct = None
        job.completed_at = job.completed_at or tx.now
        tx.session.flush()
        return _job_view(job)

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
    def export_job(self, tx: _Tx, /, *, job_id: str) -> ExportJobView:
        """A job's state for the requester's polling (no patient data). A file left past its
        window is erased here (status expired); a job running past its timeout is failed (as
        the sweeper does, only if still running: a run committing meanwhile wins)."""
        job = self._export_job(tx, job_id, lock=False)
        if job.status == "running" and tx.now - job.created_at > EXPORT_JOB_TIMEOUT:
            tx.session.execute(
                update(ExportFile)
                .where(ExportFile.id == job.id, ExportFile.status == "running")
                .values(status="failed", failure=STUCK_EXPORT, completed_at=tx.now)
                .execution_options(synchronize_session=False)
            )
            tx.session.refresh(job)
        if (
            job.status == "completed"
            and job.completed_at is not None
            and tx.now - job.completed_at > EXPORT_FILE_WINDOW
        ):
            job.status = "expired"
            job.ndjson_ct = None
            tx.session.flush()
        return _job_view(job)

    @guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
    def download_export(self, tx: _Tx, /, *, job_id: str) -> str:
        """The output, once, within the use window of the approval; then it is erased."""
        job = self._export_job(tx, job_id)
        if job.status != "completed" or job.ndjson_ct is None or job.completed_at is None:
            raise _Refused(f"export job is {job.status}: nothing to download")
        if tx.now - job.completed_at > EXPORT_FILE_WINDOW:
            raise _Refused("the export file has expired")
        text = self._dec(job.ndjson_ct, "export_files", "ndjson", job.id) or ""
        job.ndjson_ct = None
        job.status = "downloaded"
        job.downloaded_at = tx.now
        tx.session.flush()
        tx.reasons.append(f"export file downloaded ({job.patient_count} patients)")
        return text


def _token_reads(actor: Actor, resource_type: str) -> bool:
    try:
        require_scope(actor, resource_type=resource_type, action="read")
    except Forbidden:
        return False
    return True


def _job_view(job: ExportFile) -> ExportJobView:
    return ExportJobView(
        id=str(job.id),
        export_id=str(job.export_request_id),
        status=job.status,
        created_at=job.created_at,
        completed_at=job.completed_at,
        patient_count=job.patient_count,
        failure=job.failure,
    )


# What a merge re-files from the duplicate to the record kept: every table with a patient_id
# that holds the patient's care, billing or privacy records. Not moved, on purpose: audit events,
# exposures and break-the-glass accesses (what happened, to whom), a canary's marker, export
# requests (a decision taken on a list), and resource versions (history, under whom it was written).
MERGED_RECORDS: tuple[tuple[str, Any], ...] = (
    (RT.APPOINTMENT.value, Appointment),
    (RT.ENCOUNTER.value, Encounter),
    (RT.NOTE.value, ClinicalNote),
    (RT.PRESCRIPTION.value, Prescription),
    (RT.ALLERGY.value, Allergy),
    (RT.CONDITION.value, Condition),
    (RT.OBSERVATION.value, Observation),
    (RT.DIAGNOSTIC_REPORT.value, DiagnosticReport),
    (RT.COVERAGE.value, Coverage),
    (RT.CARD_READING.value, CardReading),
    (RT.INVOICE.value, Invoice),
    (RT.CARE_TEAM.value, CareRelationship),
    (RT.CONSENT.value, Consent),
)
MERGE_FILLS = frozenset({"ins", "address", "phone", "email"})  # taken from the duplicate if missing
MERGE_REASON_MIN = 5
MERGE_REASON_MAX = 500

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

# What `Gate._read_one` reads by id (other sections are read through their patient).
_RECORD_MODELS: dict[ResourceType, Any] = {
    RT.APPOINTMENT: Appointment,
    RT.NOTE: ClinicalNote,
    RT.PRESCRIPTION: Prescription,
    RT.ALLERGY: Allergy,
    RT.ENCOUNTER: Encounter,
    RT.OBSERVATION: Observation,
    RT.CONDITION: Condition,
    RT.CARE_TEAM: CareRelationship,
    RT.DIAGNOSTIC_REPORT: DiagnosticReport,
    RT.CONSENT: Consent,
    RT.INVOICE: Invoice,
}


# A transaction step: (the name of a write operation, its keyword arguments built from the
# results of the steps before it).
TransactionStep = tuple[str, Callable[[list[Any]], dict[str, Any]]]
TRANSACTION_LIMIT = 500
# One export holds at most EXPORT_LIMIT patients; relationships are computed EXPORT_CHUNK at a time.
EXPORT_LIMIT = 20_000
EXPORT_CHUNK = 500
EXPORT_FILE_WINDOW = dt.timedelta(hours=24)  # a completed export file waits this long, at most
# A job still running after this long has lost its worker (carnet.phi.sweep fails it).
EXPORT_JOB_TIMEOUT = dt.timedelta(minutes=30)
STUCK_EXPORT = "the export did not complete within 30 minutes (its worker stopped); nothing was exported"
TRANSACTION_OPERATIONS = frozenset(
    {
        "register_patient",
        "update_patient",
        "book_appointment",
        "amend_appointment",
        "cancel_appointment",
        "write_note",
        "amend_note",
        "prescribe",
        "stop_prescription",
        "record_allergy",
        "deactivate_patient",
        "record_consent",
        "withdraw_consent",
        "refer_patient",
        "add_care_team_member",
        "end_care_relationship",
        "admit_patient",
        "transfer_encounter",
        "discharge_encounter",
        "mark_encounter_entered_in_error",
        "record_observation",
        "amend_observation",
        "record_diagnostic_report",
        "amend_diagnostic_report",
        "record_condition",
        "amend_condition",
        "issue_invoice",
        "finalize_invoice",
        "cancel_invoice",
        "record_payment",
    }
)


def _encounter_data(e: Encounter) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "updated_at": e.updated_at,
        "patient_id": str(e.patient_id),
        "facility_id": str(e.facility_id),
        "kind": e.kind,
        "status": e.status,
        "start_at": e.start_at,
        "end_at": e.end_at,
        "location_id": _s(e.location_id),
        "attending_id": _s(e.attending_id),
        "version_id": e.version_id,
    }


def _observation_data(o: Observation) -> dict[str, Any]:
    return {
        "id": str(o.id),
        "updated_at": o.updated_at,
        "patient_id": str(o.patient_id),
        "category": o.category,
        "code": o.code,
        "display": o.display,
        "value_number": o.value_number,
        "unit": o.unit,
        "value_text": o.value_text,
        "effective_at": o.effective_at,
        "status": o.status,
        "version_id": o.version_id,
    }


def _condition_data(c: Condition) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "updated_at": c.updated_at,
        "patient_id": str(c.patient_id),
        "code": c.code,
        "display": c.display,
        "clinical_status": c.clinical_status,
        "verification_status": c.verification_status,
        "onset_at": c.onset_at,
        "recorded_by": _s(c.recorded_by),
        "version_id": c.version_id,
    }


def _care_team_data(
    r: CareRelationship, now: dt.datetime, version: int = 1, reason: str | None = None
) -> dict[str, Any]:
    ended = r.end_at is not None and r.end_at <= now
    return {
        "id": str(r.id),
        # No update time is stored: the relationship last changed when it started or ended.
        "updated_at": r.end_at if ended else r.start_at,
        "patient_id": str(r.patient_id),
        "facility_id": str(r.facility_id),
        "practitioner_id": str(r.practitioner_id),
        "kind": r.kind,
        "status": "active" if r.start_at <= now and not ended else "inactive",
        "start_at": r.start_at,
        "end_at": r.end_at,
        "version_id": version,
        "reason": reason,
    }


def _consent_data(c: Consent) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "updated_at": c.updated_at,
        "patient_id": str(c.patient_id),
        "facility_id": str(c.facility_id),
        "kind": c.kind,
        "status": c.status,
        "recorded_by": _s(c.recorded_by),
        "recorded_at": c.recorded_at,
        "withdrawn_by": _s(c.withdrawn_by),
        "withdrawn_at": c.withdrawn_at,
        "version_id": c.version_id,
    }


def _allergy_data(a: Allergy) -> dict[str, Any]:
    return {
        "id": str(a.id),
        "updated_at": a.updated_at,
        "patient_id": str(a.patient_id),
        "substance_code": a.substance_code,
        "substance_display": a.substance_display,
        "criticality": a.criticality,
        "clinical_status": a.clinical_status,
        "recorded_by": _s(a.recorded_by),
        "version_id": a.version_id,
    }


def _prescription_data(p: Prescription) -> dict[str, Any]:
    return {
        "id": str(p.id),
        "updated_at": p.updated_at,
        "patient_id": str(p.patient_id),
        "prescriber_id": str(p.prescriber_id),
        "medication_code": p.medication_code,
        "medication_display": p.medication_display,
        "substance_code": p.substance_code,
        "dosage_text": p.dosage_text,
        "status": p.status,
        "authored_at": p.authored_at,
        "valid_until": p.valid_until,
        "stop_reason": p.stop_reason,
        "allergy_override_reason": p.allergy_override_reason,
        "version_id": p.version_id,
        "warnings": [],
    }


def public_operations() -> dict[str, AuditKind]:
    """Every public Gate method and the audit kind it writes (the meta-test checks them all)."""
    found: dict[str, AuditKind] = {}
    for name in dir(Gate):
        if name.startswith("_"):
            continue
        member = getattr(Gate, name)
        if callable(member):
            found[name] = getattr(member, "__gate_audit_kind__", None)  # type: ignore[assignment]
    return found
