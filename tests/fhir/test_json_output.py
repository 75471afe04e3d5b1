"""FHIR answers are written by orjson: the same JSON the standard library wrote, value for value,
including what the stdlib handed to `str` (dates, datetimes, UUIDs, decimals) and non-string keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest

from carnet.fhir.core.api import fhir_json, fhir_response


@dataclasses.dataclass
class _Point:
    x: int


VALUES: list[Any] = [
    {
        "resourceType": "Patient",
        "id": str(uuid.uuid4()),
        "name": [{"family": "Lefèvre-Dupont", "given": ["Zoé"]}],
    },
    {"birthDate": dt.date(1970, 5, 17), "at": dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC)},
    {"naive": dt.datetime(2026, 1, 2, 10, 0, 0, 123456), "time": dt.time(8, 30)},
    {"id": uuid.UUID("12345678-1234-5678-1234-567812345678"), "amount": decimal.Decimal("12.50")},
    {1: "one", "nested": {"list": [1, 2.5, None, True, False, "\u2028", '"quoted" \\ /']}},
    {"dataclass": _Point(3), "empty": {}, "emptyList": []},
    {"big": 2**53 + 1, "negative": -7, "float": 0.1, "exp": 1e-7, "unicode": "日本語 ✓ 🙂"},
]


@pytest.mark.parametrize("value", VALUES)
def test_orjson_answers_read_back_as_the_stdlib_ones(value: Any) -> None:
    before = json.dumps(value, default=str, ensure_ascii=False)
    after = fhir_json(value)
    assert json.loads(after) == json.loads(before)
    assert after.decode("utf-8")  # UTF-8, never escaped to ASCII


def test_the_response_carries_the_fhir_media_type_and_the_bytes() -> None:
    response = fhir_response({"resourceType": "Patient", "id": "x"}, status=201, headers={"ETag": 'W/"1"'})
    assert response.status_code == 201
    assert response.media_type == "application/fhir+json"
    assert json.loads(response.body) == {"resourceType": "Patient", "id": "x"}
    assert response.headers["etag"] == 'W/"1"'
