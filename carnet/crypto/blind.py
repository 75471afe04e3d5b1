"""Keyed blind indexes: exact search over encrypted fields without storing the plaintext.

HMAC-SHA256 under a key separate from the encryption keys, over a normalised value and the
field kind (so equal values in different fields do not share an index).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from enum import StrEnum

BLIND_INDEX_BYTES = 16


class IndexKind(StrEnum):
    IDENTIFIER = "identifier"
    FAMILY = "family"
    GIVEN = "given"
    BIRTH_DATE = "birthdate"
    PHONE = "phone"
    EMAIL = "email"


def normalize_name(value: str) -> str:
    """Case, accents, hyphens and spacing do not matter: 'Lefèvre-Dupont' == 'lefevre dupont'."""
    decomposed = unicodedata.normalize("NFKD", value)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    letters = re.sub(r"[^a-z0-9]+", " ", letters.casefold())
    return " ".join(letters.split())


def normalize_phone(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    if digits.startswith("33") and len(digits) == 11:
        digits = "0" + digits[2:]
    return digits


def normalize_email(value: str) -> str:
    return value.strip().casefold()


def normalize_identifier(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value).upper()


_NORMALIZERS = {
    IndexKind.IDENTIFIER: normalize_identifier,
    IndexKind.FAMILY: normalize_name,
    IndexKind.GIVEN: normalize_name,
    IndexKind.BIRTH_DATE: lambda v: v.strip(),
    IndexKind.PHONE: normalize_phone,
    IndexKind.EMAIL: normalize_email,
}


class BlindIndexer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("blind index key must be at least 32 bytes")
        self._key = key

    def index(self, kind: IndexKind, value: str) -> bytes:
        normalized = _NORMALIZERS[kind](value)
        message = f"{kind.value}\x00{normalized}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:BLIND_INDEX_BYTES]
