"""The drug catalogue and the ATC classification, shipped as data (carnet/prescriptions/data).

Pure: reads its JSON files once and touches no database, so the web form (search as you type)
and the safety checks share one list, and a pharmacist can review the data without the code.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Any

# WHO ATC: anatomical group (A), therapeutic (A01), pharmacological (A01A), chemical (A01AB),
# substance (A01AB01). Any other shape is not an ATC code.
ATC_PATTERN = re.compile(r"^[A-Z](?:\d\d(?:[A-Z](?:[A-Z](?:\d\d)?)?)?)?$")
ATC_SYSTEM = "http://www.whocc.no/atc"
SNOMED_SYSTEM = "http://snomed.info/sct"
SEARCH_LIMIT = 20


@dataclass(frozen=True)
class Text:
    """A sentence or a name in the two languages of the interface."""

    en: str
    fr: str

    def in_(self, language: str) -> str:
        return self.fr if language == "fr" else self.en


@dataclass(frozen=True)
class Drug:
    atc: str  # level 5: one substance (or one fixed combination)
    name: Text
    brands: tuple[str, ...]

    def label(self, language: str) -> str:
        """What the search list shows: the name, its ATC code, its usual brands."""
        brands = f" ({', '.join(self.brands)})" if self.brands else ""
        return f"{self.name.in_(language)}{brands} — {self.atc}"


@dataclass(frozen=True)
class DrugClass:
    atc: str
    name: Text
    words: tuple[str, ...]


def is_atc(code: str) -> bool:
    return bool(ATC_PATTERN.match(code))


def atc_level(code: str) -> int:
    """1 to 5 for a well-formed ATC code, 0 otherwise."""
    if not is_atc(code):
        return 0
    return {1: 1, 3: 2, 4: 3, 5: 4, 7: 5}[len(code)]


def atc_ancestors(code: str) -> list[str]:
    """The code and every class above it, broadest first: J01CA04 -> J, J01, J01C, J01CA, J01CA04."""
    if not is_atc(code):
        return []
    return [code[:n] for n in (1, 3, 4, 5, 7) if n <= len(code)]


def overlaps(code: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """True when `code` lies in one of the classes, or is a class that contains one of them.

    An allergy recorded as "J01D" (a whole class) overlaps the cephalosporins "J01DB"; a
    prescription of cefalexin "J01DB01" lies in them.
    """
    return any(code.startswith(p) or p.startswith(code) for p in prefixes)


def fold(text: str) -> str:
    """Lower case without accents: 'Pénicilline' and 'penicilline' are one search."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _load(name: str) -> Any:
    return json.loads(resources.files("carnet.prescriptions").joinpath("data", name).read_text("utf-8"))


@functools.cache
def drugs() -> tuple[Drug, ...]:
    return tuple(
        Drug(atc=d["atc"], name=Text(d["en"], d["fr"]), brands=tuple(d["brands"]))
        for d in _load("drugs.json")["drugs"]
    )


@functools.cache
def classes() -> tuple[DrugClass, ...]:
    return tuple(
        DrugClass(atc=c["atc"], name=Text(c["en"], c["fr"]), words=tuple(c["words"]))
        for c in _load("classes.json")["classes"]
    )


@functools.cache
def _by_code() -> dict[str, Drug]:
    return {d.atc: d for d in drugs()}


def drug(atc: str) -> Drug | None:
    return _by_code().get(atc)


def name_of(code: str, language: str = "en") -> str | None:
    """The name of a substance or of a class, or None when the catalogue does not know it."""
    found = drug(code)
    if found is not None:
        return found.name.in_(language)
    for cls in classes():
        if cls.atc == code:
            return cls.name.in_(language)
    return None


def search(query: str, *, limit: int = SEARCH_LIMIT) -> list[Drug]:
    """Drugs whose name (English or French), brand or ATC code matches: prefixes first.

    Accents and case do not matter ('cefalexine' finds céfalexine). An empty query finds nothing.
    """
    wanted = fold(query.strip())
    if not wanted:
        return []
    exact: list[Drug] = []
    first: list[Drug] = []
    then: list[Drug] = []
    for d in drugs():
        names = [fold(d.name.en), fold(d.name.fr), *(fold(b) for b in d.brands)]
        if wanted in names or d.atc.casefold() == wanted:
            exact.append(d)
        elif d.atc.casefold().startswith(wanted) or any(n.startswith(wanted) for n in names):
            first.append(d)
        elif any(wanted in n for n in names):
            then.append(d)
    return (exact + first + then)[: max(0, limit)]


def resolve(entry: str) -> Drug | None:
    """The drug a form field names: its ATC code, its exact name in either language, or the
    label the search list offers ('amoxicilline (Clamoxyl) — J01CA04')."""
    text = entry.strip()
    if "—" in text:
        text = text.rsplit("—", 1)[1].strip()
    found = drug(text.upper())
    if found is not None:
        return found
    wanted = fold(text)
    for d in drugs():
        if wanted in (fold(d.name.en), fold(d.name.fr)) or wanted in (fold(b) for b in d.brands):
            return d
    return None


def recognise(text: str) -> str | None:
    """The ATC code a free-text allergy names ('Allergie à la pénicilline' -> J01C), or None.

    Word by word, so 'penicillin' matches and 'amoxicilline' is not mistaken for something
    shorter; a substance wins over a class.
    """
    words = re.findall(r"[a-z0-9-]+", fold(text))
    joined = " ".join(words)
    if not joined:
        return None

    def said(term: str) -> bool:
        return re.search(rf"(?<![a-z0-9-]){re.escape(fold(term))}(?![a-z0-9-])", joined) is not None

    for d in drugs():
        if said(d.name.en) or said(d.name.fr) or any(said(b) for b in d.brands):
            return d.atc
    for cls in classes():
        if said(cls.name.en) or said(cls.name.fr) or any(said(w) for w in cls.words):
            return cls.atc
    return None
