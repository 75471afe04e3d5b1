"""Keyed blind indexes: exact search over encrypted fields without storing the plaintext.

HMAC-SHA256 under a key separate from the encryption keys, over a normalised value and the
field kind (so equal values in different fields do not share an index).

Names also get keyed *prefix* indexes, one per word of the name: the first NAME_PREFIX_LETTERS
letters of each word (a shorter word whole). A name search looks up the key of its term's first
word and decrypts only those hits to apply the exact rule (name_matches): a search never decrypts
a care list to find one name. A dump shows which patients share a word's first four letters, and
no more: the key is outside the database, and no shorter prefix is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from enum import StrEnum

BLIND_INDEX_BYTES = 16


NAME_PREFIX_LETTERS = 4


class IndexKind(StrEnum):
    IDENTIFIER = "identifier"
    FAMILY = "family"
    GIVEN = "given"
    BIRTH_DATE = "birthdate"
    PHONE = "phone"
    EMAIL = "email"
    # Word prefixes of names (see name_prefix_keys); their own kinds, so a prefix key never
    # equals a whole-name key.
    FAMILY_PREFIX = "family-prefix"
    GIVEN_PREFIX = "given-prefix"


NAME_PREFIX_KINDS = {IndexKind.FAMILY: IndexKind.FAMILY_PREFIX, IndexKind.GIVEN: IndexKind.GIVEN_PREFIX}


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


def name_words(value: str) -> list[str]:
    return normalize_name(value).split()


def name_matches(name: str, term: str) -> bool:
    """The name-search rule: the term starts one of the name's words, and may run on into the
    next ones ('dup' and 'dupont m' find 'Dupont-Martin', so does 'mart'; 'pont' does not).
    Case, accents, hyphens and spacing do not matter."""
    wanted = normalize_name(term)
    if not wanted:
        return False
    words = name_words(name)
    return any(" ".join(words[i:]).startswith(wanted) for i in range(len(words)))


def _as_is(value: str) -> str:
    return value


def _prefix(word: str) -> str:
    return word[:NAME_PREFIX_LETTERS]


_NORMALIZERS = {
    IndexKind.IDENTIFIER: normalize_identifier,
    IndexKind.FAMILY: normalize_name,
    IndexKind.GIVEN: normalize_name,
    IndexKind.BIRTH_DATE: lambda v: v.strip(),
    IndexKind.PHONE: normalize_phone,
    IndexKind.EMAIL: normalize_email,
    # Prefix keys are computed over an already normalised word prefix.
    IndexKind.FAMILY_PREFIX: _as_is,
    IndexKind.GIVEN_PREFIX: _as_is,
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

    def name_prefix_keys(self, kind: IndexKind, value: str | None) -> set[bytes]:
        """The prefix keys a stored name (FAMILY or GIVEN) is found by: one per word."""
        prefix_kind = NAME_PREFIX_KINDS[kind]
        return {self.index(prefix_kind, _prefix(w)) for w in name_words(value or "")}

    def name_query_key(self, kind: IndexKind, term: str) -> bytes | None:
        """The prefix key that every name matching `term` (name_matches) was stored under, or
        None when the term cannot be looked up (its only word is shorter than the prefix, so it
        may start longer words: such a short search is a sweep, not a look-up)."""
        words = name_words(term)
        if not words:
            return None
        first = words[0]
        if len(first) < NAME_PREFIX_LETTERS and len(words) == 1:
            return None
        # A first word followed by another is a whole word: stored whole when short.
        return self.index(NAME_PREFIX_KINDS[kind], _prefix(first))
