"""Lab orders in the clinician's chart: the orders section (each order, its status and the
results that answer it) and the physician's form to order a test or cancel an order. Every
read and write goes through the gate (carnet.phi.gate.Gate): a nurse reads the orders, only a
physician in the patient's care orders, and every refusal is the gate's, audited."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.identity.dependencies import runtime_of
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.phi.gate import Gate
from carnet.phi.schemas import (
    ORDER_PRIORITIES,
    DiagnosticReportView,
    ObservationView,
    ServiceRequestInput,
    ServiceRequestView,
)
from carnet.records import results
from carnet.web.clinician import chart_context
from carnet.web.rendering import language_of, render
from carnet.web.routing import WebActor, WebRoute, redirect

router = APIRouter(route_class=WebRoute, include_in_schema=False)
EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class LabTest:
    """A test a physician may order from the chart: its LOINC code and its names."""

    code: str
    en: str
    fr: str

    def name(self, language: str) -> str:
        return self.fr if language.startswith("fr") else self.en


# The common hospital lab tests (LOINC), as French laboratories name them.
LAB_TESTS: tuple[LabTest, ...] = (
    LabTest("58410-2", "Complete blood count", "Numération formule sanguine (NFS)"),
    LabTest("24326-1", "Electrolytes panel", "Ionogramme sanguin"),
    LabTest("2823-3", "Potassium", "Kaliémie"),
    LabTest("2160-0", "Creatinine", "Créatininémie"),
    LabTest("2345-7", "Glucose", "Glycémie"),
    LabTest("4548-4", "Haemoglobin A1c", "Hémoglobine glyquée (HbA1c)"),
    LabTest("1988-5", "C-reactive protein", "Protéine C réactive (CRP)"),
    LabTest("24331-1", "Lipid panel", "Bilan lipidique"),
    LabTest("24325-3", "Liver function panel", "Bilan hépatique"),
    LabTest("6301-6", "INR", "INR"),
    LabTest("3016-3", "TSH", "TSH"),
    LabTest("10839-9", "Troponin I", "Troponine I"),
)
_BY_CODE = {t.code: t for t in LAB_TESTS}
# The form's own refusals, worded in the template (in the reader's language).
UNKNOWN_TEST = "unknown-test"
UNKNOWN_PRIORITY = "unknown-priority"


@dataclasses.dataclass(frozen=True)
class OrderLine:
    """One order as the section shows it, with the results that answer it."""

    order: ServiceRequestView
    report_status: str  # the latest report's status, "" while no result arrived
    rows: tuple[results.ResultRow, ...]


def order_lines(
    orders: list[ServiceRequestView],
    observations: list[ObservationView],
    reports: list[DiagnosticReportView],
) -> list[OrderLine]:
    """Each order with its results: those of the reports based on it, then any result based on
    it in no such report (pure: over the gate's redacted views)."""
    by_id = {o.id: o for o in observations}
    lines = []
    for order in orders:
        answering = [r for r in reports if r.order_id == order.id]
        shown: list[str] = [i for r in answering for i in r.result_ids or () if i in by_id]
        shown += [o.id for o in observations if o.order_id == order.id and o.id not in shown]
        kept = [by_id[i] for i in dict.fromkeys(shown) if by_id[i].status != "entered-in-error"]
        rows = tuple(results.result_row(o) for o in kept)
        latest = max(answering, key=lambda r: r.issued_at or EARLIEST, default=None)
        lines.append(OrderLine(order, (latest.status or "") if latest is not None else "", rows))
    return lines


def gate_of(request: Request, actor: Actor) -> Gate:
    return Gate(runtime_of(request), actor)


def orders_context(request: Request, actor: Actor, patient_id: str) -> dict[str, Any]:
    """The section's data: the orders (one audited read) and, when there are any, the results
    that may answer them (the results section's two audited reads)."""
    gate = gate_of(request, actor)
    orders = gate.list_orders(patient_id=patient_id)
    observations = gate.list_observations(patient_id=patient_id) if orders else []
    reports = gate.list_diagnostic_reports(patient_id=patient_id) if orders else []
    language = language_of(request)
    return {
        "actor": actor,
        "patient": {"id": patient_id},
        "name": "orders",
        "order_lines": order_lines(orders, observations, reports),
        "lab_tests": [(t.code, t.name(language)) for t in LAB_TESTS],
        "priorities": ORDER_PRIORITIES,
        "may_order": Role.PHYSICIAN in actor.roles,
        "order_problem": None,
        "order_draft": {},
    }


def _section(request: Request, context: dict[str, Any], *, status: int = 200) -> Response:
    if bool(request.headers.get("hx-request")) and status == 200:
        return render(request, "clinician/sections/orders.html", context, status_code=status)
    # A page of its own carries the patient's banner, like the chart.
    banner = chart_context(request, context["actor"], context["patient"]["id"])
    context = banner | context | {"patient": banner["patient"]}
    return render(request, "clinician/section_page.html", context, status_code=status)


@router.get("/patients/{patient_id}/sections/orders")
def orders_section(request: Request, actor: WebActor, patient_id: str) -> Response:
    """The chart's lab orders: an htmx fragment, or a page of its own without scripts."""
    return _section(request, orders_context(request, actor, patient_id))


@router.post("/patients/{patient_id}/orders")
def order_test(
    request: Request,
    actor: WebActor,
    patient_id: str,
    code: Annotated[str, Form(max_length=20)] = "",
    priority: Annotated[str, Form(max_length=10)] = "routine",
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Order a lab test (a physician in the patient's care: the gate decides and audits). Bad
    input is shown in the form, which keeps what was typed; nothing is written."""
    draft = {"code": code, "priority": priority, "note": note}
    try:
        test = _BY_CODE.get(code.strip())
        if test is None:
            raise InvalidInput(UNKNOWN_TEST)
        if priority not in ORDER_PRIORITIES:
            raise InvalidInput(UNKNOWN_PRIORITY)
        data = ServiceRequestInput(
            patient_id=patient_id,
            code=test.code,
            display=test.name(language_of(request)),
            priority=priority,
            note=note.strip() or None,
        )
        gate_of(request, actor).order_test(data=data)
    except (InvalidInput, Conflict) as exc:
        return _again(request, actor, patient_id, exc, draft)
    return redirect(f"/patients/{patient_id}#orders")


@router.post("/patients/{patient_id}/orders/{order_id}/cancel")
def cancel_order(
    request: Request,
    actor: WebActor,
    patient_id: str,
    order_id: str,
    expected_version: Annotated[int, Form()],
) -> Response:
    """Cancel an order not yet answered (kept, shown as cancelled)."""
    try:
        gate_of(request, actor).revoke_order(order_id=order_id, expected_version=expected_version)
    except (InvalidInput, Conflict) as exc:
        return _again(request, actor, patient_id, exc, {})
    return redirect(f"/patients/{patient_id}#orders")


def _again(
    request: Request, actor: Actor, patient_id: str, exc: InvalidInput | Conflict, draft: dict[str, str]
) -> Response:
    context = orders_context(request, actor, patient_id)
    context |= {"order_problem": str(exc), "order_draft": draft}
    return _section(request, context, status=409 if isinstance(exc, Conflict) else 400)
