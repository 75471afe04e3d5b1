"""/healthz, /readyz and /metrics: for load balancers and Prometheus, never patient data."""

from __future__ import annotations

import logging

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from carnet import __version__
from carnet.operations import health, metrics
from carnet.runtime import Runtime

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> JSONResponse:
    """Alive: the process answers (a load balancer restarts it otherwise)."""
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: send it traffic (503 takes it out of the pool until its dependencies answer)."""
    runtime: Runtime = request.app.state.runtime
    ready, checks = await anyio.to_thread.run_sync(health.readiness, runtime)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    """Prometheus text format. Outside demo and test only with the metrics token (a bearer):
    counts and route templates reveal how the hospital works, if not whom it treats."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    if not settings.exercise_mode and not metrics.token_ok(
        settings.metrics_token, request.headers.get("authorization")
    ):
        log.warning("metrics scrape refused (no or wrong token)")
        return JSONResponse(
            {"error": "a bearer token (CARNET_METRICS_TOKEN) is required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = await anyio.to_thread.run_sync(metrics.render, runtime)
    return Response(body, media_type=metrics.CONTENT_TYPE)
