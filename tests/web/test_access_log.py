"""The server's access log never carries patient data from a query string."""

from __future__ import annotations

import logging

import pytest

from carnet.app import create_app
from carnet.runtime import Runtime


def test_the_access_log_keeps_the_path_not_the_search(
    sqlite_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    create_app(sqlite_runtime)
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        # The call uvicorn makes for each request (uvicorn.protocols.http).
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/patients?identifier=180022912345678&family=Durand&birth_date=1980-02-29",
            "1.1",
            200,
        )
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/desk/schedule", "1.1", 200
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines == [
        '127.0.0.1:5000 - "GET /patients?(query not logged) HTTP/1.1" 200',
        '127.0.0.1:5000 - "GET /desk/schedule HTTP/1.1" 200',
    ]
    assert "180022912345678" not in caplog.text and "Durand" not in caplog.text
    create_app(sqlite_runtime)  # a second app in the process adds no second filter
    assert len(logging.getLogger("uvicorn.access").filters) == 1
