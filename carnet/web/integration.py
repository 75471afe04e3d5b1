"""Integration staff: each HL7 interface's message log, searchable by control id (ids and
carnet's reasons only, never patient data). The service refuses and audits anyone else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carnet.identity.dependencies import runtime_of
from carnet.interfaces.log import read_log
from carnet.kernel.errors import InvalidInput
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute

router = APIRouter(prefix="/integration", route_class=WebRoute, include_in_schema=False)


@router.get("")
def message_log(
    request: Request, actor: WebActor, interface: str = "", control_id: str = "", status: str = ""
) -> Response:
    if len(interface) > 60 or len(control_id) > 40 or status not in ("", "accepted", "rejected"):
        raise InvalidInput("an interface name (60), a control id (40), a status accepted or rejected")
    page = read_log(
        runtime_of(request),
        actor=actor,
        interface=interface or None,
        control_id=control_id.strip() or None,
        status=status or None,
    )
    return render(
        request,
        "integration/log.html",
        {"actor": actor, "page": page, "control_id": control_id, "status": status},
    )
