"""FHIR DocumentReference: clinical notes, through the gate. Searched by patient, read, written
(create) and amended (update, If-Match, with a reason: extension amendment-reason); every
earlier version stays readable by vread and `_history`."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.documentreference import DocumentReference

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
    EXT,
    LOINC,
    clean,
    extension_text,
    meta,
    ref,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, string, token
from carnet.kernel.errors import InvalidInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
NOTE = "DocumentReference"


AMENDMENT_REASON = EXT + "amendment-reason"


# == mapping ===================================================================================
def note_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    versions = d.get("versions") or []
    latest = versions[-1] if versions else None
    content = [
        {"attachment": {"contentType": "text/plain; charset=utf-8", "title": d.get("title") or "note"}}
    ]
    if latest is not None:
        text = latest["text"] if isinstance(latest, dict) else latest.text
        content[0]["attachment"]["data"] = base64.b64encode(text.encode()).decode()
    version = int(d.get("version_id") or 1)
    resource = clean(
        {
            "resourceType": "DocumentReference",
            "id": d["id"],
            "meta": meta(d),
            "status": "entered-in-error" if d.get("status") == "entered-in-error" else "current",
            "docStatus": "amended" if version > 1 else "final",
            "type": {"coding": [{"system": LOINC, "code": d["kind"]}]} if d.get("kind") else None,
            "description": d.get("title"),
            "subject": ref("Patient", d.get("patient_id")),
            "author": [ref("Practitioner", d["author_id"])] if d.get("author_id") else None,
            "context": {"encounter": [ref("Encounter", d["encounter_id"])]}
            if d.get("encounter_id")
            else None,
            "content": content,
        }
    )
    return checked(DocumentReference, resource)


def note_text(body: dict[str, Any]) -> str:
    for item in body.get("content") or []:
        data = (item.get("attachment") or {}).get("data")
        if data:
            try:
                return base64.b64decode(data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidInput("content.attachment.data must be base64 of UTF-8 text") from None
    raise InvalidInput("a DocumentReference needs content.attachment.data (the note's text)")


def note_fields(body: dict[str, Any]) -> dict[str, Any]:
    subject = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if subject is None:
        raise InvalidInput("a DocumentReference needs a subject (Patient)")
    codings = (body.get("type") or {}).get("coding") or []
    kind = next((c.get("code") for c in codings if c.get("code")), None)
    title = body.get("description") or next(
        (
            i.get("attachment", {}).get("title")
            for i in body.get("content") or []
            if i.get("attachment", {}).get("title")
        ),
        None,
    )
    if not kind or not title:
        raise InvalidInput("a DocumentReference needs type.coding (LOINC) and a description (its title)")
    encounters = (body.get("context") or {}).get("encounter") or []
    encounter = reference_id(encounters[0].get("reference"), "Encounter") if encounters else None
    return {
        "patient_id": subject,
        "kind": kind,
        "title": title,
        "text": note_text(body),
        "encounter_id": encounter,
    }


# == routes ====================================================================================
SEARCH = Search(
    NOTE,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "type": token("type"),
        "date": date("date"),
        "description": string("description"),
        "author": reference("author", target="Practitioner"),
        "encounter": reference("context.encounter", target="Encounter"),
    },
    fetch=chart_section("list_notes", note_to_fhir),
    read=one_record("read_note", "note_id", note_to_fhir),
    includes=("subject", "patient", "encounter"),
)


@router.get("/DocumentReference")
def search_notes(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/DocumentReference")
def create_note(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, NOTE, "create")
    resource = validated(DocumentReference, body, NOTE)
    view = gate.write_note(**note_fields(resource))
    return resource_response(request, note_to_fhir(view.model_dump()), status=201)


@router.get("/DocumentReference/{note_id}")
def read_note(request: Request, note_id: str) -> Response:
    gate = gate_for(request, NOTE, "read")
    view = gate.read_note(note_id=note_id)
    return resource_response(request, note_to_fhir(view.model_dump()))


@router.put("/DocumentReference/{note_id}")
def amend_note(request: Request, note_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """An amendment: a new version of the text, with a reason (extension amendment-reason);
    every earlier version stays readable in _history."""
    gate = gate_for(request, NOTE, "update")
    resource = validated(DocumentReference, body, NOTE)
    if resource.get("id") != note_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    reason = extension_text(resource, AMENDMENT_REASON)
    if not reason:
        raise InvalidInput(f"an amendment needs a reason (extension {AMENDMENT_REASON})")
    view = gate.amend_note(note_id=note_id, expected_version=version, text=note_text(resource), reason=reason)
    return resource_response(request, note_to_fhir(view.model_dump()))


@router.get("/DocumentReference/{note_id}/_history")
def note_history(request: Request, note_id: str) -> Response:
    return history_response(request, NOTE, note_id, note_to_fhir)


@router.get("/DocumentReference/{note_id}/_history/{version_id}")
def vread_note(request: Request, note_id: str, version_id: str) -> Response:
    return vread_response(request, NOTE, note_id, version_id, note_to_fhir)


# == in a Bundle, and the declaration ==========================================================
def note_change(r: dict[str, Any], rid: str, version: int) -> tuple[str, dict[str, Any]]:
    reason = extension_text(r, AMENDMENT_REASON)
    if not reason:
        raise InvalidInput(f"an amendment needs a reason (extension {AMENDMENT_REASON})")
    return "amend_note", {
        "note_id": rid,
        "expected_version": version,
        "text": note_text(r),
        "reason": reason,
    }


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            NOTE,
            ("read", "vread", "history-instance", "search-type", "create", "update"),
            searcher=SEARCH,
            writes=Writes(
                DocumentReference,
                note_to_fhir,
                creates="write_note",
                create=lambda r, g, m: ("write_note", note_fields(r)),
                updates="amend_note",
                update=note_change,
            ),
        ),
    ),
)
