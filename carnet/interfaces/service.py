"""Receiving one HL7 v2 message from a registered interface: who sent it, is it within its
registration, was it seen before, then one guarded transaction; always an ACK or a NAK.

The message log keeps what integration staff need and nothing identifying: the control id,
the type, the status and carnet's reason, carnet's patient ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, String, Uuid, any_, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.access.roles import Role
from carnet.crypto.blind import IndexKind
from carnet.db.prepared import PreparedSelect
from carnet.detection.containment import contain, raise_alert
from carnet.detection.interfaces import Finding, Level, Rule
from carnet.identity.models import Account
from carnet.interfaces import hl7v2
from carnet.interfaces.budget import Budget, BudgetUnavailable, budget_for
from carnet.interfaces.handlers import HANDLERS, Context, result_keys
from carnet.interfaces.hl7v2 import AckCode, ErrorCode, Header, MessageError
from carnet.interfaces.models import Interface, InterfaceMessage
from carnet.interfaces.operation import LogEntry, MessageRefused, Replayed
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Throttled,
)
from carnet.kernel.ids import new_id
from carnet.phi.gate import Gate, GroupFailed
from carnet.runtime import Runtime

log = logging.getLogger(__name__)

# Over its registered volume an interface is slowed down (AR, alert); at CONTAIN_FACTOR times
# it, or after TYPE_STRIKES messages of types it is not registered for, it is contained.
CONTAIN_FACTOR = 3
TYPE_STRIKES = 3


@dataclass(frozen=True)
class Registered:
    """A registered interface as the listener needs it (loaded from the database)."""

    id: uuid.UUID
    name: str
    sending_facility: str
    facility_id: uuid.UUID
    account_id: uuid.UUID
    practitioner_id: uuid.UUID | None
    message_types: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    client_cert_sha256: str | None
    per_minute: int
    timezone: str
    status: str

    def accepts_peer(self, address: str | None, cert_sha256: str | None) -> bool:
        """The connection comes from where this interface was registered: its TLS client
        certificate when it has one registered, and its networks when it has any."""
        if self.client_cert_sha256 is not None and cert_sha256 != self.client_cert_sha256:
            return False
        if self.networks:
            try:
                peer = ipaddress.ip_address(address or "")
            except ValueError:
                return False
            return any(peer in net for net in self.networks)
        return self.client_cert_sha256 is not None

    def actor(self, address: str | None) -> Actor:
        return Actor(
            kind=ActorKind.INTERFACE,
            username=f"interface:{self.name}",
            roles=frozenset({Role.INTERFACE}),
            account_id=self.account_id,
            facility_id=self.facility_id,
            practitioner_id=self.practitioner_id,
            address=address,
            purpose_of_use=PurposeOfUse.TREATMENT,
        )


@dataclass(frozen=True)
class Peer:
    address: str | None
    cert_sha256: str | None = None


@dataclass(frozen=True)
class _Incoming:
    """A parsed message whose sender is identified, on its way to the gate."""

    message: Any
    head: Header
    interface: Registered
    peer: Peer
    digest: str
    now: dt.datetime
    stripe: int  # its patient's lock (per-patient order)
    # No log line had its control id when its replay was looked up: the guarded transaction
    # need not look again (a twin logging it meanwhile fails on the log's unique key).
    unlogged: bool = False


_INTERNAL = MessageError("carnet could not apply the message: nothing was changed", code=ErrorCode.INTERNAL)


def _runs(ready: list[tuple[int, _Incoming]]) -> list[list[tuple[int, _Incoming]]]:
    """Consecutive messages of one interface (one actor), in order; a merge is a run of its own."""
    runs: list[list[tuple[int, _Incoming]]] = []
    for item in ready:
        incoming = item[1]
        last = runs[-1][-1][1] if runs else None
        alone = incoming.head.message_type == "ADT^A40"
        if (
            last is None
            or alone
            or last.head.message_type == "ADT^A40"
            or (last.interface.id, last.peer.address) != (incoming.interface.id, incoming.peer.address)
        ):
            runs.append([item])
        else:
            runs[-1].append(item)
    return runs


class InterfaceService:
    """Receives messages for every registered interface (one per listener process)."""

    def __init__(self, runtime: Runtime, *, budget: Budget | None = None) -> None:
        self.runtime = runtime
        # Shared by every listener process through Redis when carnet has one (budget.py).
        self._budget = budget if budget is not None else budget_for(runtime.settings.redis_url)
        self._stripes = [threading.Lock() for _ in range(64)]

    # -- who is sending ---------------------------------------------------------------------------
    def interfaces(self) -> list[Registered]:
        with self.runtime.session_factory() as session:
            rows = session.execute(select(Interface, Account.practitioner_id).join(Account)).all()
        return [_registered(row, practitioner) for row, practitioner in rows]

    def candidates(self, peer: Peer) -> list[Registered]:
        """The interfaces this connection may speak for (none: carnet closes it unanswered)."""
        return [i for i in self.interfaces() if i.accepts_peer(peer.address, peer.cert_sha256)]

    # -- one message ------------------------------------------------------------------------------
    def receive(self, raw: str, *, peer: Peer, candidates: list[Registered] | None = None) -> str:
        """The ACK (or NAK) to one message. Never raises; never quotes the message."""
        incoming = self._identify(raw, peer, candidates)
        if isinstance(incoming, str):
            return incoming
        replay, logged = self._replay_lookup(incoming.interface, incoming.head, incoming.digest)
        if replay is not None:
            return replay
        refused = self._admit(incoming)
        if refused is not None:
            return refused
        incoming = dataclasses.replace(incoming, unlogged=not logged)
        with self._stripes[incoming.stripe]:  # one message at a time per patient, in the order received
            return self._apply_one(incoming)

    def receive_many(self, messages: list[tuple[str, Peer, list[Registered] | None]]) -> list[str]:
        """The ACKs (or NAKs) to messages received together, in their order, each answered as
        `receive` answers it. Consecutive messages of one interface are applied as one group
        (`Gate.apply_hl7_messages`: one transaction, a savepoint and an audit event each, one
        commit; a failing message is rolled back alone and NAKed); the answers exist only after
        the commit. Their replays are looked up together, before. Never raises."""
        answers: list[str | None] = [None] * len(messages)
        found: list[tuple[int, _Incoming]] = []
        for i, (raw, peer, candidates) in enumerate(messages):
            incoming = self._identify(raw, peer, candidates)
            if isinstance(incoming, str):
                answers[i] = incoming
            else:
                found.append((i, incoming))
        replays, logged = self._replays([incoming for _, incoming in found])
        ready: list[tuple[int, _Incoming]] = []
        # A control id sent twice in one batch (a sender that resent before its ACK): the
        # second waits for the group, then is answered as `receive` answers it (a replay).
        again: list[tuple[int, _Incoming]] = []
        claimed: set[tuple[uuid.UUID, str]] = set()
        for i, incoming in found:
            answers[i] = replays.get(id(incoming))
        volume = self._count_volume([incoming for i, incoming in found if answers[i] is None])
        for i, incoming in found:
            if answers[i] is not None:
                continue
            answers[i] = self._admit(incoming, volume.get(id(incoming)))
            key = (incoming.interface.id, incoming.head.control_id)
            if answers[i] is None:
                if key in claimed:
                    again.append((i, incoming))
                else:
                    ready.append((i, dataclasses.replace(incoming, unlogged=id(incoming) not in logged)))
                claimed.add(key)
        # Every patient of the batch held for its whole application (taken in one order: two
        # batches never wait on each other in a cycle), as `receive` holds one.
        stripes = sorted({incoming.stripe for _, incoming in ready})
        for stripe in stripes:
            self._stripes[stripe].acquire()
        try:
            for run in _runs(ready):
                for (i, _), answer in zip(
                    run, self._apply_run([incoming for _, incoming in run]), strict=True
                ):
                    answers[i] = answer
        finally:
            for stripe in reversed(stripes):
                self._stripes[stripe].release()
        for i, incoming in again:
            replay = self._replay(incoming.interface, incoming.head, incoming.digest)
            if replay is None:
                with self._stripes[incoming.stripe]:
                    replay = self._apply_one(incoming)
            answers[i] = replay
        return [a if a is not None else self._nak(None, _INTERNAL, clock.now()) for a in answers]

    def _identify(self, raw: str, peer: Peer, candidates: list[Registered] | None) -> _Incoming | str:
        """The message parsed and its sender identified, or the NAK."""
        now = clock.now()
        head: Header | None = None
        try:
            message = hl7v2.parse(raw)
            head = hl7v2.header(message)
        except MessageError as exc:
            return self._nak(head, exc, now)
        known = candidates if candidates is not None else self.candidates(peer)
        interface = next((i for i in known if i.name == head.sending_application), None)
        if interface is None or interface.sending_facility != head.sending_facility:
            error = MessageError(
                "MSH-3 and MSH-4 do not name an interface registered for this connection",
                code=ErrorCode.TABLE_VALUE,
                ack=AckCode.REJECT,
                segment="MSH",
                field=3,
            )
            return self._nak(head, error, now)
        digest = self.runtime.keyring.blind.index(
            IndexKind.IDENTIFIER, "hl7-message|" + _canonical(raw)
        ).hex()
        stripe = hash(_patient_key(message)) % len(self._stripes)
        return _Incoming(message, head, interface, peer, digest, now, stripe)

    def _count_volume(self, incoming: list[_Incoming]) -> dict[int, int | BudgetUnavailable]:
        """The volume count of each message of a registered type (keyed by `id()` of its
        _Incoming): what the interface sent in the last minute, it included, counted for all of
        a batch at once (one round trip to Redis per interface); BudgetUnavailable when the
        counter did not answer."""
        by_interface: dict[uuid.UUID, list[_Incoming]] = {}
        for item in incoming:
            if item.head.message_type in item.interface.message_types:
                by_interface.setdefault(item.interface.id, []).append(item)
        counts: dict[int, int | BudgetUnavailable] = {}
        for interface_id, items in by_interface.items():
            try:
                total = self._budget.count(interface_id, max(i.now for i in items), len(items))
            except BudgetUnavailable as exc:
                for item in items:
                    counts[id(item)] = exc
                continue
            for k, item in enumerate(items):
                counts[id(item)] = total - (len(items) - 1 - k)
        return counts

    def _admit(self, incoming: _Incoming, seen: int | BudgetUnavailable | None = None) -> str | None:
        """None when the message is within its interface's registration and well formed; else
        its NAK (logged as rejected). `seen`: its volume count, when counted with its batch's."""
        interface, head, now = incoming.interface, incoming.head, incoming.now
        try:
            self._judge_budget(interface, head, incoming.peer, now, seen)
            hl7v2.check_structure(incoming.message, head)
        except MessageError as exc:
            self._log_rejected(interface, head, incoming.digest, exc, now)
            return self._nak(head, exc, now)
        return None

    def _apply_one(self, incoming: _Incoming) -> str:
        """One message, one guarded transaction (the caller holds its patient's stripe)."""
        head = incoming.head
        gate = Gate(self.runtime, incoming.interface.actor(incoming.peer.address))
        operation = gate.apply_hl7_merge if head.message_type == "ADT^A40" else gate.apply_hl7_message
        try:
            operation(**self._arguments(incoming))
        except Exception as exc:
            return self._settle(incoming, exc)
        return self._settle(incoming, None)

    def _apply_run(self, run: list[_Incoming]) -> list[str]:
        """Messages of one interface as one group; one by one when the group as a whole failed
        (nothing of it was written) or for a merge (audited as a merge, alone)."""
        first = run[0]
        if len(run) == 1 or first.head.message_type == "ADT^A40":
            return [self._apply_one(incoming) for incoming in run]
        gate = Gate(self.runtime, first.interface.actor(first.peer.address))
        try:
            outcomes = gate.apply_hl7_messages([self._arguments(incoming, grouped=True) for incoming in run])
        except GroupFailed:
            return [self._apply_one(incoming) for incoming in run]
        return [
            self._settle(incoming, outcome if isinstance(outcome, Exception) else None)
            for incoming, outcome in zip(run, outcomes, strict=True)
        ]

    def _arguments(self, incoming: _Incoming, *, grouped: bool = False) -> dict[str, Any]:
        """The guarded operation's arguments; in a group, an ORU^R01 names the identifiers it
        looks up first (read with the group's, `prepare_group`)."""
        head, interface = incoming.head, incoming.interface
        handler = HANDLERS[head.message_type]
        ahead = result_keys(incoming.message) if grouped and head.message_type == "ORU^R01" else None
        ctx = Context(
            message=incoming.message,
            head=head,
            zone=interface.timezone,
            interface_name=interface.name,
            now=incoming.now,
            result_groups=ahead[0] if ahead is not None else None,
        )
        entry = LogEntry(
            interface_id=interface.id,
            control_id=head.control_id,
            digest=incoming.digest,
            message_type=head.message_type,
            received_at=incoming.now,
            unlogged=incoming.unlogged,
            keys=ahead[1] if ahead is not None else None,
        )
        return {
            "log": entry,
            "facility_id": interface.facility_id,
            "handler": lambda work: handler(ctx, work),
        }

    def _settle(self, incoming: _Incoming, exc: Exception | None) -> str:
        """The answer to a message the gate applied (`exc` None) or refused with `exc`."""
        interface, head, now = incoming.interface, incoming.head, incoming.now
        if exc is None:
            return hl7v2.ack(head, AckCode.ACCEPT, control_id=_ack_id(), now=now)
        error: MessageError
        if isinstance(exc, Replayed):
            return self._ack_replay(head, now)
        if isinstance(exc, IntegrityError):
            again = self._replay(interface, head, incoming.digest)
            if again is not None:
                return again
            error = MessageError("the message could not be recorded: resend it", code=ErrorCode.INTERNAL)
        elif isinstance(exc, MessageRefused):
            error = exc.error
        elif isinstance(exc, AccountContained | AuthenticationRequired | Throttled):
            error = MessageError(str(exc), code=ErrorCode.INTERNAL, ack=AckCode.REJECT)
        elif isinstance(exc, Forbidden):
            error = MessageError(
                "the access policy refuses this write to this interface",
                code=ErrorCode.INTERNAL,
                ack=AckCode.REJECT,
            )
        elif isinstance(exc, NotFound):
            error = MessageError("no such record", code=ErrorCode.UNKNOWN_KEY)
        elif isinstance(exc, Conflict):
            error = MessageError(str(exc), code=ErrorCode.RECORD_LOCKED)
        elif isinstance(exc, InvalidInput):
            error = MessageError(str(exc), code=ErrorCode.INTERNAL)
        else:  # fail closed: nothing written, a NAK, the kind of error logged
            log.error("hl7 message of %s failed: %s", interface.name, type(exc).__name__)
            error = _INTERNAL
        self._log_rejected(interface, head, incoming.digest, error, now)
        return self._nak(head, error, now)

    # -- replays, log -----------------------------------------------------------------------------
    def _replay(self, interface: Registered, head: Header, digest: str) -> str | None:
        """An accepted control id seen again: AA without applying it (the same message), or AE
        (another message reusing the control id)."""
        return self._replay_lookup(interface, head, digest)[0]

    def _replay_lookup(self, interface: Registered, head: Header, digest: str) -> tuple[str | None, bool]:
        """`_replay`, and whether the control id has a log line (accepted or rejected)."""
        with self.runtime.session_factory.begin() as session:
            row = session.scalar(
                select(InterfaceMessage).where(
                    InterfaceMessage.interface_id == interface.id,
                    InterfaceMessage.control_id == head.control_id,
                )
            )
            if row is None or row.status != "accepted":
                return None, row is not None
            if row.digest != digest:
                error = MessageError(
                    "this control id was already used for another message",
                    code=ErrorCode.DUPLICATE_KEY,
                    segment="MSH",
                    field=10,
                )
                return self._nak(head, error, clock.now()), True
            session.execute(
                update(InterfaceMessage)
                .where(InterfaceMessage.id == row.id)
                .values(replays=InterfaceMessage.replays + 1)
            )
        return self._ack_replay(head, clock.now()), True

    def _replays(self, incoming: list[_Incoming]) -> tuple[dict[int, str], set[int]]:
        """`_replay` for messages received together, in one transaction: the answer of each one
        that is a replay, and which have a log line (both keyed by `id()` of its _Incoming)."""
        if not incoming:
            return {}, set()
        # Most batches are new messages: one read outside any transaction says so (no BEGIN,
        # no COMMIT); only a batch holding a replay is looked up again and counted below.
        statuses = self._log_statuses(incoming)
        logged = {id(item) for item in incoming if (item.interface.id, item.head.control_id) in statuses}
        if "accepted" not in statuses.values():
            return {}, logged
        answers: dict[int, str] = {}
        with self.runtime.session_factory.begin() as session:
            # Looked up again in the transaction that counts the replays.
            rows = session.execute(
                select(
                    InterfaceMessage.id,
                    InterfaceMessage.interface_id,
                    InterfaceMessage.control_id,
                    InterfaceMessage.status,
                    InterfaceMessage.digest,
                ).where(
                    InterfaceMessage.interface_id.in_({i.interface.id for i in incoming}),
                    InterfaceMessage.control_id.in_({i.head.control_id for i in incoming}),
                )
            ).all()
            lines = {(row.interface_id, row.control_id): row for row in rows}
            logged = {id(item) for item in incoming if (item.interface.id, item.head.control_id) in lines}
            for item in incoming:
                row = lines.get((item.interface.id, item.head.control_id))
                if row is None or row.status != "accepted":
                    continue
                if row.digest != item.digest:
                    error = MessageError(
                        "this control id was already used for another message",
                        code=ErrorCode.DUPLICATE_KEY,
                        segment="MSH",
                        field=10,
                    )
                    answers[id(item)] = self._nak(item.head, error, clock.now())
                    continue
                session.execute(
                    update(InterfaceMessage)
                    .where(InterfaceMessage.id == row.id)
                    .values(replays=InterfaceMessage.replays + 1)
                )
                answers[id(item)] = self._ack_replay(item.head, clock.now())
        return answers, logged

    def _log_statuses(self, incoming: list[_Incoming]) -> dict[tuple[uuid.UUID, str], str]:
        """The status of each log line these messages' control ids have, read in one statement
        (a prepared one on PostgreSQL, in autocommit: a read of the log alone)."""
        params = {
            "interface_ids": sorted({i.interface.id for i in incoming}),
            "control_ids": sorted({i.head.control_id for i in incoming}),
        }
        with self.runtime.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                rows = _LOG_STATUS_PREPARED.all(connection, params)
            else:
                rows = connection.execute(_LOG_STATUS, params).all()
        return {(row[0], row[1]): row[2] for row in rows}

    def _ack_replay(self, head: Header, now: dt.datetime) -> str:
        return hl7v2.ack(head, AckCode.ACCEPT, control_id=_ack_id(), now=now)

    def _log_rejected(
        self, interface: Registered, head: Header, digest: str, error: MessageError, now: dt.datetime
    ) -> None:
        """A refused message is logged (not applied); a later accepted one replaces the line."""
        try:
            with self.runtime.session_factory.begin() as session:
                row = session.scalar(
                    select(InterfaceMessage)
                    .where(
                        InterfaceMessage.interface_id == interface.id,
                        InterfaceMessage.control_id == head.control_id,
                    )
                    .with_for_update()
                )
                if row is not None and row.status == "accepted":
                    return
                if row is None:
                    row = InterfaceMessage(
                        id=new_id(), interface_id=interface.id, control_id=head.control_id, replays=0
                    )
                    session.add(row)
                else:
                    row.replays += 1
                row.digest = digest
                row.message_type = head.message_type[:20]
                row.received_at = now
                row.status = "rejected"
                row.ack_code = error.ack.value
                row.reason = error.text()[:500]
                row.patient_ids = ""
        except IntegrityError:
            return  # a twin logged it at the same moment

    def _nak(self, head: Header | None, error: MessageError, now: dt.datetime) -> str:
        return hl7v2.ack(head, error.ack, error=error, control_id=_ack_id(), now=now)

    # -- registration limits ----------------------------------------------------------------------
    def _judge_budget(
        self,
        interface: Registered,
        head: Header,
        peer: Peer,
        now: dt.datetime,
        seen: int | BudgetUnavailable | None = None,
    ) -> None:
        """Types outside the registration are refused, volume over it slowed down; both are
        alerts, and repeated they contain the interface like any actor (account suspended).
        A message the counter could not count is refused (fail closed)."""
        actor = interface.actor(peer.address)
        if head.message_type not in interface.message_types:
            try:
                strikes = self._budget.strike(interface.id, now)
            except BudgetUnavailable as exc:
                raise _uncounted(interface, exc) from None
            level = Level.CONTAIN if strikes >= TYPE_STRIKES else Level.THROTTLE
            self._alert(
                actor,
                Finding(
                    Rule.INTERFACE_BUDGET,
                    level,
                    f"interface {interface.name} sent {strikes} message(s) of types it is not registered"
                    f" for in the last hour (last: {head.message_type[:20]}).",
                ),
                now,
            )
            raise MessageError(
                f"message type {head.message_type[:20]} is not registered for this interface",
                code=ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                ack=AckCode.REJECT,
                segment="MSH",
                field=9,
            )
        if seen is None:
            try:
                seen = self._budget.count(interface.id, now)
            except BudgetUnavailable as exc:
                raise _uncounted(interface, exc) from None
        elif isinstance(seen, BudgetUnavailable):
            raise _uncounted(interface, seen)
        if seen <= interface.per_minute:
            return
        level = Level.CONTAIN if seen >= CONTAIN_FACTOR * interface.per_minute else Level.THROTTLE
        self._alert(
            actor,
            Finding(
                Rule.INTERFACE_BUDGET,
                level,
                f"interface {interface.name} sent {seen} messages in the last minute, above the"
                f" {interface.per_minute} it is registered for.",
            ),
            now,
        )
        raise MessageError(
            f"throttled: more than {interface.per_minute} messages a minute; resend later",
            code=ErrorCode.INTERNAL,
            ack=AckCode.REJECT,
        )

    def _alert(self, actor: Actor, finding: Finding, now: dt.datetime) -> None:
        with self.runtime.session_factory.begin() as session:
            if finding.level is Level.CONTAIN:
                contain(session, actor=actor, findings=[finding], audit=self.runtime.audit, at=now)
            else:
                raise_alert(session, actor=actor, finding=finding, at=now)


_LOG_COLUMNS = (InterfaceMessage.interface_id, InterfaceMessage.control_id, InterfaceMessage.status)
_LOG_STATUS = select(*_LOG_COLUMNS).where(
    InterfaceMessage.interface_id.in_(bindparam("interface_ids", expanding=True)),
    InterfaceMessage.control_id.in_(bindparam("control_ids", expanding=True)),
)
_LOG_STATUS_PREPARED = PreparedSelect(
    select(*_LOG_COLUMNS).where(  # type: ignore[arg-type]  # typed columns: a Select of them
        InterfaceMessage.interface_id == any_(bindparam("interface_ids", type_=ARRAY(Uuid()))),
        InterfaceMessage.control_id == any_(bindparam("control_ids", type_=ARRAY(String()))),
    )
)


def _uncounted(interface: Registered, exc: BudgetUnavailable) -> MessageError:
    log.warning("hl7 message of %s refused: its volume could not be counted (%s)", interface.name, exc)
    return MessageError(
        "the interface's volume could not be counted: nothing was changed; resend later",
        code=ErrorCode.INTERNAL,
        ack=AckCode.REJECT,
    )


def _registered(row: Interface, practitioner_id: uuid.UUID | None) -> Registered:
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in row.source_addresses.split())
    return Registered(
        id=row.id,
        name=row.name,
        sending_facility=row.sending_facility,
        facility_id=row.facility_id,
        account_id=row.account_id,
        practitioner_id=practitioner_id,
        message_types=frozenset(row.message_types.split()),
        networks=networks,
        client_cert_sha256=row.client_cert_sha256,
        per_minute=row.per_minute,
        timezone=row.timezone,
        status=row.status,
    )


def _canonical(raw: str) -> str:
    return raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")


def _patient_key(message: object) -> str:
    """The first patient identifier of the message (a stripe of the per-patient ordering)."""
    try:
        return hashlib.sha256(str(message.segment("PID")[3]).encode()).hexdigest()  # type: ignore[attr-defined]
    except Exception:
        return ""


def _ack_id() -> str:
    return uuid.uuid4().hex[:20]
