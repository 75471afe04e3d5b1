"""Key-encryption keys and the blind-index key, held outside the database.

`KeyProvider` is the seam where a hospital's KMS or HSM replaces the file: carnet only asks it
to wrap and unwrap data keys, and for the blind-index key.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FileKeyProvider:
    """KEKs in a JSON file readable only by carnet's user (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            raise ConfigurationError(
                f"key file {self.path} not found: set CARNET_KEY_FILE, or run `carnet keys init` "
                "for a new installation (never for an existing database)"
            )
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError("unknown format")
            self._keks = {kid: base64.b64decode(v) for kid, v in doc["keks"].items()}
            self._active = str(doc["active_kek"])
            self._blind = base64.b64decode(doc["blind_index_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"key file {self.path} is not a carnet key file ({exc})") from None
        if self._active not in self._keks or any(len(k) != 32 for k in self._keks.values()):
            raise ConfigurationError(f"key file {self.path} is damaged")

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
        nonce = os.urandom(12)
        wrapped = nonce + AESGCM(self._keks[self._active]).encrypt(nonce, data_key, context.encode())
        return self._active, wrapped

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: str) -> bytes:
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
        number = 1 + max(int(k.split("-")[1]) for k in self._keks)
        kek_id = f"kek-{number}"
        self._keks[kek_id] = AESGCM.generate_key(bit_length=256)
        self._active = kek_id
        self._save()
        return kek_id

    def retire_keks(self, keep: set[str]) -> list[str]:
        retired = [k for k in self._keks if k not in keep and k != self._active]
        for k in retired:
            del self._keks[k]
        self._save()
        return retired

    def _save(self) -> None:
        doc = {
            "format": KEY_FILE_FORMAT,
            "keks": {k: _b64(v) for k, v in self._keks.items()},
            "active_kek": self._active,
            "blind_index_key": _b64(self._blind),
        }
        tmp = self.path.with_suffix(".tmp")
        _write_private(tmp, doc)
        os.replace(tmp, self.path)


def _write_private(path: Path, doc: Mapping[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.chmod(path, 0o600)
