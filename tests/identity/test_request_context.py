"""The request context's path is the path Starlette's URL gives, built without the URL."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from carnet.identity.dependencies import request_context


@pytest.mark.parametrize("path", ["/fhir/Patient/abc", "/a?b#c\\d", "/é/x y", "/" + "x" * 300, "/"])
def test_the_path_is_the_urls(path: str) -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [(b"host", b"carnet.example:8443"), (b"user-agent", b"poste 12")],
        "query_string": b"family=Martin",
        "scheme": "https",
        "server": ("10.0.0.1", 8443),
        "client": ("10.1.2.3", 40000),
    }
    request = Request(scope)
    context = request_context(request)
    assert context.path == request.url.path[:200]
    assert (context.address, context.user_agent) == ("10.1.2.3", "poste 12")
