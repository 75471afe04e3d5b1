"""The compiled FHIR check `carnet import` runs first (carnet.fhir.core.model_check) agrees with
fhir.resources on every resource of a third-party cohort: it never passes a resource that
fhir.resources refuses, and it passes nearly all of those fhir.resources takes (what it cannot
tell goes to fhir.resources). Broken copies of each resource are held to the same rule."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carnet.fhir.core.model_check import conforms
from tests.fhir import clinosim_data


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    paths = clinosim_data.generate(tmp_path_factory.mktemp("clinosim"), population=20, seed=42)
    return clinosim_data.read(paths)


def _broken(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Copies with one thing wrong: an element removed, an unknown one, a list for a single
    value, a wrong primitive, a null, an empty object, a bad date."""
    for key in [k for k in resource if k != "resourceType"][:6]:
        without = copy.deepcopy(resource)
        del without[key]
        yield without
        wrapped = copy.deepcopy(resource)
        wrapped[key] = resource[key] if isinstance(resource[key], list) else [resource[key]]
        yield wrapped
        for bad in (None, {}, 12, "", "not a date", True):
            changed = copy.deepcopy(resource)
            changed[key] = bad
            yield changed
    yield dict(copy.deepcopy(resource), unknownElement="x")
    yield dict(copy.deepcopy(resource), resourceType="Basic")


def test_the_compiled_check_agrees_with_fhir_resources(resources: list[dict[str, Any]]) -> None:
    passed = refused_by_both = 0
    broken_of: dict[str, int] = {}
    for resource in resources:
        valid = clinosim_data.valid_r4(resource)
        if conforms(resource):
            assert valid, resource["resourceType"]
            passed += 1
        # Broken copies of the first few of each type (fhir.resources is slow to ask).
        broken_of[resource["resourceType"]] = broken_of.get(resource["resourceType"], 0) + 1
        if broken_of[resource["resourceType"]] > 3:
            continue
        for broken in _broken(resource):
            if conforms(broken):
                assert clinosim_data.valid_r4(broken), (resource["resourceType"], sorted(broken))
            else:
                refused_by_both += not clinosim_data.valid_r4(broken)
    valid_count = sum(clinosim_data.valid_r4(r) for r in resources)
    # It is a shortcut worth having: most valid resources need no fhir.resources model at all.
    assert passed >= 0.95 * valid_count, (passed, valid_count)
    assert refused_by_both > 0


def test_an_import_refuses_what_fhir_resources_refuses_naming_the_element(tmp_path: Path) -> None:
    assert not conforms({"resourceType": "Observation", "status": "final"})  # code is required
    assert not conforms({"resourceType": "Nothing"})
    assert conforms({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
