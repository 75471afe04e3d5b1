"""`patient_to_fhir` renders what the previous mapper rendered (tests/fhir/reference_patient_mapping.py):
the same dict, in the same order (the same answer bytes), or the same refusal."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carnet.fhir.core.api import fhir_json
from carnet.fhir.resources.patient import patient_to_fhir
from tests.fhir import reference_patient_mapping as reference

_empty: st.SearchStrategy[Any] = st.sampled_from([None, "", [], {}, 0, False])
_word = st.sampled_from(["Dupont", "Marie Anne", "é", " ", "2850575123456", "x" * 3])
_id = st.one_of(st.uuids().map(str), st.uuids(), st.sampled_from(["p-1", "abc"]))
_moment = st.datetimes(
    min_value=dt.datetime(1900, 1, 1),
    max_value=dt.datetime(2100, 1, 1),
    timezones=st.sampled_from([None, dt.UTC]),
)
_when = st.one_of(st.none(), _moment, _moment.map(lambda m: m.isoformat()))
_address = st.one_of(
    _empty,
    st.dictionaries(
        st.sampled_from(["line", "city", "postalCode", "postal_code", "country", "other"]),
        st.one_of(_empty, _word),
        max_size=5,
    ),
    st.just("12 rue X"),
)


def _value(key: str) -> Any:
    by_key: dict[str, Any] = {
        "id": st.one_of(_id, st.none(), st.just("")),
        "version_id": st.one_of(_empty, st.integers(1, 40)),
        "updated_at": _when,
        "facility_id": st.one_of(_empty, _id),
        "designated_physician_id": st.one_of(_empty, _id),
        "merged_into_id": st.one_of(_empty, _id),
        "replaces": st.one_of(_empty, st.lists(_id, max_size=3)),
        "opposes_other_facilities": st.one_of(_empty, st.booleans(), st.just(1)),
        "active": st.one_of(_empty, st.booleans()),
        "gender": st.one_of(_empty, st.sampled_from(["male", "female", "other", "unknown", "bogus"])),
        "birth_date": st.one_of(_empty, st.dates().map(str), st.dates()),
        "ins": st.one_of(_empty, _word),
        "family": st.one_of(_empty, _word),
        "given": st.one_of(_empty, _word),
        "phone": st.one_of(_empty, _word),
        "email": st.one_of(_empty, _word),
        "address": _address,
    }
    return by_key[key]


KEYS = [
    "version_id",
    "updated_at",
    "facility_id",
    "designated_physician_id",
    "merged_into_id",
    "replaces",
    "opposes_other_facilities",
    "active",
    "gender",
    "birth_date",
    "ins",
    "family",
    "given",
    "phone",
    "email",
    "address",
]


@st.composite
def _view(draw: st.DrawFn) -> dict[str, Any]:
    d: dict[str, Any] = {"id": draw(_value("id"))}
    for key in draw(st.lists(st.sampled_from(KEYS), unique=True)):
        d[key] = draw(_value(key))
    if draw(st.integers(0, 9)) == 0:
        d["received"] = draw(
            st.sampled_from(
                [None, {}, {"resourceType": "Patient", "gender": "female", "meta": {"source": "x"}}]
            )
        )
    return d


def _outcome(mapper: Any, d: dict[str, Any]) -> tuple[str, Any]:
    try:
        resource = mapper(dict(d))
    except Exception as exc:
        return "refused", type(exc).__name__
    return "answer", (resource, fhir_json(resource), _order(resource))


def _order(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _order(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_order(v) for v in value]
    return value


@settings(max_examples=3000, deadline=None)
@given(_view())
def test_patient_to_fhir_is_the_previous_mapper(d: dict[str, Any]) -> None:
    assert _outcome(patient_to_fhir, d) == _outcome(reference.patient_to_fhir, d)


def test_a_typical_view_renders_every_element_in_order() -> None:
    d = {
        "id": str(uuid.uuid4()),
        "version_id": 3,
        "updated_at": dt.datetime(2026, 12, 7, 20, 0, 1, 5, tzinfo=dt.UTC),
        "facility_id": str(uuid.uuid4()),
        "designated_physician_id": str(uuid.uuid4()),
        "merged_into_id": None,
        "replaces": [str(uuid.uuid4())],
        "opposes_other_facilities": False,
        "active": True,
        "gender": "female",
        "birth_date": "1985-05-07",
        "ins": "285057512345678",
        "family": "Dupont",
        "given": "Marie",
        "phone": "0601020304",
        "email": None,
        "address": {"line": "1 rue X", "city": "Lyon", "postal_code": "69001"},
    }
    mine, theirs = _outcome(patient_to_fhir, d), _outcome(reference.patient_to_fhir, d)
    assert mine == theirs
    assert mine[0] == "answer"
    assert [k for k, _v in mine[1][2]] == [
        "resourceType", "id", "meta", "extension", "identifier", "active", "name", "telecom",
        "gender", "birthDate", "address", "generalPractitioner", "managingOrganization", "link",
    ]  # fmt: skip
