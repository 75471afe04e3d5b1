"""A request that finds the database gone (a failover under way, a restart) answers 503 with
Retry-After and changes nothing, instead of a bare 500: clients and load balancers retry it."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from carnet.app import RETRY_AFTER_SECONDS, create_app
from carnet.runtime import Runtime


def test_a_request_during_a_database_outage_is_a_503_with_retry_after(sqlite_runtime: Runtime) -> None:
    # A real driver error: PostgreSQL on a loopback port where nothing listens.
    gone = sa.create_engine("postgresql+psycopg://carnet@127.0.0.1:1/nowhere", pool_pre_ping=False)
    outage = dataclasses.replace(sqlite_runtime, session_factory=sessionmaker(gone))
    with TestClient(create_app(outage), raise_server_exceptions=False) as client:
        read = client.get("/fhir/Patient/1", headers={"Authorization": "Bearer some-token"})
    gone.dispose()
    assert read.status_code == 503, read.text
    assert read.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = read.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"
    assert "127.0.0.1" not in read.text and "nowhere" not in read.text  # no connection detail leaves


def test_a_read_while_detections_redis_does_not_answer_is_a_503_and_exposes_nothing(
    sqlite_runtime: Runtime,
) -> None:
    """Detection's counters in a Redis that does not answer (down, or stalled past its socket
    timeout, as seen under load here): the read is not counted, so it is refused and rolled back,
    as a handled 503 with Retry-After rather than an unhandled 500 that also drops the
    connection."""
    from carnet.detection.models import Exposure
    from carnet.runtime import build_runtime
    from tests.ops.helpers import physician_with_patient

    reader = physician_with_patient(sqlite_runtime)
    settings = sqlite_runtime.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    outage = build_runtime(settings)
    try:
        with outage.session_factory() as session:
            exposures = session.scalar(sa.select(sa.func.count()).select_from(Exposure))
        with TestClient(create_app(outage), raise_server_exceptions=False) as client:
            read = client.get(f"/fhir/Patient/{reader.patient_id}", headers=reader.headers)
        with outage.session_factory() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Exposure)) == exposures
    finally:
        outage.close()
    assert read.status_code == 503, read.text
    assert read.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = read.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
    assert "Zéphyrin" not in read.text and "127.0.0.1" not in read.text


def test_a_web_page_while_redis_or_the_database_is_unavailable_is_a_page_saying_so(
    sqlite_runtime: Runtime,
) -> None:
    """A clinician's chart page gets a page in the person's language (503, Retry-After, a link to
    try again), not the API's OperationOutcome JSON; still nothing exposed, nothing leaked."""
    from carnet.detection.models import Exposure
    from carnet.runtime import build_runtime
    from tests.ops.helpers import physician_with_patient

    reader = physician_with_patient(sqlite_runtime)
    settings = sqlite_runtime.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    outage = build_runtime(settings)
    chart = f"/patients/{reader.patient_id}"
    try:
        with outage.session_factory() as session:
            exposures = session.scalar(sa.select(sa.func.count()).select_from(Exposure))
        with TestClient(create_app(outage), raise_server_exceptions=False) as client:
            english = client.get(chart, headers=reader.headers)
            french = client.get(chart, headers={**reader.headers, "Accept-Language": "fr-FR"})
        with outage.session_factory() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Exposure)) == exposures
    finally:
        outage.close()
    for page in (english, french):
        assert page.status_code == 503, page.text
        assert page.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert page.headers["content-type"].startswith("text/html")
        assert f'href="{chart}"' in page.text  # try again
        assert "Zéphyrin" not in page.text and "127.0.0.1" not in page.text
    assert "Access monitoring did not answer" in english.text
    assert (
        "La surveillance des accès n&#39;a pas répondu" in french.text
        or "La surveillance des accès n'a pas répondu" in french.text
    )

    # The database gone: the same page, its database wording.
    gone = sa.create_engine("postgresql+psycopg://carnet@127.0.0.1:1/nowhere", pool_pre_ping=False)
    db_outage = dataclasses.replace(sqlite_runtime, session_factory=sessionmaker(gone))
    with TestClient(create_app(db_outage), raise_server_exceptions=False) as client:
        page = client.get(chart, headers=reader.headers)
    gone.dispose()
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html"), page.text
    assert "The database did not answer" in page.text and "nowhere" not in page.text
