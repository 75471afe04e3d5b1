"""SMART scopes as the access rules read them (pure): parsing, narrowing, category limits."""

from __future__ import annotations

import pytest

from carnet.access import scopes


@pytest.mark.parametrize(
    ("scope", "ok"),
    [
        ("patient/Observation.rs?category=laboratory", True),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            True,
        ),
        ("patient/Condition.rs?category=problem-list-item", True),
        ("patient/Observation.rs?category=http://other.example/cs|laboratory", False),  # another system
        ("patient/Observation.cruds?category=laboratory", False),  # granular scopes only read
        ("patient/Observation.rs?code=1234-5", False),  # only ?category=
        ("patient/Patient.rs?category=x", False),  # not a granular type
        ("patient/Observation.", False),
        ("launch", False),  # a context scope, not a resource scope
    ],
)
def test_parse(scope: str, ok: bool) -> None:
    assert (scopes.parse(scope) is not None) is ok


def test_narrows() -> None:
    assert scopes.narrows("patient/Observation.rs?category=laboratory", "patient/*.read")
    assert scopes.narrows("patient/Patient.r", "patient/*.rs")
    assert not scopes.narrows("user/Observation.rs", "patient/*.rs")
    assert not scopes.narrows("patient/Observation.cruds", "patient/Observation.rs")
    assert not scopes.narrows("patient/Observation.rs", "patient/Observation.rs?category=laboratory")
    assert not scopes.narrows(
        "patient/Observation.rs?category=vital-signs", "patient/Observation.rs?category=laboratory"
    )


def test_category_limit_adds_granular_scopes_and_a_whole_scope_lifts_it() -> None:
    granular = ["patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=vital-signs"]
    assert scopes.category_limit(granular, "Observation") == {"laboratory", "vital-signs"}
    assert scopes.category_limit([*granular, "patient/*.read"], "Observation") is None
    assert scopes.category_limit(granular, "Condition") == frozenset()  # nothing of the type
    assert scopes.category_limit(None, "Observation") is None  # a session: roles decide
    assert scopes.patient_scoped(["user/Patient.rs", "patient/Observation.rs"])
    assert not scopes.patient_scoped(["user/*.rs"])
