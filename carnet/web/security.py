"""The security console: alerts and their explanation, an actor's timeline, contained accounts
(restore takes two officers), the break-the-glass review queue, the audit chain, incident reports.
The services refuse (and audit) anyone but a security officer."""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from carnet.access import breakglass, exports
from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.detection import console, services
from carnet.detection.report import write_report
from carnet.identity import lifecycle
from carnet.identity.dependencies import runtime_of
from carnet.identity.stepup import Action
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.web.rendering import SECURITY_HEADERS, render
from carnet.web.routing import WebActor, WebRoute, proven, redirect, refuse

router = APIRouter(prefix="/security", route_class=WebRoute, include_in_schema=False)


@router.get("")
def console_home(request: Request, actor: WebActor, status: str = "open") -> Response:
    runtime = runtime_of(request)
    alerts = services.list_alerts(runtime, officer=actor, status=None if status == "any" else status)
    contained = console.list_contained(runtime, officer=actor)
    queue = breakglass.list_break_glass(runtime, actor=actor, unreviewed_only=True)
    # Contained on probation: the console says the owner re-enrols first, instead of a restore form.
    reenrol = {c.actor_ref: lifecycle.restore_block(runtime, actor_ref=c.actor_ref) for c in contained}
    return render(
        request,
        "security/console.html",
        {
            "actor": actor,
            "alerts": alerts,
            "contained": contained,
            "queue": queue,
            "status": status,
            "reenrol": reenrol,
        },
    )


@router.get("/alerts/{alert_id}")
def alert(request: Request, actor: WebActor, alert_id: uuid.UUID) -> Response:
    detail = services.get_alert(runtime_of(request), officer=actor, alert_id=alert_id)
    return render(request, "security/alert.html", {"actor": actor, "detail": detail})


@router.post("/alerts/{alert_id}/acknowledge")
def acknowledge(
    request: Request,
    actor: WebActor,
    alert_id: uuid.UUID,
    note: Annotated[str, Form(max_length=500)] = "",
    false_positive: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    runtime = runtime_of(request)
    if false_positive:
        services.mark_false_positive(runtime, officer=actor, alert_id=alert_id, note=note)
    else:
        services.acknowledge_alert(runtime, officer=actor, alert_id=alert_id, note=note)
    return redirect(f"/security/alerts/{alert_id}")


@router.get("/timeline")
def timeline(request: Request, actor: WebActor, actor_ref: str, hours: int = 24) -> Response:
    if not 1 <= hours <= 24 * 31:
        raise InvalidInput("the timeline covers 1 hour to 31 days")
    until = clock.now()
    entries = services.actor_timeline(
        runtime_of(request),
        officer=actor,
        actor_ref=actor_ref,
        since=until - dt.timedelta(hours=hours),
        until=until,
    )
    return render(
        request,
        "security/timeline.html",
        {"actor": actor, "actor_ref": actor_ref, "entries": entries, "hours": hours},
    )


@router.post("/restore")
def request_restore(
    request: Request,
    actor: Annotated[Actor, proven(Action.RESTORE_REQUEST)],
    actor_ref: Annotated[str, Form(max_length=80)],
    reason: Annotated[str, Form(max_length=500)],
) -> Response:
    services.request_restore(runtime_of(request), officer=actor, actor_ref=actor_ref, reason=reason)
    return redirect("/security#contained")


@router.post("/restore/{request_id}/approve")
def approve_restore(
    request: Request, actor: Annotated[Actor, proven(Action.RESTORE_APPROVE)], request_id: uuid.UUID
) -> Response:
    services.approve_restore(runtime_of(request), officer=actor, request_id=request_id)
    return redirect("/security#contained")


@router.post("/restore/{request_id}/reject")
def reject_restore(
    request: Request, actor: WebActor, request_id: uuid.UUID, note: Annotated[str, Form(max_length=500)]
) -> Response:
    services.reject_restore(runtime_of(request), officer=actor, request_id=request_id, note=note)
    return redirect("/security#contained")


@router.post("/break-glass/{access_id}/review")
def review_break_glass(
    request: Request,
    actor: Annotated[Actor, proven(Action.BREAK_GLASS_REVIEW)],
    access_id: str,
    note: Annotated[str, Form(max_length=1000)],
) -> Response:
    breakglass.review_break_glass(runtime_of(request), actor=actor, access_id=access_id, note=note)
    return redirect("/security#break-glass")


@router.get("/exports")
def export_requests(request: Request, actor: WebActor, show: str = "pending") -> Response:
    """Bulk export requests waiting for a second person (a security officer), or all recent ones."""
    runtime = runtime_of(request)
    queue = exports.list_export_requests(runtime, actor=actor, pending_only=show != "all")
    return render(
        request,
        "security/exports.html",
        {"actor": actor, "queue": queue, "show": show, "done": request.query_params.get("done", "")},
    )


@router.post("/exports/{export_id}/approve")
def approve_export(
    request: Request,
    actor: Annotated[Actor, proven(Action.EXPORT_APPROVE)],
    export_id: str,
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    exports.approve_export(runtime_of(request), actor=actor, export_id=export_id, note=note)
    return redirect("/security/exports?done=approved")


@router.post("/exports/{export_id}/reject")
def reject_export(
    request: Request, actor: WebActor, export_id: str, note: Annotated[str, Form(max_length=1000)]
) -> Response:
    exports.reject_export(runtime_of(request), actor=actor, export_id=export_id, note=note)
    return redirect("/security/exports?done=rejected")


@router.get("/audit")
async def audit_chain(request: Request, actor: WebActor) -> Response:
    runtime = runtime_of(request)
    status = await run_in_threadpool(lambda: console.chain_status(runtime, officer=actor))
    return render(request, "security/audit.html", {"actor": actor, "chain": status})


@router.get("/incident")
def incident_form(request: Request, actor: WebActor, actor_ref: str = "") -> Response:
    if Role.SECURITY_OFFICER not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=AuditKind.INCIDENT_REPORT,
            resource_type="IncidentReport",
            reason="only a security officer writes incident reports",
        )
    return render(request, "security/incident.html", {"actor": actor, "actor_ref": actor_ref})


@router.post("/incident")
def incident_report(
    request: Request,
    actor: WebActor,
    actor_ref: Annotated[str, Form(min_length=1, max_length=150)],
    days: Annotated[int, Form(ge=1, le=366)] = 30,
) -> Response:
    """The one-page summary for download (the notification list stays on the server: CLI)."""
    runtime = runtime_of(request)
    # The officer check is audited like every console read; the report itself is audited too.
    console.list_contained(runtime, officer=actor)
    with tempfile.TemporaryDirectory(prefix="carnet-incident-") as tmp:
        files = write_report(
            runtime,
            actor=actor_ref,
            since=clock.now() - dt.timedelta(days=days),
            until=None,
            out=Path(tmp),
            operator=actor.username,
        )
        body = files.summary.read_bytes()
    headers = dict(SECURITY_HEADERS)
    headers["Content-Disposition"] = 'attachment; filename="incident-summary.md"'
    return Response(body, media_type="text/markdown; charset=utf-8", headers=headers)
