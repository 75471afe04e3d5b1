"""Key-encryption keys and the blind-index key, held outside the database.

`KeyProvider` is the seam where a hospital's KMS or HSM replaces the file: carnet only asks it
to wrap and unwrap data keys, and for the blind-index key. `RotatableKeyProvider` adds what
`carnet keys rotate` needs when carnet holds the KEKs itself; a KMS rotates its own.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carnet.kernel.errors import ConfigurationError

KEY_FILE_FORMAT = "carnet-keys/1"


class KeyProvider(Protocol):
    """Holds key-encryption keys (KEKs). Data keys are wrapped by the active KEK.

    `unwrap` raises ConfigurationError when the KEK is unknown or the wrapped key does not
    authenticate: a wrong key must stop carnet, never yield garbage.
    """

    @property
    def active_kek_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: str) -> tuple[str, bytes]:
        """Wrap a data key with the active KEK; returns (kek_id, wrapped)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: str) -> bytes: ...

    def blind_index_key(self) -> bytes: ...


@runtime_checkable
class RotatableKeyProvider(KeyProvider, Protocol):
    """A provider whose KEKs carnet itself rotates (the key file).

    Rotation order, so a crash at any point leaves every wrapped key openable:
    `add_kek` (old KEKs kept), rewrap everything, then `retire_keks` of the unreferenced ones.
    """

    @property
    def kek_ids(self) -> list[str]: ...

    def add_kek(self) -> str:
        """Create a KEK, make it active, persist atomically; returns its id."""
        ...

    def retire_keks(self, keep: set[str]) -> list[str]:
        """Forget every KEK not in `keep` (the active one always stays); returns the retired ids."""
        ...

    def rotation_lock(self) -> AbstractContextManager[None]:
        """Held for a whole rotation: two at once would retire each other's new KEK."""
        ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FileKeyProvider:
    """KEKs in a JSON file readable only by carnet's user (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._stamp: tuple[int, int, int] | None = None
        self._load()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Re-read the file if another process (`carnet keys rotate`) replaced it.

        A running worker must open data keys rewrapped under a KEK it has never seen, and must
        not wrap a new data key under a KEK that rotation is about to retire.
        """
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._load()

    @property
    def mode(self) -> int:
        """The key file's permission bits (0o600 expected)."""
        return stat.S_IMODE(self.path.stat().st_mode)

    def _load(self) -> None:
        if not self.path.exists():
            raise ConfigurationError(
                f"key file {self.path} not found: set CARNET_KEY_FILE, or run `carnet keys init` "
                "for a new installation (never for an existing database)"
            )
        try:
            stamp = self._file_stamp()
            doc = json.loads(self.path.read_text())
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError("unknown format")
            keks = {str(kid): base64.b64decode(v) for kid, v in doc["keks"].items()}
            active = str(doc["active_kek"])
            blind = base64.b64decode(doc["blind_index_key"])
        except OSError as exc:
            raise ConfigurationError(f"cannot read key file {self.path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"key file {self.path} is not a carnet key file ({type(exc).__name__})"
            ) from None
        if active not in keks or any(len(k) != 32 for k in keks.values()) or len(blind) < 32:
            raise ConfigurationError(f"key file {self.path} is damaged")
        if getattr(self, "_blind", blind) != blind:
            # Blind indexes in the database are keyed by the old one: searches would silently miss.
            raise ConfigurationError(f"key file {self.path} changed its blind-index key; refusing it")
        with self._lock:
            self._keks, self._active, self._blind, self._stamp = keks, active, blind, stamp

    @classmethod
    def create(cls, path: Path) -> FileKeyProvider:
        """Write a new key file; refuses to overwrite one (that would orphan every ciphertext)."""
        if path.exists():
            raise ConfigurationError(f"key file {path} already exists; refusing to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": KEY_FILE_FORMAT,
            "keks": {"kek-1": _b64(AESGCM.generate_key(bit_length=256))},
            "active_kek": "kek-1",
            "blind_index_key": _b64(secrets.token_bytes(32)),
        }
        _write_private(path, doc)
        return cls(path)

    @property
    def active_kek_id(self) -> str:
        return self._active

    @property
    def kek_ids(self) -> list[str]:
        return sorted(self._keks)

    def wrap(self, data_key: bytes, *, context: str) -> tuple[str, bytes]:
        self._refresh()
        with self._lock:
            active, kek = self._active, self._keks[self._active]
        nonce = os.urandom(12)
        wrapped = nonce + AESGCM(kek).encrypt(nonce, data_key, context.encode())
        return active, wrapped

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: str) -> bytes:
        kek = self._keks.get(kek_id)
        if kek is None:
            self._refresh()
            kek = self._keks.get(kek_id)
        if kek is None:
            raise ConfigurationError(f"the key file has no key-encryption key {kek_id!r}: wrong key file?")
        try:
            return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], context.encode())
        except InvalidTag:
            raise ConfigurationError(
                f"a data key does not open with key-encryption key {kek_id!r}: wrong or damaged key file"
            ) from None

    def blind_index_key(self) -> bytes:
        return self._blind

    def add_kek(self) -> str:
        """Add a new KEK and make it active; old KEKs stay until data keys are rewrapped."""
        with self._lock:
            self._refresh()
            number = 1 + max(_kek_number(k) for k in self._keks)
            kek_id = f"kek-{number}"
            keks = {**self._keks, kek_id: AESGCM.generate_key(bit_length=256)}
            self._save(keks, kek_id)
            return kek_id

    def retire_keks(self, keep: set[str]) -> list[str]:
        with self._lock:
            self._refresh()
            retired = sorted(k for k in self._keks if k not in keep and k != self._active)
            if retired:
                self._save({k: v for k, v in self._keks.items() if k not in retired}, self._active)
            return retired

    @contextmanager
    def rotation_lock(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError("another key rotation is running on this key file") from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _save(self, keys: dict[str, bytes], active: str) -> None:
        """Replace the file atomically and durably, then adopt what was written."""
        doc = {
            "format": KEY_FILE_FORMAT,
            "keks": {k: _b64(v) for k, v in keys.items()},
            "active_kek": active,
            "blind_index_key": _b64(self._blind),
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            _write_private(tmp, doc)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise ConfigurationError(f"cannot write key file {self.path}: {exc.strerror}") from None
        self._load()


def _kek_number(kek_id: str) -> int:
    prefix, _, number = kek_id.partition("-")
    return int(number) if prefix == "kek" and number.isdigit() else 0


def _write_private(path: Path, doc: Mapping[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o600)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must survive a power cut, or the old file may come back.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
