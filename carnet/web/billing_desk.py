"""The billing worklist: issued invoices not yet paid, oldest first, with their lines, and a
payment recorded from the list. Billing sees whom an invoice is for (name, birth date) and
what it bills, never a stay, a diagnosis or a note (`Gate.billing_worklist`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import PaymentInput
from carnet.web.desk import _cents
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, redirect, refuse

router = APIRouter(prefix="/billing/worklist", route_class=WebRoute, include_in_schema=False)

METHODS = ("card", "cash", "cheque", "transfer", "insurer")


def _require_billing(request: Request, actor: Actor, kind: AuditKind) -> None:
    if Role.BILLING not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=kind,
            resource_type="Invoice",
            reason="the billing worklist is for billing staff",
        )


def _page(
    request: Request,
    actor: Actor,
    *,
    page: int,
    done: str = "",
    problem: str | None = None,
    problem_id: str = "",
    status: int = 200,
) -> Response:
    worklist = Gate(runtime_of(request), actor).billing_worklist(page=page)
    context = {
        "actor": actor,
        "worklist": worklist,
        "methods": METHODS,
        "done": done == "paid",
        "problem": problem,
        "problem_id": problem_id,
    }
    return render(request, "work/billing_worklist.html", context, status_code=status)


@router.get("")
def worklist(request: Request, actor: WebActor, page: int = 1, done: str = "") -> Response:
    _require_billing(request, actor, AuditKind.PHI_LIST)
    return _page(request, actor, page=page, done=done)


@router.post("/{invoice_id}/payments")
def pay(
    request: Request,
    actor: WebActor,
    invoice_id: str,
    expected_version: Annotated[int, Form()],
    amount: Annotated[str, Form(max_length=20)],
    method: Annotated[str, Form(max_length=20)],
    page: Annotated[int, Form(ge=1, le=50)] = 1,
) -> Response:
    """A payment against one invoice of the list (all of what is due marks it paid); a wrong
    amount or method, or an invoice changed meanwhile, changes nothing and says why."""
    _require_billing(request, actor, AuditKind.PHI_UPDATE)
    try:
        try:
            data = PaymentInput(
                invoice_id=invoice_id,
                expected_version=expected_version,
                amount_cents=_cents(amount),
                method=method,
            )
        except ValidationError:
            raise InvalidInput(
                "the amount must be more than zero and the method one of: " + ", ".join(METHODS)
            ) from None
        Gate(runtime_of(request), actor).record_payment(data=data)
    except (Conflict, InvalidInput, NotFound) as exc:
        status = 409 if isinstance(exc, Conflict) else 404 if isinstance(exc, NotFound) else 400
        return _page(request, actor, page=page, problem=str(exc), problem_id=invoice_id, status=status)
    return redirect(f"/billing/worklist?page={page}&done=paid")
