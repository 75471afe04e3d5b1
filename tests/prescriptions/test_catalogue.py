"""The drug catalogue shipped as data: well-formed, searchable in French and English."""

from __future__ import annotations

import pytest

from carnet.prescriptions import catalogue
from carnet.prescriptions.checks import _groups, _rules


def test_every_drug_has_a_level_five_atc_code_and_two_names() -> None:
    drugs = catalogue.drugs()
    assert len(drugs) >= 100
    assert len({d.atc for d in drugs}) == len(drugs)
    for d in drugs:
        assert catalogue.atc_level(d.atc) == 5, d.atc
        assert d.name.en and d.name.fr


def test_every_rule_names_well_formed_classes_and_a_source() -> None:
    for rule in _rules():
        assert rule.kind in ("class", "cross")
        assert all(catalogue.is_atc(p) for p in (*rule.a, *rule.b)), rule.id
        assert rule.source and rule.reason.en and rule.reason.fr
    for group in _groups():
        assert all(catalogue.is_atc(p) for p in group.members), group.id
    for cls in catalogue.classes():
        assert catalogue.is_atc(cls.atc) and catalogue.atc_level(cls.atc) < 5


@pytest.mark.parametrize(
    ("code", "level", "ancestors"),
    [
        ("J01CA04", 5, ["J", "J01", "J01C", "J01CA", "J01CA04"]),
        ("J01C", 3, ["J", "J01", "J01C"]),
        ("V08", 2, ["V", "V08"]),
        ("J01CA4", 0, []),
        ("j01ca04", 0, []),
        ("91936005", 0, []),
        ("", 0, []),
    ],
)
def test_atc_hierarchy(code: str, level: int, ancestors: list[str]) -> None:
    assert catalogue.atc_level(code) == level
    assert catalogue.atc_ancestors(code) == ancestors


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("amox", "J01CA04"),
        ("AMOXICILLINE", "J01CA04"),
        ("cefalexine", "J01DB01"),  # without the accent
        ("céfalexine", "J01DB01"),
        ("paracetamol", "N02BE01"),
        ("doliprane", "N02BE01"),  # a brand
        ("J01DD", "J01DD01"),  # a code prefix
        ("clavulan", "J01CR02"),  # inside the name
    ],
)
def test_search(query: str, first: str) -> None:
    assert catalogue.search(query)[0].atc == first


def test_search_is_bounded_and_an_empty_query_finds_nothing() -> None:
    assert catalogue.search("") == [] and catalogue.search("   ") == []
    assert len(catalogue.search("a", limit=5)) == 5
    assert catalogue.search("zzzz") == []


@pytest.mark.parametrize(
    ("entry", "atc"),
    [
        ("J01CA04", "J01CA04"),
        ("j01ca04", "J01CA04"),
        ("amoxicilline", "J01CA04"),
        ("Amoxicillin", "J01CA04"),
        ("amoxicilline (Clamoxyl) — J01CA04", "J01CA04"),
        ("Augmentin", "J01CR02"),
        ("amox", None),
        ("", None),
    ],
)
def test_resolve(entry: str, atc: str | None) -> None:
    found = catalogue.resolve(entry)
    assert (found.atc if found else None) == atc


def test_labels_are_what_resolve_reads_back() -> None:
    for d in catalogue.drugs():
        for language in ("en", "fr"):
            assert catalogue.resolve(d.label(language)) == d
