"""The guarded operation of an HL7 interface: apply one message, all or nothing.

A domain operation on the gate kernel (carnet.phi.kernel: `@guarded`, a `GuardedTx`, run by
`operation` on the one path), kept beside the interface: it reads the patient tables it needs to
find a sender's records (import-linter lists these imports as its only exceptions). The facade
binds it (`Gate.apply_hl7_message`, `Gate.apply_hl7_merge`), like every operation.

One message, one guarded transaction (one audit event naming every patient and record it
touched): the steps are the gate's own write operations, run in that transaction as
`Gate.run_transaction` runs a FHIR transaction Bundle's entries, each checked by the policy as
the write it is; the message's log row and its links are written in the same transaction, so a
message is either applied and logged as accepted, or not applied at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ARRAY, String, Table, Uuid, any_, bindparam, select, update

from carnet.access.actor import ActorKind
from carnet.access.policy import ResourceType
from carnet.audit.interfaces import AuditKind
from carnet.crypto.blind import IndexKind
from carnet.db.prepared import PreparedInsert, PreparedSelect
from carnet.interfaces.hl7v2 import ErrorCode, MessageError
from carnet.interfaces.models import InterfaceLink, InterfaceMessage
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import Location, Practitioner
from carnet.patients.models import Patient
from carnet.phi.kernel import GuardedTx, Refused, guarded
from carnet.records.models import DiagnosticReport, Observation, ServiceRequest
from carnet.scheduling.models import Encounter

_UNKNOWN = object()


class MessageRefused(InvalidInput):
    """A message refused while it was applied (nothing written): its HL7 error for the NAK."""

    def __init__(self, error: MessageError) -> None:
        super().__init__(error.text())
        self.error = error


class Replayed(Exception):
    """The message control id was already accepted (a concurrent twin committed first)."""


@dataclass(frozen=True)
class StayState:
    patient_id: uuid.UUID
    status: str
    version_id: int
    kind: str
    start_at: Any
    location_id: str | None
    attending_id: str | None


@dataclass(frozen=True)
class ResultState:
    version_id: int
    status: str
    value_number: float | None
    unit: str | None
    value_text: str | None


@dataclass(frozen=True)
class OrderState:
    id: uuid.UUID
    patient_id: uuid.UUID
    status: str


@dataclass
class LogEntry:
    interface_id: uuid.UUID
    control_id: str
    digest: str
    message_type: str
    received_at: Any
    # The listener found no log line of this control id just before (see InterfaceService):
    # none is looked up again; the log's unique key refuses a twin that logged it meanwhile.
    unlogged: bool = False
    # The sender's identifiers (kind, key) the message looks up first (an ORU^R01's patients,
    # visits and reports): read with its group's, before the group's messages run
    # (`prepare_group`). None: not known in advance (the message reads them itself).
    keys: tuple[tuple[str, str], ...] | None = None


@dataclass
class Link:
    """A sender's identifier linked to a carnet record (a row of interface_links, as read)."""

    id: uuid.UUID
    kind: str
    key_digest: str
    target_id: uuid.UUID
    reference_range: str | None = None
    abnormal_flags: str | None = None
    new: bool = False  # to insert with the message's other rows
    changed: bool = False  # to update with them


_LINKS = cast(Table, InterfaceLink.__table__)
_MESSAGES = cast(Table, InterfaceMessage.__table__)
_PATIENTS = cast(Table, Patient.__table__)
_LINK_ROWS = PreparedInsert(_LINKS)
_MESSAGE_ROWS = PreparedInsert(_MESSAGES)
# A link read with whether its patient was merged (one statement, not two); Core, not the ORM:
# a message reads and writes its links as plain rows.
_LINK_COLUMNS = (
    _LINKS.c.id,
    _LINKS.c.kind,
    _LINKS.c.key_digest,
    _LINKS.c.target_id,
    _LINKS.c.reference_range,
    _LINKS.c.abnormal_flags,
    _PATIENTS.c.merged_into_id,
)
_LINKS_WITH_PATIENT = _LINKS.outerjoin(
    _PATIENTS, (_PATIENTS.c.id == _LINKS.c.target_id) & (_LINKS.c.kind == "patient")
)
# The same, as a prepared statement on PostgreSQL (every message reads its links): the digests
# as one array parameter, not a list of placeholders rendered at each execution.
_LINK_BY_KEY_PREPARED = PreparedSelect(
    select(*_LINK_COLUMNS)
    .select_from(_LINKS_WITH_PATIENT)
    .where(
        _LINKS.c.facility_id == bindparam("facility_id", type_=Uuid()),
        _LINKS.c.key_digest == any_(bindparam("digests", type_=ARRAY(String()))),
    )
)
_LINK_BY_KEY = (
    select(*_LINK_COLUMNS)
    .select_from(_LINKS_WITH_PATIENT)
    .where(
        _LINKS.c.facility_id == bindparam("facility_id"),
        _LINKS.c.key_digest.in_(bindparam("digests", expanding=True)),
    )
)
# A group's patients held FOR SHARE (as `GuardedTx.patient_to_file_under` holds one), in one
# statement, in the order of their ids: two groups (two listener processes) lock them in the
# same order, so neither waits on the other in a cycle. Every column: the rows the messages
# file under (`GuardedTx.held_patients`).
_PATIENT_KEYS = tuple(c.key for c in _PATIENTS.columns)
_PATIENT_ID, _PATIENT_MERGED = _PATIENT_KEYS.index("id"), _PATIENT_KEYS.index("merged_into_id")
_PATIENTS_FOR_SHARE_PREPARED = PreparedSelect(
    select(_PATIENTS)
    .where(_PATIENTS.c.id == any_(bindparam("ids", type_=ARRAY(Uuid()))))
    .order_by(_PATIENTS.c.id)
    .with_for_update(read=True)
)
_PATIENTS_FOR_SHARE = (
    select(_PATIENTS)
    .where(_PATIENTS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_PATIENTS.c.id)
    .with_for_update(read=True)
)


def _link_digest(tx: GuardedTx, kind: str, key: str) -> str:
    """The keyed digest a sender's identifier is linked under (no identifier is stored in clear)."""
    return tx.keyring.blind.index(IndexKind.IDENTIFIER, f"hl7|{kind}|{key}").hex()


def _read(connection: Any, prepared: PreparedSelect, statement: Any, params: dict[str, Any]) -> Sequence[Any]:
    """`prepared` on PostgreSQL (its array parameters), `statement` (expanding IN) elsewhere."""
    if connection.dialect.name == "postgresql":
        return prepared.all(connection, params)
    return list(connection.execute(statement, params).all())


@dataclass
class GroupLookups:
    """The links of every message of a group (`LogEntry.keys`) read in one statement, and the
    patients they name locked in one more, before the group's messages run (`prepare_group`).
    Each message still decides alone: a link it finds here is the row it would have read (its
    patient held since, so not merged meanwhile), an unknown patient is NAKed as before. A
    link a message of the group writes (`written`) is read from the database again by the
    later ones, as without the group's read."""

    digests: dict[tuple[str, str], str]  # (kind, key) -> digest
    links: dict[tuple[str, str], Sequence[Any] | None]  # (kind, digest) -> row read, or none
    held: dict[uuid.UUID, Sequence[Any]]  # patient rows held FOR SHARE
    written: set[str] = field(default_factory=set)

    def found(self, kind: str, digest: str) -> tuple[bool, Sequence[Any] | None]:
        """(True, the row or None) when read for the group and written by none of it."""
        if digest in self.written or (kind, digest) not in self.links:
            return False, None
        return True, self.links[(kind, digest)]


def prepare_group(tx: GuardedTx, calls: Sequence[dict[str, Any]]) -> GroupLookups | None:
    """The links and patients of a group's messages, read before they run (`run_group`'s
    `prepare`), when every message named its keys (ORU^R01); else None (each reads its own).
    An ORU^R01 never changes a patient row: the rows held stay those each message would read."""
    if tx.actor.kind is not ActorKind.INTERFACE:
        return None  # each message is refused (`_apply`): nothing read for them
    logs: list[LogEntry] = [call["log"] for call in calls]
    facilities = {call["facility_id"] for call in calls}
    if len(facilities) != 1 or any(log.keys is None for log in logs):
        return None
    facility_id = facilities.pop()
    digests = {(kind, key): _link_digest(tx, kind, key) for log in logs for kind, key in log.keys or ()}
    if not digests:
        return None
    connection = tx.session.connection()
    params = {"facility_id": facility_id, "digests": sorted(set(digests.values()))}
    rows = {(row[1], row[2]): row for row in _read(connection, _LINK_BY_KEY_PREPARED, _LINK_BY_KEY, params)}
    links: dict[tuple[str, str], Sequence[Any] | None] = {
        (kind, digest): rows.get((kind, digest)) for (kind, _key), digest in digests.items()
    }
    patients = sorted({row[3] for row in rows.values() if row[1] == "patient" and row[6] is None})
    held: dict[uuid.UUID, Sequence[Any]] = {}
    if patients:
        locked = _read(connection, _PATIENTS_FOR_SHARE_PREPARED, _PATIENTS_FOR_SHARE, {"ids": patients})
        held = {row[_PATIENT_ID]: tuple(row) for row in locked}
        for found, row in links.items():
            if row is None or row[1] != "patient" or row[6] is not None:
                continue
            patient = held.get(row[3])
            merged = patient[_PATIENT_MERGED] if patient is not None else _UNKNOWN
            if merged is not None:  # merged after the links were read: followed as merged
                links[found] = (*row[:6], merged)
    return GroupLookups(digests, links, held)


@dataclass
class MessageWork:
    """What a message handler may do inside the guarded transaction: find records by the
    sender's identifiers, and call the gate's write operations. It never returns patient data."""

    tx: GuardedTx
    facility_id: uuid.UUID
    touched: list[str] = field(default_factory=list)
    _links: dict[tuple[str, str], Link | None] = field(default_factory=dict)
    _kept: set[uuid.UUID] = field(default_factory=set)  # linked patients read as not merged
    _held: list[Any] = field(default_factory=list)
    group: GroupLookups | None = None  # what its group read before it (`prepare_group`)

    # -- finding records -------------------------------------------------------------------------
    def digest(self, kind: str, key: str) -> str:
        if self.group is not None:
            found = self.group.digests.get((kind, key))
            if found is not None:
                return found
        return _link_digest(self.tx, kind, key)

    def prefetch(self, keys: list[tuple[str, str]]) -> None:
        """Read the links of these identifiers (kind, key) together, in one statement: `link`
        then answers them from memory."""
        wanted = {(kind, key): self.digest(kind, key) for kind, key in keys if (kind, key) not in self._links}
        if self.group is not None:
            for (kind, key), digest in list(wanted.items()):
                known, row = self.group.found(kind, digest)
                if known:
                    self._remember(kind, key, row)
                    del wanted[(kind, key)]
        if not wanted:
            return
        deferred = self.tx.deferred
        if deferred is not None and deferred.holds(_LINK_ROWS, "key_digest", set(wanted.values())):
            self.tx.send_deferred()  # an earlier message of the group made one of these links
        params = {"facility_id": self.facility_id, "digests": sorted(set(wanted.values()))}
        found = _read(self.tx.session.connection(), _LINK_BY_KEY_PREPARED, _LINK_BY_KEY, params)
        rows = {(row[1], row[2]): row for row in found}
        for (kind, key), digest in wanted.items():
            self._remember(kind, key, rows.get((kind, digest)))

    def _remember(self, kind: str, key: str, row: Sequence[Any] | None) -> None:
        """A link as read (`_LINK_COLUMNS`), or None: the identifier has none."""
        if row is None:
            self._links[(kind, key)] = None
            return
        link_id, _kind, key_digest, target_id, reference_range, abnormal_flags, merged_into_id = row
        if kind == "patient" and merged_into_id is None:
            self._kept.add(target_id)
        self._links[(kind, key)] = Link(link_id, kind, key_digest, target_id, reference_range, abnormal_flags)

    def link(self, kind: str, key: str) -> Link | None:
        """The link of a sender's identifier (looked up once per message, then remembered)."""
        if (kind, key) not in self._links:
            self.prefetch([(kind, key)])
        return self._links[(kind, key)]

    def set_link(
        self,
        kind: str,
        key: str,
        target: str | uuid.UUID,
        *,
        reference_range: str | None = None,
        abnormal_flags: str | None = None,
        new: bool = False,
    ) -> None:
        """Link a sender's identifier to a record; written with the message's other rows (the
        unique key refuses a concurrent twin at the end of the message, before the audit).
        `new`: the caller knows the identifier has no link yet (not looked up)."""
        digest = self.digest(kind, key)  # a keyed hash: made once
        if self.group is not None:  # the later messages of the group read it again
            self.group.written.add(digest)
        row = self._links.get((kind, key)) if new else self.link(kind, key)
        target_id = target if isinstance(target, uuid.UUID) else uuid.UUID(str(target))
        if row is None:
            row = Link(new_id(), kind, digest, target_id, new=True)
            self._links[(kind, key)] = row
        elif (row.target_id, row.reference_range, row.abnormal_flags) != (
            target_id,
            reference_range,
            abnormal_flags,
        ):
            row.changed = True
        row.target_id = target_id
        row.reference_range = reference_range
        row.abnormal_flags = abnormal_flags

    def write_links(self, then: Sequence[tuple[PreparedInsert, Sequence[dict[str, Any]]]] = ()) -> None:
        """The links this message made or changed, each kind of write in one statement; the new
        ones and the rows of `then` inserted together (one pipeline on PostgreSQL)."""
        links = [link for link in self._links.values() if link is not None]
        added = [
            {
                "id": link.id,
                "facility_id": self.facility_id,
                "kind": link.kind,
                "key_digest": link.key_digest,
                "target_id": link.target_id,
                "reference_range": link.reference_range,
                "abnormal_flags": link.abnormal_flags,
            }
            for link in links
            if link.new
        ]
        changed = [
            {
                "link_id": link.id,
                "target_id": link.target_id,
                "reference_range": link.reference_range,
                "abnormal_flags": link.abnormal_flags,
            }
            for link in links
            if link.changed and not link.new
        ]
        if changed:
            self.tx.session.connection().execute(
                update(_LINKS)
                .where(_LINKS.c.id == bindparam("link_id"))
                .values(
                    target_id=bindparam("target_id"),
                    reference_range=bindparam("reference_range"),
                    abnormal_flags=bindparam("abnormal_flags"),
                ),
                changed,
            )
        self.tx.insert_rows([(_LINK_ROWS, added), *then])
        for link in links:
            link.new = link.changed = False

    def find_patient(self, *, ins: str | None, local_keys: list[str]) -> uuid.UUID | None:
        """The facility's patient with this INS, else with one of the sender's local identifiers;
        a merged duplicate leads to the record kept (as the front desk finds them)."""
        found: uuid.UUID | None = None
        if ins:
            found = self.tx.session.scalar(
                select(Patient.id).where(
                    Patient.facility_id == self.facility_id,
                    Patient.ins_bi == self.tx.keyring.blind.index(IndexKind.IDENTIFIER, ins),
                    Patient.merged_into_id.is_(None),
                )
            )
        for key in local_keys:
            if found is not None:
                break
            row = self.link("patient", key)
            found = row.target_id if row is not None else None
            if found is not None and found in self._kept:
                return found  # its record was read with the link: not merged
        for _ in range(10):  # follow merges to the record kept
            if found is None:
                return None
            kept = self.tx.session.scalar(select(Patient.merged_into_id).where(Patient.id == found))
            if kept is None:
                return found
            found = kept
        return found

    def patient_version(self, patient_id: uuid.UUID) -> int:
        version = self.tx.session.scalar(select(Patient.version_id).where(Patient.id == patient_id))
        if version is None:
            raise NotFound("no such resource")
        return int(version)

    def stay(self, encounter_id: uuid.UUID) -> StayState | None:
        row = self.tx.session.get(Encounter, encounter_id)
        if row is None:
            return None
        return StayState(
            patient_id=row.patient_id,
            status=row.status,
            version_id=row.version_id,
            kind=row.kind,
            start_at=row.start_at,
            location_id=str(row.location_id) if row.location_id else None,
            attending_id=str(row.attending_id) if row.attending_id else None,
        )

    def result(self, observation_id: uuid.UUID) -> ResultState | None:
        row = self.tx.session.get(Observation, observation_id)
        if row is None:
            return None
        return ResultState(row.version_id, row.status, row.value_number, row.unit, row.value_text)

    def report_state(self, report_id: uuid.UUID, patient_id: uuid.UUID) -> tuple[int, str, list[str]] | None:
        """The report's version, status and results, when it is this patient's."""
        row = self.tx.session.get(DiagnosticReport, report_id)
        if row is None or row.patient_id != patient_id:
            return None
        results = self.tx.session.scalars(
            select(Observation.id)
            .where(Observation.report_id == report_id)
            .order_by(Observation.effective_at, Observation.id)
        )
        return row.version_id, row.status, [str(r) for r in results]

    def order(self, placer_number: str) -> OrderState | None:
        """The facility's lab order with this placer number (ORC-2/OBR-2), when carnet placed it."""
        # Read as a record (kept in the session): the results' operation finds it again unread.
        row = self.tx.session.scalar(
            select(ServiceRequest).where(
                ServiceRequest.facility_id == self.facility_id,
                ServiceRequest.placer_number == placer_number[:40],
            )
        )
        if row is None:
            return None
        self._held.append(row)  # the session's identity map holds records weakly
        return OrderState(row.id, row.patient_id, row.status)

    def location(self, name: str) -> str | None:
        """The point of care (PV1-3.1) by name: a location that is no room or bed (rooms and
        beds are named within their ward: `bed`)."""
        found = self.tx.session.scalar(
            select(Location.id)
            .where(
                Location.facility_id == self.facility_id,
                Location.name == name,
                Location.active.is_(True),
                Location.kind.not_in(("room", "bed")),
            )
            .limit(1)
        )
        return str(found) if found else None

    def keeps_beds(self, ward_id: str) -> bool:
        """Whether carnet knows the rooms or beds of this ward (else PV1-3.2/3.3 name places
        the facility does not manage in carnet: the stay is in the ward, with no bed)."""
        return (
            self.tx.session.scalar(
                select(Location.id).where(Location.part_of_id == parse_id(ward_id)).limit(1)
            )
            is not None
        )

    def bed(self, ward_id: str, room: str, bed: str) -> str | None:
        """The bed named `bed` in room `room` of this ward (PV1-3.2 and 3.3; no room: a bed of
        the ward itself), active or not (a closed bed is refused by the stay's rules, saying so)."""
        ward = parse_id(ward_id)
        parent: Any = ward
        if room:
            parent = self.tx.session.scalar(
                select(Location.id).where(
                    Location.facility_id == self.facility_id,
                    Location.part_of_id == ward,
                    Location.kind == "room",
                    Location.name == room,
                )
            )
            if parent is None:
                return None
        found = self.tx.session.scalar(
            select(Location.id).where(
                Location.facility_id == self.facility_id,
                Location.part_of_id == parent,
                Location.kind == "bed",
                Location.name == bed,
            )
        )
        return str(found) if found else None

    def practitioner(self, rpps: str) -> str | None:
        found = self.tx.session.scalar(
            select(Practitioner.id).where(
                Practitioner.facility_id == self.facility_id,
                Practitioner.rpps == rpps,
                Practitioner.active.is_(True),
            )
        )
        return str(found) if found else None

    # -- writing through the gate -----------------------------------------------------------------
    def call(self, name: str, where: tuple[str, int], /, **arguments: Any) -> Any:
        """Run the gate's write operation `name` in this transaction, checked as that write; an
        error names the segment it came from (`where`: segment name, segment number)."""
        # The facade imports this module (it binds apply_message): looked up when called.
        from carnet.phi.gate import Gate

        operation = getattr(Gate, name)
        body = operation.__wrapped__
        tx = self.tx
        tx.kind = operation.__gate_audit_kind__
        try:
            result = body(tx, **arguments)
        except Refused as exc:
            raise Refused(f"{where[0]} {where[1]}: {exc.reason}", exc.patient_ids) from None
        except NotFound:
            raise MessageRefused(
                MessageError(
                    "no such record", code=ErrorCode.UNKNOWN_KEY, segment=where[0], sequence=where[1]
                )
            ) from None
        except (InvalidInput, Conflict) as exc:
            raise MessageRefused(
                MessageError(str(exc), code=ErrorCode.INTERNAL, segment=where[0], sequence=where[1])
            ) from None
        finally:
            tx.kind = AuditKind.PHI_TRANSACTION
        rid = getattr(result, "id", None)
        if rid is not None:
            self.touched.append(str(rid))
        return result


Handler = Callable[[MessageWork], None]


def _apply(tx: GuardedTx, /, *, log: LogEntry, facility_id: uuid.UUID, handler: Handler) -> list[str]:
    """Apply one message (its `handler`), then log it as accepted, in this one transaction.
    Returns the ids of the patients it touched (carnet's ids: the log keeps nothing else)."""
    if tx.actor.kind is not ActorKind.INTERFACE:
        raise Refused("only a registered HL7 interface applies HL7 messages")
    tx.query = f"hl7;type={log.message_type}"
    tx.reasons.append("HL7 v2 interface message")
    unlogged = log.unlogged
    if tx.deferred is not None and tx.deferred.holds(_MESSAGE_ROWS, "control_id", {log.control_id}):
        tx.send_deferred()  # its twin earlier in the group: read its log line
        unlogged = False
    # The log line of this control id (a message refused before and sent again), held until commit.
    earlier = (
        None
        if unlogged
        else tx.session.execute(
            select(_MESSAGES.c.id, _MESSAGES.c.status)
            .where(_MESSAGES.c.interface_id == log.interface_id, _MESSAGES.c.control_id == log.control_id)
            .with_for_update()
        ).first()
    )
    if earlier is not None and earlier.status == "accepted":
        raise Replayed
    group = tx.group if isinstance(tx.group, GroupLookups) else None
    if group is not None:
        tx.held_patients = group.held
    work = MessageWork(tx=tx, facility_id=facility_id, group=group)
    try:
        handler(work)
    except MessageError as exc:
        raise MessageRefused(exc) from None
    tx.resource_ids.extend(work.touched)
    patients = list(dict.fromkeys(str(p) for p in tx.patient_ids))
    line = {
        "digest": log.digest,
        "message_type": log.message_type,
        "received_at": log.received_at,
        "status": "accepted",
        "ack_code": "AA",
        "reason": None,
        "patient_ids": " ".join(patients),
    }
    if earlier is None:  # the unique control id: a concurrent twin fails here, before the audit
        row = {"id": new_id(), "interface_id": log.interface_id, "control_id": log.control_id, "replays": 0}
        work.write_links(then=[(_MESSAGE_ROWS, [{**row, **line}])])
    else:
        work.write_links()
        tx.session.connection().execute(update(_MESSAGES).where(_MESSAGES.c.id == earlier.id).values(**line))
    tx.session.flush()  # what the operations left in the session, before the audit
    return patients


@guarded(AuditKind.PHI_TRANSACTION, ResourceType.PATIENT, targeted=False)
def apply_message(tx: GuardedTx, /, *, log: LogEntry, facility_id: uuid.UUID, handler: Handler) -> list[str]:
    """An ADT or ORU message (audited as a transaction)."""
    return _apply(tx, log=log, facility_id=facility_id, handler=handler)


@guarded(AuditKind.PHI_MERGE, ResourceType.PATIENT, targeted=False)
def apply_merge_message(
    tx: GuardedTx, /, *, log: LogEntry, facility_id: uuid.UUID, handler: Handler
) -> list[str]:
    """An ADT^A40 (audited as a merge)."""
    return _apply(tx, log=log, facility_id=facility_id, handler=handler)
