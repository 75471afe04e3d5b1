"""Signed checkpoints of the audit chain, kept outside the database.

A checkpoint pins the head of every lane of the chain (lane, seq, hash), read in one statement,
at a moment, with an Ed25519 signature. Someone who can rewrite the database but not the
checkpoint store (or the signing key) cannot rewrite history before the latest checkpoint without
`carnet audit verify` noticing. A purge checkpoint records, for each lane, the anchor (its last
purged event) the lane continues from once old events are deleted.

Format 2 (`carnet-audit-checkpoint/2`) carries the lanes; format 1, written before the chain had
lanes, pins (head seq, head hash) of what was then the only lane, lane 1, and still verifies.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import logging
import os
import stat
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, func, select

from carnet.audit.models import AuditChainHead, AuditEvent
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError
from carnet.settings import Settings

log = logging.getLogger(__name__)

FORMAT = "carnet-audit-checkpoint/2"
FORMAT_1 = "carnet-audit-checkpoint/1"  # one chain: what is now lane 1
T = TypeVar("T")

# (lane, seq, hash): a lane's head (chain checkpoint) or anchor (purge checkpoint).
LanePin = tuple[int, int, str]


class CheckpointType(StrEnum):
    CHAIN = "chain"
    PURGE = "purge"


@dataclass(frozen=True)
class Checkpoint:
    """What is signed.

    `lanes`: each lane's (lane, seq, hash) with at least one event: its head for a chain
    checkpoint, its anchor (last purged event) for a purge. `head_seq`/`head_hash`: the highest
    seq over the lanes and that event's hash. `count`: the span of sequence numbers the database
    held at `at` (head_seq - first seq + 1), an upper bound of its events: the global seq has gaps
    where a transaction rolled back (a purge counts its events exactly)."""

    type: CheckpointType
    head_seq: int
    head_hash: str
    count: int
    at: dt.datetime
    # purge only: events up to `through_seq` are deleted; the chain continues from `anchor_hash`.
    through_seq: int | None = None
    anchor_hash: str | None = None
    reason: str | None = None
    lanes: tuple[LanePin, ...] = ()
    format: str = FORMAT

    def pins(self) -> tuple[LanePin, ...]:
        """The lanes this checkpoint pins; a format-1 checkpoint pins lane 1, the only lane then."""
        if self.lanes:
            return self.lanes
        if self.type is CheckpointType.PURGE:
            assert self.through_seq is not None and self.anchor_hash is not None
            return ((1, self.through_seq, self.anchor_hash),)
        return ((1, self.head_seq, self.head_hash),) if self.head_seq else ()

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": self.format,
            "type": self.type.value,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "count": self.count,
            "at": self.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        }
        if self.format != FORMAT_1:
            body["lanes"] = [[lane, seq, digest] for lane, seq, digest in self.lanes]
        if self.type is CheckpointType.PURGE:
            body |= {"through_seq": self.through_seq, "anchor_hash": self.anchor_hash, "reason": self.reason}
        return body

    def dedupe_id(self) -> str:
        """The same content, the same id (workers signing the same heads publish once)."""
        lanes = hashlib.sha256(json.dumps(self.payload().get("lanes", [])).encode()).hexdigest()[:32]
        return f"{self.type.value}:{self.head_seq}:{self.head_hash}:{lanes}"

    @classmethod
    def from_payload(cls, body: dict[str, Any]) -> Checkpoint:
        version = body.get("format")
        if version not in (FORMAT, FORMAT_1):
            raise ValueError("unknown checkpoint format")
        kind = CheckpointType(body["type"])
        lanes: tuple[LanePin, ...] = ()
        if version == FORMAT:
            raw = body["lanes"]
            if not isinstance(raw, list):
                raise ValueError("lanes is not a list")
            lanes = tuple((_lane(lane), _int(seq), _hash(digest)) for lane, seq, digest in raw)
            if len({lane for lane, _, _ in lanes}) != len(lanes):
                raise ValueError("a lane is pinned twice")
        purge = kind is CheckpointType.PURGE
        return cls(
            type=kind,
            head_seq=_int(body["head_seq"]),
            head_hash=_hash(body["head_hash"]),
            count=_int(body["count"]),
            at=dt.datetime.fromisoformat(body["at"]),
            through_seq=_int(body["through_seq"]) if purge else None,
            anchor_hash=_hash(body["anchor_hash"]) if purge else None,
            reason=str(body.get("reason") or "") if purge else None,
            lanes=lanes,
            format=str(version),
        )


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("not a sequence number")
    return value


def _lane(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 32767:
        raise ValueError("not a lane")
    return value


def _hash(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("not a SHA-256 hex digest")
    bytes.fromhex(value)
    return value


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    key_id: str
    # Where it sits in its store (line number, or stream sequence): how reports name it.
    position: int

    def describe(self) -> str:
        cp = self.checkpoint
        return (
            f"checkpoint #{self.position} (seq {cp.head_seq}, signed {cp.at.isoformat(timespec='seconds')})"
        )


class CheckpointRejected(Exception):
    """A stored checkpoint that is unreadable or whose signature does not verify."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with the audit Ed25519 key (a PEM file, mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def create(cls, path: Path) -> CheckpointSigner:
        """Write a new key (never overwrites) and its public half beside it (`.pub`)."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise ConfigurationError(f"an audit signing key already exists at {path}")
        # Written whole under a temporary name, then linked into place: a concurrent loader sees
        # either no key or a complete one, and an existing key is never replaced.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, path)
        except FileExistsError:
            raise ConfigurationError(f"an audit signing key already exists at {path}") from None
        finally:
            temporary.unlink(missing_ok=True)
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_path(path).write_bytes(public_pem)
        return cls(key)

    @classmethod
    def load(cls, path: Path, *, strict_mode: bool = True) -> CheckpointSigner:
        try:
            info = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(f"no audit signing key at {path}: run `carnet audit init-key`") from None
        if strict_mode and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(f"the audit signing key {path} is readable by others: chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError:
            raise ConfigurationError(f"the audit signing key {path} is not a valid PEM key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"the audit signing key {path} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointSigner:
        """Load the key; demo and test create it on first use, production must have run init-key."""
        path = settings.resolved_signing_key_file
        if not path.exists() and settings.exercise_mode:
            try:
                return cls.create(path)
            except ConfigurationError:
                pass  # another process created it first
        return cls.load(path, strict_mode=not settings.exercise_mode)

    def sign(self, checkpoint: Checkpoint) -> bytes:
        body = checkpoint.payload()
        signature = self._key.sign(_signed_bytes(body))
        line = {"checkpoint": body, "key_id": self.key_id, "sig": base64.b64encode(signature).decode()}
        return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def verifier(self) -> CheckpointVerifier:
        return CheckpointVerifier(self.public_key)


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


class CheckpointVerifier:
    """Checks signatures with the public key only: verification needs no secret."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)

    @classmethod
    def load(cls, path: Path) -> CheckpointVerifier:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(f"no audit public key at {path}") from None
        try:
            key: Any = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, password=None).public_key()
            except ValueError:
                raise ConfigurationError(f"{path} is not a PEM Ed25519 key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"{path} is not an Ed25519 key")
        return cls(key)

    def parse(self, line: bytes, position: int) -> SignedCheckpoint:
        try:
            outer = json.loads(line)
            body = outer["checkpoint"]
            signature = base64.b64decode(outer["sig"], validate=True)
            checkpoint = Checkpoint.from_payload(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointRejected(f"unreadable ({type(exc).__name__})") from None
        try:
            self.public_key.verify(signature, _signed_bytes(body))
        except InvalidSignature:
            raise CheckpointRejected("bad signature (forged or altered)") from None
        return SignedCheckpoint(checkpoint=checkpoint, key_id=str(outer.get("key_id", "")), position=position)


class CheckpointStore(Protocol):
    """Append-only storage for signed checkpoints, outside the audited database."""

    def append(self, line: bytes, *, dedupe_id: str) -> None:
        """Store one signed checkpoint durably, or raise."""
        ...

    def read_all(self) -> list[tuple[int, bytes]]:
        """Every stored checkpoint with its position (1-based), oldest first."""
        ...

    def exists(self) -> bool:
        """Whether the store has ever been written (a missing store cannot anchor anything)."""
        ...

    def describe(self) -> str: ...


class FileCheckpointStore:
    """A JSON-lines file opened O_APPEND; an advisory lock keeps concurrent writers' lines whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, line: bytes, *, dedupe_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_all(self) -> list[tuple[int, bytes]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [(number, line) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]

    def exists(self) -> bool:
        return self.path.exists()

    def describe(self) -> str:
        return str(self.path)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code, also when the caller's thread has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class NatsCheckpointStore:
    """A JetStream stream that refuses deletes and purges: the server keeps every checkpoint."""

    def __init__(self, url: str, *, stream: str, timeout: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self.subject = f"carnet.audit.checkpoints.{stream}"
        self.timeout = timeout

    async def _connect(self) -> Any:
        import nats

        try:
            return await nats.connect(self.url, connect_timeout=self.timeout, max_reconnect_attempts=1)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot reach NATS for audit checkpoints ({type(exc).__name__})"
            ) from None

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[self.subject],
                    storage=StorageType.FILE,
                    deny_delete=True,
                    deny_purge=True,
                    allow_rollup_hdrs=False,
                )
            )

    async def _append(self, line: bytes, dedupe_id: str) -> None:
        nc = await self._connect()
        try:
            js = nc.jetstream(timeout=self.timeout)
            await self._ensure_stream(js)
            # Workers that checkpoint the same head publish once (the stream's duplicate window).
            await js.publish(self.subject, line, stream=self.stream, headers={"Nats-Msg-Id": dedupe_id})
        finally:
            await nc.close()

    async def _read_all(self) -> list[tuple[int, bytes]]:
        from nats.js.errors import NotFoundError

        nc = await self._connect()
        try:
            js = nc.jetstream(timeout=self.timeout)
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                return []
            found = []
            for seq in range(info.state.first_seq or 1, info.state.last_seq + 1):
                try:
                    message = await js.get_msg(self.stream, seq)
                except NotFoundError:
                    continue  # deny_delete makes this impossible; verify sees a missing position
                found.append((seq, bytes(message.data or b"")))
            return found
        finally:
            await nc.close()

    async def _exists(self) -> bool:
        from nats.js.errors import NotFoundError

        nc = await self._connect()
        try:
            try:
                await nc.jetstream(timeout=self.timeout).stream_info(self.stream)
            except NotFoundError:
                return False
            return True
        finally:
            await nc.close()

    def append(self, line: bytes, *, dedupe_id: str) -> None:
        _run(self._append(line, dedupe_id))

    def read_all(self) -> list[tuple[int, bytes]]:
        return _run(self._read_all())

    def exists(self) -> bool:
        return _run(self._exists())

    def describe(self) -> str:
        return f"NATS stream {self.stream}"


def open_store(settings: Settings) -> CheckpointStore:
    if settings.nats_url:
        return NatsCheckpointStore(settings.nats_url, stream=settings.audit_nats_stream)
    return FileCheckpointStore(settings.resolved_checkpoint_file)


def read_lanes(engine: Engine) -> tuple[tuple[LanePin, ...], int | None]:
    """Every lane's committed head (lane, seq, hash), read in one statement, lanes with events
    only, and the lowest seq the database holds (two index lookups: cheap at any size)."""
    with engine.connect() as conn:
        heads = conn.execute(
            select(AuditChainHead.id, AuditChainHead.seq, AuditChainHead.hash)
            .where(AuditChainHead.seq > 0)
            .order_by(AuditChainHead.id)
        ).all()
        first = conn.execute(select(func.min(AuditEvent.seq))).scalar() if heads else None
    return tuple((int(h.id), int(h.seq), str(h.hash)) for h in heads), first


def read_head(engine: Engine) -> tuple[int, str, int] | None:
    """The highest committed seq over the lanes, that event's hash, and the span of seqs the
    database holds (an upper bound of its events: the global seq has gaps)."""
    lanes, first = read_lanes(engine)
    return _head(lanes, first)


def _head(lanes: tuple[LanePin, ...], first: int | None) -> tuple[int, str, int] | None:
    if not lanes:
        return None
    _, seq, digest = max(lanes, key=lambda pin: pin[1])
    count = 0 if first is None else seq - int(first) + 1
    return seq, digest, count


class Checkpointer:
    """Writes a signed checkpoint every `every` events or `seconds` seconds, after commit.

    The audited transaction only tells it the sequence number it committed (`note_committed`);
    signing and publishing happen on a background thread, so no request waits for them. Several
    workers each checkpoint what they saw: duplicates are harmless, gaps are not.
    """

    def __init__(
        self, *, engine: Engine, signer: CheckpointSigner, store: CheckpointStore, every: int, seconds: float
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.store = store
        self.every = every
        self.seconds = seconds
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_seq = 0  # the head of the last checkpoint this process wrote
        self._last_lanes: tuple[LanePin, ...] = ()  # and its lanes
        self._seen_seq = 0  # the highest sequence number this process saw committed
        # With lanes, a commit can carry a seq below the last checkpoint's head (another lane's
        # event committed first): "anything unsigned?" counts commits, not seqs.
        self._tick = itertools.count(1)
        self._noted = 0  # the tick of the last commit noted
        self._signed = 0  # the last tick noted before a checkpoint read the heads

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Checkpointer:
        return cls(
            engine=engine,
            signer=CheckpointSigner.from_settings(settings),
            store=open_store(settings),
            every=settings.audit_checkpoint_every,
            seconds=settings.audit_checkpoint_seconds,
        )

    def checkpoint(self, *, force: bool = True) -> Checkpoint | None:
        """Sign and store the current committed head; None when there is nothing to pin."""
        with self._lock:
            noted = self._noted
            lanes, first = read_lanes(self.engine)
            head = _head(lanes, first)
            if head is None:
                return None
            seq, digest, count = head
            if not force and lanes == self._last_lanes:
                self._signed = max(self._signed, noted)
                return None
            checkpoint = Checkpoint(
                type=CheckpointType.CHAIN,
                head_seq=seq,
                head_hash=digest,
                count=count,
                at=clock.now(),
                lanes=lanes,
            )
            self.store.append(self.signer.sign(checkpoint), dedupe_id=checkpoint.dedupe_id())
            self._last_seq = max(self._last_seq, seq)
            self._last_lanes = lanes
            self._signed = max(self._signed, noted)
            return checkpoint

    def publish(self, checkpoint: Checkpoint) -> None:
        """Store a checkpoint built elsewhere (a purge)."""
        with self._lock:
            self.store.append(self.signer.sign(checkpoint), dedupe_id=checkpoint.dedupe_id())

    @property
    def last_signed_seq(self) -> int:
        """The head of the last checkpoint this process wrote (0 before the first)."""
        return self._last_seq

    def sign_tail(self) -> Checkpoint | None:
        """Pin whatever the database holds now, at start-up: a worker killed with SIGKILL left
        its newest events unsigned, and until they are pinned an attacker with database access
        could delete them and move the head back unseen. Never raises: a store that is down is
        logged (and /readyz says so); the periodic checkpoints retry."""
        try:
            signed = self.checkpoint()
        except Exception as exc:
            log.error("audit checkpoint at start-up failed (%s); will retry", type(exc).__name__)
            return None
        if signed is not None:
            self._seen_seq = max(self._seen_seq, signed.head_seq)
        return signed

    def note_committed(self, seq: int) -> None:
        """Called after an audited transaction commits. Cheap: compares two integers."""
        self._noted = next(self._tick)
        if seq > self._seen_seq:
            self._seen_seq = seq
        if self._thread is None:
            self._start()
        if self._seen_seq - self._last_seq >= self.every:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._loop, name="audit-checkpointer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=self.seconds)
            self._wake.clear()
            if self._stopping:
                return
            self._checkpoint_quietly()

    def _checkpoint_quietly(self) -> None:
        if self._noted <= self._signed:
            return
        try:
            self.checkpoint(force=False)
        except Exception as exc:
            # The events are committed; only their anchor is late. Say so loudly, retry next round.
            log.error("audit checkpoint failed (%s); will retry", type(exc).__name__)

    def close(self) -> None:
        """Stop the thread and pin what this process committed since its last checkpoint."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._checkpoint_quietly()
