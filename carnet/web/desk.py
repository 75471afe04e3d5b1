"""Front desk (registration with duplicate detection, booking, moving, cancelling), billing,
administration (accounts, roles, grants awaiting a second administrator) and the patient portal."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from carnet.access import accounts, directory, grants
from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.access_log import group_visits
from carnet.audit.interfaces import AuditKind
from carnet.audit.search import own_access_log
from carnet.identity.dependencies import runtime_of
from carnet.identity.stepup import Action
from carnet.kernel import localtime
from carnet.kernel.errors import CarnetError, Conflict, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import (
    AppointmentInput,
    CardReadingInput,
    InvoiceInput,
    InvoiceLineInput,
    PatientInput,
    PaymentInput,
)
from carnet.web.clinician import chart_again, chart_context
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, proven, redirect, refuse

router = APIRouter(route_class=WebRoute, include_in_schema=False)

GENDERS = ("female", "male", "other", "unknown")
GRANTABLE = tuple(r for r in Role if r not in (Role.PATIENT, Role.API_CLIENT))


def _moment(value: str, name: str) -> dt.datetime:
    """A datetime-local field, read on the wall clock the pages show (Europe/Paris)."""
    try:
        return localtime.wall_clock(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time") from None


# -- front desk ---------------------------------------------------------------------------
@router.get("/desk")
def desk(request: Request, actor: WebActor) -> Response:
    if Role.FRONT_DESK not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=AuditKind.PHI_CREATE,
            resource_type="Patient",
            reason="the front desk pages are for front-desk staff",
        )
    return _desk_page(request, actor, draft={}, problem=None)


def _desk_page(
    request: Request, actor: Any, *, draft: dict[str, str], problem: str | None, status: int = 200
) -> Response:
    practitioners = directory.list_practitioners(runtime_of(request), actor=actor)
    return render(
        request,
        "desk/desk.html",
        {
            "actor": actor,
            "draft": draft,
            "problem": problem,
            "genders": GENDERS,
            "practitioners": practitioners,
        },
        status_code=status,
    )


@router.post("/desk/patients")
def register(
    request: Request,
    actor: WebActor,
    family: Annotated[str, Form(max_length=100)],
    given: Annotated[str, Form(max_length=100)],
    birth_date: Annotated[str, Form(max_length=10)],
    gender: Annotated[str, Form(max_length=10)],
    ins: Annotated[str, Form(max_length=15)] = "",
    phone: Annotated[str, Form(max_length=30)] = "",
    email: Annotated[str, Form(max_length=200)] = "",
    line: Annotated[str, Form(max_length=200)] = "",
    city: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    draft = {
        "family": family,
        "given": given,
        "birth_date": birth_date,
        "gender": gender,
        "ins": ins,
        "phone": phone,
        "email": email,
        "line": line,
        "city": city,
    }
    if actor.facility_id is None:
        raise Forbidden("registration happens at a facility")
    try:
        data = PatientInput(
            facility_id=str(actor.facility_id),
            family=family,
            given=given,
            birth_date=dt.date.fromisoformat(birth_date),
            gender=gender,
            ins=ins.strip() or None,
            phone=phone.strip() or None,
            email=email.strip() or None,
            address={"line": line.strip(), "city": city.strip()} if line.strip() or city.strip() else None,
        )
    except ValueError as exc:
        fields = sorted({str(e["loc"][-1]) for e in getattr(exc, "errors", lambda: [])()} or {"birth_date"})
        problem = "check these fields: " + ", ".join(fields)
        return _desk_page(request, actor, draft=draft, problem=problem, status=400)
    try:
        patient = Gate(runtime_of(request), actor).register_patient(data=data)
    except (Conflict, InvalidInput) as exc:
        # A likely duplicate: nothing was registered; the clerk searches for the existing record.
        return _desk_page(request, actor, draft=draft, problem=str(exc), status=409)
    return redirect(f"/patients/{patient.id}")


@router.post("/patients/{patient_id}/appointments")
def book(
    request: Request,
    actor: WebActor,
    patient_id: str,
    practitioner_id: Annotated[str, Form(max_length=40)],
    start_at: Annotated[str, Form(max_length=30)],
    minutes: Annotated[int, Form(ge=5, le=480)] = 20,
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    start = _moment(start_at, "the start")
    data = AppointmentInput(
        patient_id=patient_id,
        practitioner_id=practitioner_id,
        start_at=start,
        end_at=start + dt.timedelta(minutes=minutes),
        reason=reason.strip() or None,
    )
    Gate(runtime_of(request), actor).book_appointment(data=data)
    return redirect(f"/patients/{patient_id}#appointments")


@router.post("/patients/{patient_id}/appointments/{appointment_id}/move")
def move(
    request: Request,
    actor: WebActor,
    patient_id: str,
    appointment_id: str,
    expected_version: Annotated[int, Form()],
    start_at: Annotated[str, Form(max_length=30)],
    minutes: Annotated[int, Form(ge=5, le=480)] = 20,
) -> Response:
    start = _moment(start_at, "the new start")
    Gate(runtime_of(request), actor).amend_appointment(
        appointment_id=appointment_id,
        expected_version=expected_version,
        start_at=start,
        end_at=start + dt.timedelta(minutes=minutes),
    )
    return redirect(f"/patients/{patient_id}#appointments")


@router.post("/patients/{patient_id}/appointments/{appointment_id}/cancel")
def cancel(
    request: Request,
    actor: WebActor,
    patient_id: str,
    appointment_id: str,
    expected_version: Annotated[int, Form()],
    reason: Annotated[str, Form(max_length=200)],
) -> Response:
    Gate(runtime_of(request), actor).cancel_appointment(
        appointment_id=appointment_id, expected_version=expected_version, reason=reason
    )
    return redirect(f"/patients/{patient_id}#appointments")


# -- merging duplicates (identity vigilance) ---------------------------------------------
def _desk_only(request: Request, actor: Any) -> None:
    if Role.FRONT_DESK not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=AuditKind.PHI_MERGE,
            resource_type="Patient",
            reason="merging duplicate records is for front-desk staff (identity vigilance)",
        )


def _chart_with_merge_problem(
    request: Request, actor: Any, patient_id: str, problem: str, status: int
) -> Response:
    context = chart_context(request, actor, patient_id)
    context["merge_problem"] = problem
    return render(request, "clinician/chart.html", context, status_code=status)


@router.post("/patients/{patient_id}/merge")
def propose_merge(
    request: Request,
    actor: WebActor,
    patient_id: str,
    duplicate_id: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Step 1: both records side by side (each read through the gate), to confirm the merge
    at the versions shown. Nothing is changed yet."""
    _desk_only(request, actor)
    gate = Gate(runtime_of(request), actor)
    duplicate_id = duplicate_id.strip()
    if duplicate_id == patient_id:
        return _chart_with_merge_problem(request, actor, patient_id, "name another record than this one", 400)
    if not reason.strip():
        return _chart_with_merge_problem(request, actor, patient_id, "say why these are one person", 400)
    kept = gate.read_patient(patient_id=patient_id)
    try:
        duplicate = gate.read_patient(patient_id=duplicate_id)
    except NotFound:
        return _chart_with_merge_problem(request, actor, patient_id, "no such record in your facility", 404)
    return render(
        request,
        "desk/merge.html",
        {"actor": actor, "kept": kept, "duplicate": duplicate, "reason": reason.strip()},
    )


@router.post("/patients/{patient_id}/merge/confirm")
def confirm_merge(
    request: Request,
    actor: WebActor,
    patient_id: str,
    duplicate_id: Annotated[str, Form(max_length=40)],
    duplicate_version: Annotated[int, Form()],
    expected_version: Annotated[int, Form()],
    reason: Annotated[str, Form(max_length=500)],
) -> Response:
    """Step 2: the merge, at the versions the clerk saw (a record changed since: nothing done)."""
    try:
        Gate(runtime_of(request), actor).merge_patients(
            source_id=duplicate_id,
            target_id=patient_id,
            source_version=duplicate_version,
            target_version=expected_version,
            reason=reason,
        )
    except Conflict as exc:
        return _chart_with_merge_problem(request, actor, patient_id, str(exc), 409)
    except InvalidInput as exc:
        return _chart_with_merge_problem(request, actor, patient_id, str(exc), 400)
    return redirect(f"/patients/{patient_id}")


# -- health cards -------------------------------------------------------------------------
@router.post("/patients/{patient_id}/card-readings")
def record_card_reading(
    request: Request,
    actor: WebActor,
    patient_id: str,
    card_serial: Annotated[str, Form(max_length=20)],
    payer: Annotated[str, Form(max_length=200)],
    member_id: Annotated[str, Form(max_length=30)],
    rights_start: Annotated[str, Form(max_length=10)],
    rights_end: Annotated[str, Form(max_length=10)] = "",
    kind: Annotated[str, Form(max_length=3)] = "AMO",
) -> Response:
    draft = {
        "card_serial": card_serial,
        "payer": payer,
        "member_id": member_id,
        "rights_start": rights_start,
        "rights_end": rights_end,
        "kind": kind,
    }
    try:
        try:
            data = CardReadingInput(
                patient_id=patient_id,
                card_serial=card_serial.strip(),
                kind=kind,
                payer=payer.strip(),
                member_id=member_id.replace(" ", ""),
                rights_start=rights_start,  # pydantic parses the date
                rights_end=rights_end or None,
            )
        except ValidationError as exc:
            raise InvalidInput(_fields_message(exc)) from None
        Gate(runtime_of(request), actor).record_card_reading(data=data)
    except (InvalidInput, Conflict) as exc:
        return chart_again(
            request, actor, patient_id, "coverage", status=400, card_problem=str(exc), draft=draft
        )
    return redirect(f"/patients/{patient_id}#coverage")


def _fields_message(exc: ValidationError) -> str:
    names = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
    return "check these fields: " + ", ".join(names)


# -- billing ------------------------------------------------------------------------------
@router.get("/billing")
def billing(request: Request, actor: WebActor) -> Response:
    if Role.BILLING not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=AuditKind.PHI_LIST,
            resource_type="Invoice",
            reason="the billing pages are for billing staff",
        )
    return render(request, "desk/billing.html", {"actor": actor})


def _cents(amount: str) -> int:
    """A euro amount typed by a person (12, 12.5, 12,50) in cents; anything else is refused."""
    text = amount.strip().replace(",", ".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidInput("the amount must be a number of euros, e.g. 12.50") from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")):
        raise InvalidInput("the amount must be a number of euros, e.g. 12.50")
    return int(value * 100)


@router.post("/billing/invoices/{invoice_id}/payments")
def record_payment(
    request: Request,
    actor: WebActor,
    invoice_id: str,
    patient_id: Annotated[str, Form(max_length=40)],
    expected_version: Annotated[int, Form()],
    amount: Annotated[str, Form(max_length=20)],
    method: Annotated[str, Form(max_length=20)],
) -> Response:
    try:
        try:
            data = PaymentInput(
                invoice_id=invoice_id,
                expected_version=expected_version,
                amount_cents=_cents(amount),
                method=method,
            )
        except ValidationError as exc:
            raise InvalidInput(_fields_message(exc)) from None
        Gate(runtime_of(request), actor).record_payment(data=data)
    except (InvalidInput, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 400
        return chart_again(request, actor, patient_id, "invoices", status=status, pay_problem=str(exc))
    return redirect(f"/patients/{patient_id}#invoices")


ACCESS_LOG_EVENTS = 500  # audit events read for the portal's access log, grouped into accesses
INVOICE_FORM_LINES = 5  # rows of the chart's invoice form; more acts go in a second invoice


def _invoice_problem(
    request: Request,
    actor: WebActor,
    patient_id: str,
    exc: CarnetError,
    lines: list[tuple[str, str, str]] | None = None,
) -> Response:
    """The chart again, its invoices open, saying why nothing changed (the typed lines kept)."""
    return chart_again(
        request,
        actor,
        patient_id,
        "invoices",
        status=409 if isinstance(exc, Conflict) else 400,
        invoice_problem=str(exc),
        invoice_lines=lines or [],
    )


@router.post("/billing/invoices")
def issue_invoice(
    request: Request,
    actor: WebActor,
    patient_id: Annotated[str, Form(max_length=40)],
    code: Annotated[list[str], Form(max_length=INVOICE_FORM_LINES)],
    description: Annotated[list[str], Form(max_length=INVOICE_FORM_LINES)],
    amount: Annotated[list[str], Form(max_length=INVOICE_FORM_LINES)],
    draft: Annotated[str | None, Form(max_length=1)] = None,
) -> Response:
    """Issue an invoice (or keep a draft) from the chart's invoices section; blank rows are skipped."""
    typed = [
        (c.strip()[:20], d.strip()[:200], a.strip()[:20])
        for c, d, a in zip(code, description, amount, strict=False)
    ]
    try:
        rows = [row for row in typed if any(row)]
        if not rows:
            raise InvalidInput("an invoice needs at least one act: its code, what it is and its amount")
        if any(not all(row) for row in rows):
            raise InvalidInput("each act needs its code, what it is and its amount")
        try:
            data = InvoiceInput(
                patient_id=patient_id,
                lines=[InvoiceLineInput(code=c, description=d, amount_cents=_cents(a)) for c, d, a in rows],
                status="draft" if draft else "issued",
            )
        except ValidationError as exc:
            raise InvalidInput(_fields_message(exc)) from None
        Gate(runtime_of(request), actor).issue_invoice(data=data)
    except (InvalidInput, Conflict) as exc:
        return _invoice_problem(request, actor, patient_id, exc, typed)
    return redirect(f"/patients/{patient_id}#invoices")


@router.post("/billing/invoices/{invoice_id}/issue")
def finalize_invoice(
    request: Request,
    actor: WebActor,
    invoice_id: str,
    patient_id: Annotated[str, Form(max_length=40)],
    expected_version: Annotated[int, Form()],
) -> Response:
    try:
        Gate(runtime_of(request), actor).finalize_invoice(
            invoice_id=invoice_id, expected_version=expected_version
        )
    except (InvalidInput, Conflict) as exc:
        return _invoice_problem(request, actor, patient_id, exc)
    return redirect(f"/patients/{patient_id}#invoices")


@router.post("/billing/invoices/{invoice_id}/cancel")
def cancel_invoice(
    request: Request,
    actor: WebActor,
    invoice_id: str,
    patient_id: Annotated[str, Form(max_length=40)],
    expected_version: Annotated[int, Form()],
    reason: Annotated[str, Form(max_length=200)],
) -> Response:
    try:
        Gate(runtime_of(request), actor).cancel_invoice(
            invoice_id=invoice_id, expected_version=expected_version, reason=reason
        )
    except (InvalidInput, Conflict) as exc:
        return _invoice_problem(request, actor, patient_id, exc)
    return redirect(f"/patients/{patient_id}#invoices")


# -- administration -----------------------------------------------------------------------
@router.get("/admin")
def admin(request: Request, actor: WebActor, status: str = "pending") -> Response:
    return _admin_page(request, actor, status=status)


def _admin_page(
    request: Request,
    actor: WebActor,
    *,
    status: str = "pending",
    problem: str | None = None,
    draft: dict[str, str] | None = None,
    code: int = 200,
) -> Response:
    found = directory.list_directory(runtime_of(request), actor=actor, grant_status=status)
    return render(
        request,
        "admin/admin.html",
        {
            "actor": actor,
            "directory": found,
            "status": status,
            "grantable": GRANTABLE,
            "problem": problem,
            "draft": draft or {},
        },
        status_code=code,
    )


@router.post("/admin/accounts")
def open_account(
    request: Request,
    actor: Annotated[Actor, proven(Action.ACCOUNT_OPEN)],
    username: Annotated[str, Form(max_length=150)],
    display_name: Annotated[str, Form(max_length=200)],
    role: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)],
    facility_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """A new staff account; its first role waits for a second administrator. The first password
    and authenticator secret are shown once, on this response only (never stored in clear)."""
    draft = {"username": username, "display_name": display_name, "role": role, "facility_id": facility_id}
    try:
        created = accounts.create_staff_account(
            runtime_of(request),
            actor=actor,
            username=username,
            display_name=display_name,
            role=role,
            facility_id=facility_id or None,
            reason=reason,
        )
    except (InvalidInput, Conflict) as exc:
        return _admin_page(request, actor, problem=str(exc), draft=draft, code=400)
    return render(request, "admin/new_account.html", {"actor": actor, "created": created})


@router.post("/admin/grants")
def request_grant(
    request: Request,
    actor: Annotated[Actor, proven(Action.ROLE_GRANT_REQUEST)],
    account_id: Annotated[str, Form(max_length=40)],
    role: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)],
    facility_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    grants.request_role_grant(
        runtime_of(request),
        actor=actor,
        account_id=account_id,
        role=role,
        facility_id=facility_id or None,
        reason=reason,
    )
    return redirect("/admin#grants")


@router.post("/admin/grants/{grant_id}/approve")
def approve_grant(
    request: Request, actor: Annotated[Actor, proven(Action.ROLE_GRANT_APPROVE)], grant_id: str
) -> Response:
    grants.approve_role_grant(runtime_of(request), actor=actor, grant_id=grant_id)
    return redirect("/admin#grants")


@router.post("/admin/grants/{grant_id}/reject")
def reject_grant(
    request: Request, actor: WebActor, grant_id: str, reason: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    grants.reject_role_grant(runtime_of(request), actor=actor, grant_id=grant_id, reason=reason)
    return redirect("/admin#grants")


# -- patient portal -----------------------------------------------------------------------
@router.get("/portal")
def portal(request: Request, actor: WebActor) -> Response:
    if actor.patient_id is None:
        own_access_log(runtime_of(request), actor=actor)  # refuses, audited: not a patient's account
    gate = Gate(runtime_of(request), actor)
    pid = str(actor.patient_id)
    context: dict[str, Any] = {"actor": actor, "patient": gate.read_patient(patient_id=pid)}
    context["allergies"] = gate.list_allergies(patient_id=pid)
    context["prescriptions"] = gate.list_prescriptions(patient_id=pid)
    context["appointments"] = gate.list_appointments(patient_id=pid)
    return render(request, "portal/portal.html", context)


@router.get("/portal/access-log")
def portal_access_log(request: Request, actor: WebActor) -> Response:
    """Who opened my record, when and why (break-the-glass marked): loaded after the portal page
    (htmx), or a page of its own without scripts. The read itself is audited."""
    # Events, then one row per access: a chart opened reads several sections, each audited.
    entries = own_access_log(runtime_of(request), actor=actor, count=ACCESS_LOG_EVENTS)
    visits = group_visits(entries, own_account_id=actor.account_id, limit=100)
    template = (
        "portal/access_log.html" if request.headers.get("hx-request") else "portal/access_log_page.html"
    )
    return render(request, template, {"actor": actor, "access_log": visits})
