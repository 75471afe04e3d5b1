"""`address_view` reads a stored address as it did with `json.loads` (the same fields, the same
refusals), on addresses carnet writes and on any text."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carnet.patients.views import _address_view, address_view


def _previous(stored: str | None) -> Any:
    if stored is None:
        return None
    return _address_view(json.loads(stored))


def _outcome(fn: Any, stored: str | None) -> Any:
    try:
        value = fn(stored)
    except Exception as exc:
        return "raised", type(exc).__name__
    return "value", value, None if value is None else list(value.items())


_strings = st.text(
    alphabet=st.characters(
        codec="utf-8", categories=["L", "N", "P", "Z", "S", "Cc"], exclude_characters="\x00"
    )
    | st.sampled_from(["\ud800", "\x00", "é", "\u2028", '"', "\\"]),
    max_size=12,
)
_json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True),
        _strings,
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=6,
)
_address = st.dictionaries(
    st.sampled_from(["line", "city", "postalCode", "country", "district"]) | _strings,
    _strings | _json_value,
    max_size=5,
)


@settings(max_examples=2500, deadline=None)
@given(_address, st.booleans(), st.booleans())
def test_a_written_address_reads_as_before(value: dict[str, Any], ascii_only: bool, sort: bool) -> None:
    stored = json.dumps(value, ensure_ascii=ascii_only, sort_keys=sort)
    assert _outcome(address_view, stored) == _outcome(_previous, stored)


_raw = st.lists(
    st.sampled_from(
        ['{"', '"', ":", ",", "}", "{", "[", "]", "a", "1", "e9", " ", "\\u00e9", "\\ud800", "\t", "\n"]
    )
    | _strings,
    max_size=12,
).map("".join)


@settings(max_examples=2500, deadline=None)
@given(_raw)
def test_any_text_reads_or_is_refused_as_before(stored: str) -> None:
    assert _outcome(address_view, stored) == _outcome(_previous, stored)


def test_duplicate_keys_and_exotic_values() -> None:
    for stored in [
        '{"city": "Lyon", "line": "1 rue X", "city": "Paris"}',
        '{"city": ""}',
        '{"line": ["1 rue X", "", "bât. B"], "city": "Lyon"}',
        '{"postalCode": 123456789012345678901234567890}',
        '{"city": NaN}',
        '{"city": "\\ud800"}',
        "[]",
        "null",
        " \n{}",
        None,
    ]:
        assert _outcome(address_view, stored) == _outcome(_previous, stored), stored
