"""A FHIR read's answer built by `FhirAnswer` is Starlette's `Response` for the same body and
headers, and the conditional headers are read as `request.headers` reads them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response

from carnet.fhir.core.api import FhirAnswer, _conditions, fhir_response
from carnet.fhir.core.outcome import FHIR_JSON

names = st.sampled_from(["ETag", "Last-Modified", "Location", "Content-Length", "content-type", "X-A"])
values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@given(st.binary(max_size=64), st.dictionaries(names, values, max_size=4))
def test_the_answer_is_starlettes_response(body: bytes, headers: dict[str, str]) -> None:
    ours = FhirAnswer(body, headers)
    theirs = Response(body, status_code=200, media_type=FHIR_JSON, headers=headers)
    assert ours.raw_headers == theirs.raw_headers
    assert (ours.status_code, ours.body, ours.media_type, ours.background) == (
        theirs.status_code,
        theirs.body,
        theirs.media_type,
        theirs.background,
    )
    assert dict(ours.headers) == dict(theirs.headers)


def test_fhir_response_answers_other_statuses_as_before() -> None:
    created = fhir_response({"resourceType": "Patient"}, status=201, headers={"ETag": 'W/"1"'})
    assert type(created) is Response and created.status_code == 201
    plain = fhir_response({"resourceType": "Patient"})
    assert type(plain) is Response and plain.raw_headers[-1] == (b"content-type", FHIR_JSON.encode())


header_names = st.sampled_from([b"if-none-match", b"if-modified-since", b"host", b"cookie"])


@given(st.lists(st.tuples(header_names, st.binary(max_size=12)), max_size=6))
def test_the_conditions_are_the_request_headers(raw: list[tuple[bytes, bytes]]) -> None:
    request = Request({"type": "http", "method": "GET", "headers": raw, "path": "/", "query_string": b""})
    assert _conditions(request) == (
        request.headers.get("if-none-match"),
        request.headers.get("if-modified-since"),
    )
