"""The web interface: server-rendered pages (Jinja2 + htmx) for staff, security officers,
administrators and patients. Every patient datum comes through the gate."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Add the pages and the static files (our own scripts only: no CDN) to the app."""
    from carnet.web import (
        account,
        apps,
        arrivals,
        billing_desk,
        calendar,
        chart_forms,
        clinician,
        desk,
        integration,
        orders,
        printing,
        schedule,
        security,
        setup,
        ward,
    )

    # The day's work (arrivals, calendar grid, billing worklist, ward, chart forms) and the lab
    # orders before the modules whose wider routes (/patients/{id}/..., the chart's
    # /sections/{name}) they must not be shadowed by.
    for module in (arrivals, billing_desk, calendar, chart_forms, ward, orders):
        app.include_router(module.router)
    for module in (account, apps, clinician, desk, integration, printing, schedule, security, setup):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # Browsers ask for it on every page whatever the page links: answer it, no 404 noise.
        return FileResponse(
            STATIC / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
        )
