"""Medication safety checks: pure functions, no database, one table of cases each in tests.

- `allergy_conflicts`: the recorded allergies a prescription runs into, each naming the allergen
  and the reason (same substance, a class that contains it, or a documented cross-reaction).
- `duplicate_therapy`: the active prescriptions the new one repeats (same substance, same
  chemical class, or a named therapeutic group such as two anticoagulants).

The rules are data (data/rules.json) with the source a clinician would look up.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

from carnet.prescriptions import catalogue
from carnet.prescriptions.catalogue import Text

# Statuses under which a prescription still acts on the patient.
ACTIVE_STATUSES = frozenset({"active", "on-hold"})


class Match(enum.StrEnum):
    SAME_SUBSTANCE = "same-substance"  # the allergy names this very substance
    IN_CLASS = "in-class"  # by the ATC hierarchy: the drug lies in the class recorded, or contains it
    CLASS_REACTION = "class-reaction"  # two members of one group that reacts as a whole
    CROSS_REACTION = "cross-reaction"  # two groups with a documented cross-reaction
    UNCHECKED = "unchecked"  # the allergy is not coded in ATC and its text names no known drug


# The order findings are shown in: the most certain first.
STRENGTH = {m: i for i, m in enumerate(Match)}


@dataclass(frozen=True)
class Allergy:
    """A recorded allergy as the check sees it: whatever its coding system."""

    code: str
    display: str
    system: str = catalogue.ATC_SYSTEM
    criticality: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class AllergyConflict:
    allergy: Allergy
    match: Match
    reason: Text
    rule: str | None = None  # the cross-reactivity rule applied, by id
    source: str | None = None  # where a clinician reads the rule
    recognised_as: str | None = None  # the ATC code read from a non-ATC allergy's text

    @property
    def blocking(self) -> bool:
        """An unchecked allergy is shown to the prescriber; only a real conflict needs an override."""
        return self.match is not Match.UNCHECKED

    def sentence(self, language: str = "en") -> str:
        """'Allergy: Pénicillines (J01C) — <reason>' in the prescriber's language."""
        label = "Allergie :" if language == "fr" else "Allergy:"
        code = f" ({self.allergy.code})" if self.allergy.code else ""
        return f"{label} {self.allergy.display}{code} — {self.reason.in_(language)}"


@dataclass(frozen=True)
class _Rule:
    id: str
    kind: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    name: Text
    reason: Text
    source: str


@dataclass(frozen=True)
class _Group:
    id: str
    members: tuple[str, ...]
    name: Text


@functools.cache
def _rules() -> tuple[_Rule, ...]:
    return tuple(
        _Rule(
            id=r["id"],
            kind=r["kind"],
            a=tuple(r["a"]),
            b=tuple(r["b"]),
            name=Text(**r["name"]),
            reason=Text(**r["reason"]),
            source=r["source"],
        )
        for r in catalogue._load("rules.json")["allergy"]
    )


@functools.cache
def _groups() -> tuple[_Group, ...]:
    return tuple(
        _Group(id=g["id"], members=tuple(g["members"]), name=Text(**g["name"]))
        for g in catalogue._load("rules.json")["duplicate"]
    )


def _named(code: str, fallback: str) -> Text:
    return Text(catalogue.name_of(code, "en") or fallback, catalogue.name_of(code, "fr") or fallback)


def _one(allergy: Allergy, code: str, drug_code: str, drug: Text) -> AllergyConflict | None:
    """The strongest reason `drug_code` conflicts with an allergy coded `code` in ATC."""
    if code == drug_code:
        return AllergyConflict(
            allergy,
            Match.SAME_SUBSTANCE,
            Text(
                f"the allergy is to this very substance ({drug.en})",
                f"l'allergie porte sur cette substance même ({drug.fr})",
            ),
        )
    if drug_code.startswith(code):
        cls = _named(code, allergy.display)
        return AllergyConflict(
            allergy,
            Match.IN_CLASS,
            Text(
                f"{drug.en} ({drug_code}) belongs to the class {cls.en} ({code}) the allergy is recorded for",
                f"{drug.fr} ({drug_code}) appartient à la classe {cls.fr} ({code}) pour laquelle"
                " l'allergie est enregistrée",
            ),
        )
    if code.startswith(drug_code):
        # A prescription coded at class level contains the substance the patient reacts to.
        return AllergyConflict(
            allergy,
            Match.IN_CLASS,
            Text(
                f"the class prescribed ({drug_code}) contains {allergy.display} ({code})",
                f"la classe prescrite ({drug_code}) contient {allergy.display} ({code})",
            ),
        )
    for rule in _rules():
        forward = _covers(code, rule.a) and _covers(drug_code, rule.b)
        backward = _covers(code, rule.b) and _covers(drug_code, rule.a)
        if forward or backward:
            match = Match.CLASS_REACTION if rule.kind == "class" else Match.CROSS_REACTION
            return AllergyConflict(allergy, match, rule.reason, rule=rule.id, source=rule.source)
    return None


def _covers(code: str, members: tuple[str, ...]) -> bool:
    """`code` lies in a member class, or is a class containing a member class. A rule about one
    substance's side chain (a level-5 member) applies to that substance only, not to a class
    allergy that happens to contain it: that one gets the class's reason."""
    return any(code.startswith(m) or (m.startswith(code) and catalogue.atc_level(m) < 5) for m in members)


def allergy_conflicts(
    *, drug_code: str, drug_display: str | None, allergies: list[Allergy]
) -> list[AllergyConflict]:
    """Every recorded allergy this prescription runs into, the most certain first.

    `drug_code` is an ATC code (a substance or a class). An allergy coded in ATC is matched by the
    hierarchy, then by the cross-reactivity rules; one coded otherwise (SNOMED CT, free text) is
    matched by the drug or class its text names, and when its text names none it is returned as
    UNCHECKED so the prescriber reads it: it is never silently dropped.
    """
    code = drug_code.strip().upper()
    known = catalogue.name_of(code, "en")
    display = drug_display or known or code
    drug = Text(known or display, catalogue.name_of(code, "fr") or display)
    found: list[AllergyConflict] = []
    for allergy in allergies:
        allergen = allergy.code.strip().upper()
        is_atc_code = catalogue.is_atc(allergen) and allergy.system in (catalogue.ATC_SYSTEM, "")
        recognised = None
        if not is_atc_code:
            recognised = catalogue.recognise(allergy.display) or catalogue.recognise(allergy.code)
            if recognised is None:
                found.append(_unchecked(allergy))
                continue
        hit = _one(allergy, recognised or allergen, code, drug) if catalogue.is_atc(code) else None
        if hit is not None:
            if recognised is not None:
                hit = AllergyConflict(
                    hit.allergy, hit.match, hit.reason, hit.rule, hit.source, recognised_as=recognised
                )
            found.append(hit)
    return sorted(found, key=lambda c: STRENGTH[c.match])


def _unchecked(allergy: Allergy) -> AllergyConflict:
    coded = f"{_system_name(allergy.system)} {allergy.code}".strip()
    if coded:
        how = Text(f"recorded as {coded}", f"enregistrée en {coded}")
    else:
        how = Text("recorded as free text", "enregistrée en texte libre")
    return AllergyConflict(
        allergy,
        Match.UNCHECKED,
        Text(
            f"this allergy is {how.en}, not as a drug carnet knows: check it against this prescription",
            f"cette allergie est {how.fr}, pas comme un médicament connu de carnet :"
            " vérifiez-la vous-même avant de prescrire",
        ),
    )


def _system_name(system: str) -> str:
    return {
        catalogue.SNOMED_SYSTEM: "SNOMED CT",
        catalogue.ATC_SYSTEM: "ATC",
        "": "",
        "text": "",
    }.get(system, system)


@dataclass(frozen=True)
class Current:
    """A prescription already on the patient's list."""

    id: str
    code: str  # ATC substance or class
    display: str
    status: str = "active"


@dataclass(frozen=True)
class Duplicate:
    existing: Current
    match: str  # "same-substance", "same-class", or a therapeutic group's id
    reason: Text = field(compare=False)

    def sentence(self, language: str = "en") -> str:
        label = "Déjà prescrit :" if language == "fr" else "Already prescribed:"
        return f"{label} {self.existing.display} — {self.reason.in_(language)}"


def duplicate_therapy(
    *, drug_code: str, current: list[Current], ignore: frozenset[str] = frozenset()
) -> list[Duplicate]:
    """The active (or held) prescriptions the new one repeats. `ignore` names the prescriptions it
    replaces (a renewal is not a duplicate of what it renews)."""
    code = drug_code.strip().upper()
    if not catalogue.is_atc(code):
        return []
    found: list[Duplicate] = []
    for rx in current:
        other = rx.code.strip().upper()
        if rx.id in ignore or rx.status not in ACTIVE_STATUSES or not catalogue.is_atc(other):
            continue
        if other == code:
            found.append(
                Duplicate(
                    rx,
                    "same-substance",
                    Text("the same substance is already active", "la même substance est déjà en cours"),
                )
            )
        elif _same_class(code, other):
            cls = code[:5] if len(code) >= 5 and len(other) >= 5 else min(code, other, key=len)
            en, fr = catalogue.name_of(cls, "en"), catalogue.name_of(cls, "fr")
            found.append(
                Duplicate(
                    rx,
                    "same-class",
                    Text(
                        f"same class: {en} ({cls})" if en else f"same ATC class ({cls})",
                        f"même classe : {fr} ({cls})" if fr else f"même classe ATC ({cls})",
                    ),
                )
            )
        else:
            for group in _groups():
                if catalogue.overlaps(code, group.members) and catalogue.overlaps(other, group.members):
                    found.append(
                        Duplicate(
                            rx,
                            group.id,
                            Text(f"two {group.name.en}", f"deux {group.name.fr}"),
                        )
                    )
                    break
    return found


# Chemical classes whose members are given together on purpose (dual antiplatelet therapy after
# a coronary stent): two of them are not flagged as the same class.
COMBINED_ON_PURPOSE = frozenset({"B01AC"})


def _same_class(code: str, other: str) -> bool:
    if len(code) >= 5 and len(other) >= 5:
        return code[:5] == other[:5] and code[:5] not in COMBINED_ON_PURPOSE
    # One of them is prescribed as a class: a duplicate when it contains the other.
    return catalogue.overlaps(code, [other])
