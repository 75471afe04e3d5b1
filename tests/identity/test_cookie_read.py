"""`cookie_read` gives what `cookie_session` and `request_context` give, on any headers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from carnet.identity.dependencies import _bearer, cookie_read, request_context, session_cookie_name

ORIGINS = ("https://carnet.example.org", "http://localhost:8000")
NAMES = ("__Host-carnet_session", "carnet_session", "carnet_csrf", "other", "")

_text = st.lists(st.sampled_from([*' =;"\\\tabcXYZ0189_-é', "\\073", '\\"']), max_size=12).map("".join)
_name = st.one_of(st.sampled_from(NAMES), _text)
_chunk = st.one_of(
    st.tuples(_name, _text).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from([" ", "", "  "]), _name, st.sampled_from([" ", ""]), _text).map(
        lambda p: f"{p[0]}{p[1]}{p[2]}={p[3]} "
    ),
    _text,
)
_cookie = st.lists(_chunk, max_size=5).map(";".join)
_authorization = st.one_of(
    st.sampled_from(["Bearer abc", "bearer  x ", "Bearer ", "Bearer", "Basic Zm9v", "", "BEARER t"]), _text
)
_header = st.one_of(
    st.tuples(st.just(b"cookie"), _cookie),
    st.tuples(st.just(b"authorization"), _authorization),
    st.tuples(st.just(b"user-agent"), _text),
    st.tuples(st.sampled_from([b"host", b"accept", b"x-cookie"]), _text),
)
_client = st.one_of(
    st.none(), st.tuples(st.sampled_from(["127.0.0.1", "10.0.0.7", "::1"]), st.integers(1, 65535))
)
_path = st.one_of(
    st.just("/fhir/Patient/abc"), st.text(alphabet=st.sampled_from(list("/ab?#\\%é")), max_size=260)
)


def _request(headers: list[tuple[bytes, str]], client: Any, path: str) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(k, v.encode("utf-8")) for k, v in headers],
        "query_string": b"",
    }
    if client is not None or len(path) % 2:  # a missing client, or one given as None
        scope["client"] = client
    return Request(scope)


def _reference(request: Request, origin: str) -> tuple[str, Any] | None:
    # cookie_session's body, without runtime_of (which needs an app), and request_context.
    if _bearer(request) is not None:
        return None
    token = request.cookies.get(session_cookie_name(origin))
    if token is None:
        return None
    return token, request_context(request)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_header, max_size=6), _client, _path, st.sampled_from(ORIGINS))
def test_cookie_read_is_cookie_session_and_request_context(
    headers: list[tuple[bytes, str]], client: Any, path: str, origin: str
) -> None:
    runtime: Any = SimpleNamespace(settings=SimpleNamespace(origin=origin))
    assert cookie_read(_request(headers, client, path), runtime) == _reference(
        _request(headers, client, path), origin
    )


def test_cookie_read_finds_the_session_of_a_plain_request() -> None:
    runtime: Any = SimpleNamespace(settings=SimpleNamespace(origin=ORIGINS[0]))
    request = _request(
        [(b"cookie", 'carnet_csrf=x; __Host-carnet_session="a\\073b"'), (b"user-agent", "ua")],
        ("10.0.0.7", 5),
        "/fhir/Patient/p",
    )
    found = cookie_read(request, runtime)
    assert found is not None
    assert found[0] == "a;b"
    assert (found[1].address, found[1].user_agent, found[1].path) == ("10.0.0.7", "ua", "/fhir/Patient/p")
    bearer = _request([(b"authorization", "Bearer t"), (b"cookie", "__Host-carnet_session=s")], None, "/")
    assert cookie_read(bearer, runtime) is None
