"""The keyring: per-facility data keys (unwrapped in memory only) and the field cipher.

Ciphertext layout: version byte 0x01 | data-key id (16 bytes) | nonce (12) | AES-256-GCM output.
The associated data binds each value to its table, column and row, so a ciphertext copied into
another row or column fails to decrypt instead of showing the wrong patient's data. The column
named in the associated data is the stored column without its `_ct` suffix (`family_ct` ->
"family"); carnet.phi.encrypted_columns lists every such column.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from carnet.crypto.blind import BlindIndexer, IndexKind
from carnet.crypto.keys import KeyProvider
from carnet.crypto.models import DataKey
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError

CIPHER_VERSION = 1
_HEADER = 1 + 16 + 12
# How stale a worker's idea of "the active data key" may get after `keys rotate --reencrypt`
# created new ones elsewhere; it bounds how long old keys keep receiving new writes.
ACTIVE_KEY_REFRESH_SECONDS = 30.0


class DecryptionError(ConfigurationError):
    """A stored value does not authenticate: wrong key, or the value was moved or edited."""


def _context(dek_id: uuid.UUID) -> str:
    return f"carnet/dek/{dek_id}"


def _aad(table: str, column: str, row_id: uuid.UUID) -> bytes:
    return f"carnet/1|{table}|{column}|{row_id}".encode()


# `_aad`'s bytes before the row id, per table and column (a few dozen pairs in all).
_AAD_PREFIXES: dict[tuple[str, str], bytes] = {}


def _aad_prefix(table: str, column: str) -> bytes:
    prefix = f"carnet/1|{table}|{column}|".encode()
    if len(_AAD_PREFIXES) < 4096:
        _AAD_PREFIXES[table, column] = prefix
    return prefix


class Keyring:
    def __init__(
        self,
        provider: KeyProvider,
        session_factory: Callable[[], Session],
        *,
        refresh_seconds: float = ACTIVE_KEY_REFRESH_SECONDS,
    ) -> None:
        self.provider = provider
        self._session_factory = session_factory
        self._lock = threading.Lock()
        self._keys: dict[uuid.UUID, AESGCM] = {}
        # The same keys by the 16 bytes a ciphertext names them with (its header): a read decrypts
        # several fields, each naming its key; no UUID is made to find it. Replaced with `_keys`.
        self._by_header: dict[bytes, AESGCM] = {}
        # The last row id decrypted and its text (the associated data names it): a record's
        # fields are decrypted one after the other, for one row.
        self._row_text: tuple[uuid.UUID | None, str] = (None, "")
        self._active: dict[uuid.UUID, uuid.UUID] = {}
        self._refresh_seconds = refresh_seconds
        self._loaded_at = time.monotonic()
        self.blind = BlindIndexer(provider.blind_index_key())

    # -- loading -------------------------------------------------------------------------
    def load(self) -> int:
        """Unwrap every data key now, so a wrong key file fails at start. Returns the count."""
        with self._session_factory() as session:
            rows = session.scalars(select(DataKey)).all()
        keys: dict[uuid.UUID, AESGCM] = {}
        active: dict[uuid.UUID, tuple[int, uuid.UUID]] = {}
        for row in rows:
            raw = self.provider.unwrap(row.kek_id, row.wrapped_key, context=_context(row.id))
            keys[row.id] = AESGCM(raw)
            if row.active and (row.facility_id not in active or active[row.facility_id][0] < row.version):
                active[row.facility_id] = (row.version, row.id)
        with self._lock:
            self._keys = keys
            self._by_header = {dek.bytes: key for dek, key in keys.items()}
            self._active = {fac: dek for fac, (_v, dek) in active.items()}
            self._loaded_at = time.monotonic()
        return len(keys)

    def rewrap_data_keys(self, session: Session) -> int:
        """Rewrap every data key not under the provider's active KEK; returns how many.

        The data keys themselves do not change, so no ciphertext needs re-encryption.
        """
        active_kek = self.provider.active_kek_id
        rows = session.scalars(select(DataKey).where(DataKey.kek_id != active_kek)).all()
        for row in rows:
            raw = self.provider.unwrap(row.kek_id, row.wrapped_key, context=_context(row.id))
            row.kek_id, row.wrapped_key = self.provider.wrap(raw, context=_context(row.id))
        session.flush()
        return len(rows)

    def create_data_key(self, session: Session, facility_id: uuid.UUID) -> uuid.UUID:
        """Create a new active data key for a facility (first key, or re-keying)."""
        dek_id = uuid.uuid4()
        raw = AESGCM.generate_key(bit_length=256)
        kek_id, wrapped = self.provider.wrap(raw, context=_context(dek_id))
        version = 1 + max(
            (k.version for k in session.scalars(select(DataKey).where(DataKey.facility_id == facility_id))),
            default=0,
        )
        session.execute(update(DataKey).where(DataKey.facility_id == facility_id).values(active=False))
        session.add(
            DataKey(
                id=dek_id,
                facility_id=facility_id,
                version=version,
                kek_id=kek_id,
                wrapped_key=wrapped,
                active=True,
                created_at=clock.now(),
            )
        )
        session.flush()
        with self._lock:
            self._keys[dek_id] = self._by_header[dek_id.bytes] = AESGCM(raw)
            self._active[facility_id] = dek_id
        # Usable at once (the same transaction may encrypt with it), but if the transaction rolls
        # back the key never existed: encrypting under it would make values no one can open.
        event.listen(session, "after_rollback", self._after_rollback, once=True)
        return dek_id

    def _after_rollback(self, _session: Session) -> None:
        self.load()

    def _key(self, dek_id: uuid.UUID) -> AESGCM:
        key = self._keys.get(dek_id)
        if key is None:
            self.load()  # another worker may have created it
            key = self._keys.get(dek_id)
            if key is None:
                raise DecryptionError("a stored value names a data key that does not exist")
        return key

    def active_key_id(self, facility_id: uuid.UUID) -> uuid.UUID:
        if time.monotonic() - self._loaded_at > self._refresh_seconds:
            self.load()  # pick up a data key that rotation made active in another process
        dek_id = self._active.get(facility_id)
        if dek_id is None:
            self.load()
            dek_id = self._active.get(facility_id)
            if dek_id is None:
                raise ConfigurationError("this facility has no data key yet")
        return dek_id

    # -- field cipher --------------------------------------------------------------------
    def encrypt(
        self, value: str | None, *, facility_id: uuid.UUID, table: str, column: str, row_id: uuid.UUID
    ) -> bytes | None:
        if value is None:
            return None
        dek_id = self.active_key_id(facility_id)
        nonce = os.urandom(12)
        body = self._keys[dek_id].encrypt(nonce, value.encode(), _aad(table, column, row_id))
        return bytes([CIPHER_VERSION]) + dek_id.bytes + nonce + body

    def decrypt(self, blob: bytes | None, *, table: str, column: str, row_id: uuid.UUID) -> str | None:
        if blob is None:
            return None
        if len(blob) < _HEADER + 16 or blob[0] != CIPHER_VERSION:
            raise DecryptionError(f"{table}.{column} holds a value that is not a carnet ciphertext")
        header = bytes(blob[1:17])
        key = self._by_header.get(header)
        if key is None:
            key = self._key(uuid.UUID(bytes=header))  # loads the keys again if unknown
        last = self._row_text
        if last[0] is row_id:
            row_text = last[1]
        else:
            row_text = str(row_id)
            self._row_text = (row_id, row_text)
        aad = f"carnet/1|{table}|{column}|{row_text}".encode()  # `_aad`, the row's text reused
        try:
            plain = key.decrypt(bytes(blob[17:29]), bytes(blob[29:]), aad)
        except InvalidTag:
            raise DecryptionError(
                f"{table}.{column} of a row does not authenticate (moved or edited)"
            ) from None
        return plain.decode()

    def decrypt_row(
        self, table: str, row_id: uuid.UUID, blobs: Sequence[tuple[str, bytes | None]]
    ) -> list[str | None]:
        """`decrypt` of several columns (column, blob) of one row, in order: the same checks
        and the same answers, one call for the row (and per field only the cipher's own calls:
        the header's length checked by slicing, the key found by subscript, the associated data
        made of bytes kept per table and column)."""
        row_text = str(row_id)
        self._row_text = (row_id, row_text)
        row_bytes = row_text.encode()
        by_header = self._by_header
        out: list[str | None] = [None] * len(blobs)
        for i, (column, blob) in enumerate(blobs):
            if blob is None:
                continue
            # len(blob) >= _HEADER + 16 and a carnet ciphertext's version byte
            if not blob[_HEADER + 15 : _HEADER + 16] or blob[0] != CIPHER_VERSION:
                raise DecryptionError(f"{table}.{column} holds a value that is not a carnet ciphertext")
            header = bytes(blob[1:17])
            try:
                key = by_header[header]
            except KeyError:
                key = self._key(uuid.UUID(bytes=header))  # loads the keys again if unknown
            try:
                prefix = _AAD_PREFIXES[table, column]
            except KeyError:
                prefix = _aad_prefix(table, column)
            try:
                plain = key.decrypt(bytes(blob[17:29]), bytes(blob[29:]), prefix + row_bytes)  # `_aad`
            except InvalidTag:
                raise DecryptionError(
                    f"{table}.{column} of a row does not authenticate (moved or edited)"
                ) from None
            out[i] = plain.decode()
        return out

    def reencrypt(
        self, blob: bytes | None, *, facility_id: uuid.UUID, table: str, column: str, row_id: uuid.UUID
    ) -> bytes | None:
        """The same value under the facility's active data key; None when it already is.

        Decrypting first proves the value authentic, so rotation never launders a tampered one.
        """
        if blob is None:
            return None
        target = self.active_key_id(facility_id)
        if len(blob) >= _HEADER and blob[0] == CIPHER_VERSION and self.key_id_of(blob) == target:
            return None
        plain = self.decrypt(blob, table=table, column=column, row_id=row_id)
        return self.encrypt(plain, facility_id=facility_id, table=table, column=column, row_id=row_id)

    def key_id_of(self, blob: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(blob[1:17]))

    def index(self, kind: IndexKind, value: str | None) -> bytes | None:
        return None if value is None else self.blind.index(kind, value)
