"""The ASGI application: identity, the FHIR API and the web UI, each born behind the gate."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
import psycopg
import redis
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Scope

from carnet import __version__
from carnet.operations import tracing
from carnet.operations.headers import SecurityHeaders
from carnet.operations.observe import Observe
from carnet.runtime import Runtime, build_runtime
from carnet.settings import get_settings


class NoQueryInAccessLog(logging.Filter):
    """Search criteria travel in query strings (an INS, a name and a birth date, in the staff
    pages and in FHIR searches): the server's access log keeps the path, never those values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?(query not logged)", *args[3:])
        return True


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """Build the app around a runtime (tests pass theirs; `carnet serve` builds one)."""
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, NoQueryInAccessLog) for f in access_log.filters):
        access_log.addFilter(NoQueryInAccessLog())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = getattr(app.state, "runtime", None) is None
        if owned:
            app.state.runtime = build_runtime(get_settings())
        tracing.configure(app.state.runtime.settings.otel_exporter)
        anyio.to_thread.current_default_thread_limiter().total_tokens = (
            app.state.runtime.settings.request_threads
        )
        # What is loaded by now lives as long as the process: kept out of the collector's full
        # passes, which otherwise walk ~250,000 objects in the middle of a request (the largest
        # pages' p95 was 4 to 5 times their median). Given back at shutdown.
        gc.freeze()
        # Pin the audit tail a killed predecessor left unsigned before serving anyone.
        checkpointer = app.state.runtime.checkpointer
        if checkpointer is not None:
            await anyio.to_thread.run_sync(checkpointer.sign_tail)
        # Exports nobody finished or claimed are swept on a timer (every worker: the sweep's
        # updates are conditional, so two workers sweeping at once change each job once).
        sweeper = None
        every = app.state.runtime.settings.export_sweep_seconds
        if every > 0:
            from carnet.phi.sweep import run_periodically

            sweeper = asyncio.get_running_loop().create_task(run_periodically(app.state.runtime, every=every))
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            gc.unfreeze()
            if owned:
                app.state.runtime.close()  # a final signed checkpoint pins this worker's audit tail

    app = CarnetApp(
        title="carnet",
        version=__version__,
        description="Electronic patient record: staff UI, patient portal and HL7 FHIR R4 API.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans carry the raw path and query string (an INS, a name
        # searched for) once a tracer provider is installed: off. carnet.operations.observe
        # traces each request by its route template instead.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.runtime = runtime

    from carnet.fhir.core.negotiation import FhirNegotiation

    app.add_middleware(FhirNegotiation)  # 406/415 and HEAD under /fhir, before any route runs
    app.add_middleware(Observe)  # a span and the counters for every request, errors included
    from carnet.identity.cors import AppCors, AppOrigins
    from carnet.identity.oauth import app_origins

    known = AppOrigins(lambda: app_origins(app.state.runtime))
    app.add_middleware(AppCors, origins=lambda _scope: known())  # registered SMART apps only
    from carnet.fhir.resources.patient import install_read_first

    install_read_first(app)  # the hottest route, ahead of every router (it answers nothing else)
    from carnet.operations.views import router as operations_router

    app.include_router(operations_router)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/home", status_code=303)  # the web UI sends each role to its page

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from carnet.fhir.core import outcome
    from carnet.fhir.metadata import router as fhir_metadata_router
    from carnet.kernel.errors import CarnetError

    app.add_exception_handler(CarnetError, outcome.carnet_error_handler)
    app.add_exception_handler(RequestValidationError, outcome.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, outcome.http_error_handler)
    app.add_exception_handler(Exception, outcome.unexpected_error_handler)
    for unavailable in _DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(redis.RedisError, _monitoring_unavailable)

    from carnet.identity.views import smart_router

    app.include_router(smart_router)  # before the FHIR routes: /fhir/.well-known/... is discovery
    app.include_router(fhir_metadata_router)

    from carnet.fhir.routes import routers as fhir_routers

    for fhir_router in fhir_routers():
        app.include_router(fhir_router)

    from carnet.identity.views import oauth_router
    from carnet.identity.views import router as identity_router

    app.include_router(identity_router)
    app.include_router(oauth_router)

    from carnet.web import install as install_web

    install_web(app)
    return app


# The database went away mid-request (a failover, a restart, a full pool): the transaction was
# rolled back, so nothing changed, and the client may retry shortly: 503 with Retry-After, not 500.
_DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    psycopg.OperationalError,
)
RETRY_AFTER_SECONDS = 5


def _unavailable(what: str, page: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    """A handler answering 503 `transient` with Retry-After: `what` is unavailable for a moment,
    the request's transaction was rolled back, the client may retry (not a 500, after which the
    server also drops the connection). The exception's type goes to the log, nothing more. A
    web page's route answers a page saying so (`page`: its kind), the API an OperationOutcome."""

    async def handler(request: Request, exc: Exception) -> Response:
        from carnet.fhir.core.outcome import outcome_response
        from carnet.web.routing import WebRoute, unavailable_page

        logging.getLogger("carnet.app").warning("%s unavailable: %s", what, type(exc).__name__)
        if isinstance(request.scope.get("route"), WebRoute):
            return unavailable_page(request, page, RETRY_AFTER_SECONDS)
        return outcome_response(
            503,
            "transient",
            f"{what} is unavailable for a moment; nothing was changed; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    return handler


_database_unavailable = _unavailable("the database", "database")
# Detection's Redis did not answer (down, or stalled past its socket timeout): the access is not
# counted, so it is refused (fail closed) and its transaction rolled back.
_monitoring_unavailable = _unavailable("access monitoring", "monitoring")


class CarnetApp(FastAPI):
    """FastAPI with the hardening headers outside everything, the error middleware included, so
    a 500 answer carries them too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), hsts=_wants_hsts)


def _wants_hsts(scope: Scope) -> bool:
    runtime = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
    return runtime is None or not runtime.settings.exercise_mode
