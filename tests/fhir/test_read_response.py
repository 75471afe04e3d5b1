"""`read_response` answers a read as `resource_response` does (status, headers, bytes), and
`_http_date` writes what `email.utils.format_datetime` wrote."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from carnet.fhir.core.api import _http_date, read_response, resource_response

_zones: st.SearchStrategy[Any] = st.sampled_from(
    [None, dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-9, minutes=-30))]
)
_moment = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=_zones)
_date_value = st.one_of(
    _moment.map(lambda m: m.isoformat()),
    _moment.map(lambda m: m.isoformat().replace("+00:00", "Z")),
    _moment,
    st.dates().map(str),
    st.sampled_from([None, "", "garbage", "2026-13-01", 0, 5, "2026-12-07T20:00:00Z"]),
)


def _previous_http_date(value: Any) -> str | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return format_datetime(moment.astimezone(dt.UTC), usegmt=True)


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return "value", fn(*args)
    except Exception as exc:
        return "raised", type(exc).__name__


@settings(max_examples=2000, deadline=None)
@given(_date_value)
def test_http_date_is_format_datetime(value: Any) -> None:
    assert _outcome(_http_date, value) == _outcome(_previous_http_date, value)


_version = st.one_of(
    st.sampled_from([None, "", "0", "1", "3", "12", 0, 4, "x", " 2"]), st.integers(0, 99).map(str)
)
_meta: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([None, {}]),
    st.fixed_dictionaries({}, optional={"versionId": _version, "lastUpdated": _date_value}),
)
_condition = st.one_of(
    st.tuples(
        st.just(b"if-none-match"), st.sampled_from(['W/"1"', '"3"', "*", 'W/"2", W/"1"', "", 'W/"12"'])
    ),
    st.tuples(
        st.just(b"if-modified-since"),
        st.one_of(
            st.sampled_from(["", "garbage", "Mon, 07 Dec 2026 20:00:00 GMT", "Mon, 07 Dec 2026 20:00:00"]),
            _moment.map(lambda m: format_datetime(m.replace(tzinfo=dt.UTC), usegmt=True)),
        ),
    ),
    st.tuples(st.just(b"host"), st.just("x")),
)


@settings(max_examples=2000, deadline=None)
@given(_meta, st.sampled_from(["GET", "HEAD", "PUT", "POST"]), st.lists(_condition, max_size=3))
def test_read_response_is_resource_response(meta: Any, method: str, headers: list[tuple[bytes, str]]) -> None:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": "p1"}
    if meta is not None:
        resource["meta"] = meta

    def answer(fn: Any) -> Any:
        request = Request(
            {
                "type": "http",
                "method": method,
                "path": "/fhir/Patient/p1",
                "headers": [(k, v.encode("latin-1")) for k, v in headers],
                "query_string": b"",
            }
        )
        outcome = _outcome(fn, request, resource)
        if outcome[0] == "raised":
            return outcome
        r = outcome[1]
        return type(r), r.status_code, r.raw_headers, r.body, r.background, r.media_type

    assert answer(read_response) == answer(resource_response)
