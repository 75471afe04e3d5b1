"""The bed board: the wards a nurse works, their rooms and beds in order, each bed free or who
is in it now (`Gate.ward_board`), bounded to the nurse's own ward assignments, each patient a
link to the chart."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel import clock, localtime
from carnet.phi.gate import Gate
from carnet.web.clinician import age_of
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, refuse

router = APIRouter(route_class=WebRoute, include_in_schema=False)


@router.get("/ward")
def ward_board(request: Request, actor: WebActor) -> Response:
    if Role.NURSE not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=AuditKind.PHI_LIST,
            resource_type="Encounter",
            reason="the ward board is for the nurses of a ward",
        )
    board = Gate(runtime_of(request), actor).ward_board()
    today = localtime.local_day(clock.now())
    return render(
        request,
        "work/ward.html",
        {"actor": actor, "board": board, "now": clock.now(), "age_of": lambda born: age_of(born, today)},
    )
