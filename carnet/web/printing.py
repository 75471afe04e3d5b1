"""Printing: a prescription, an invoice, a payment's receipt, a stay's discharge letter as PDF.

Each is a POST with the page's CSRF token (a print makes a new, audited document: another site
cannot make a signed-in browser print), answered with the PDF the gate rendered, watermarked
with who printed it, when and its document id. The gate decides who may print what."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carnet.access.actor import Actor
from carnet.identity.dependencies import runtime_of
from carnet.phi.gate import Gate
from carnet.printing import PrintedDocument
from carnet.web.rendering import SECURITY_HEADERS, language_of
from carnet.web.routing import WebActor, WebRoute

router = APIRouter(route_class=WebRoute, include_in_schema=False)


def _gate(request: Request, actor: Actor) -> Gate:
    return Gate(runtime_of(request), actor)


def pdf_response(document: PrintedDocument) -> Response:
    headers = dict(SECURITY_HEADERS)
    headers["Content-Disposition"] = f'inline; filename="{document.filename}"'
    headers["X-Carnet-Document"] = document.document_id
    return Response(content=document.pdf, media_type=document.media_type, headers=headers)


@router.post("/print/prescriptions/{prescription_id}")
def print_prescription(request: Request, actor: WebActor, prescription_id: str) -> Response:
    return pdf_response(
        _gate(request, actor).print_prescription(
            prescription_id=prescription_id, language=language_of(request)
        )
    )


@router.post("/print/invoices/{invoice_id}")
def print_invoice(request: Request, actor: WebActor, invoice_id: str) -> Response:
    return pdf_response(
        _gate(request, actor).print_invoice(invoice_id=invoice_id, language=language_of(request))
    )


@router.post("/print/payments/{payment_id}")
def print_receipt(request: Request, actor: WebActor, payment_id: str) -> Response:
    return pdf_response(
        _gate(request, actor).print_receipt(payment_id=payment_id, language=language_of(request))
    )


@router.post("/print/stays/{encounter_id}")
def print_discharge_letter(request: Request, actor: WebActor, encounter_id: str) -> Response:
    return pdf_response(
        _gate(request, actor).print_discharge_letter(encounter_id=encounter_id, language=language_of(request))
    )
