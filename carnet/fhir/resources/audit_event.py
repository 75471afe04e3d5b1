"""FHIR AuditEvent: the audit trail for security officers (carnet.audit.fhir mapping, BALP);
for a patient, their own access log (who opened my record, when, why), nothing else."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.auditevent import AuditEvent

from carnet.access.actor import ActorKind
from carnet.audit.access_log import AccessLogEntry
from carnet.audit.search import own_access_log, search_events
from carnet.fhir.core.api import checked, count_param, page_param, reference_id
from carnet.fhir.core.bundles import searchset
from carnet.fhir.core.registry import FhirModule, ResourceType
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import InvalidInput
from carnet.kernel.ids import parse_id

router = APIRouter(prefix="/fhir", tags=["fhir"])
_ALLOWED = {"patient", "date", "subtype", "_count", "_page", "_format"}


@router.get("/AuditEvent")
def search_audit_events(request: Request) -> Response:
    actor = current_actor(request)
    require_scope(actor, resource_type="AuditEvent", action="search")
    runtime = runtime_of(request)
    params = request.query_params
    unknown = sorted(set(params) - _ALLOWED)
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    count = count_param(request, default=50)
    if actor.kind == ActorKind.PATIENT:
        entries = own_access_log(runtime, actor=actor, count=count)
        resources = [_access_entry(e) for e in entries]
        return searchset(request, "AuditEvent", resources, page=1, has_more=False)
    page = page_param(request)
    patient = reference_id(params.get("patient"), "Patient")
    patient_id = parse_id(patient) if patient else None
    if patient is not None and patient_id is None:
        raise InvalidInput("patient must be Patient/<id>")
    since = None
    if params.get("date"):
        raw = params["date"].removeprefix("ge")
        try:
            since = dt.datetime.fromisoformat(raw if "T" in raw else raw + "T00:00:00+00:00")
        except ValueError:
            raise InvalidInput("date must be ge<YYYY-MM-DD> or a date-time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    subtype = params.get("subtype")
    events, has_more = search_events(
        runtime,
        actor=actor,
        patient_id=patient_id,
        since=since,
        kind=subtype.rpartition("|")[2] if subtype else None,
        count=count,
        page=page,
    )
    return searchset(request, "AuditEvent", events, page=page, has_more=has_more)


def _access_entry(e: AccessLogEntry) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(e.seq),
        "type": {"system": "urn:carnet:audit-kind", "code": e.kind, "display": e.action},
        "recorded": e.at.isoformat(),
        "outcome": {"success": "0", "denied": "4"}.get(e.outcome, "8"),
        "purposeOfEvent": [{"text": e.purpose_of_use}],
        "agent": [
            {
                "who": {"display": e.who},
                "role": [{"text": r} for r in e.roles],
                "requestor": True,
                **({"purposeOfUse": [{"text": "break-the-glass"}]} if e.break_glass else {}),
            }
        ],
        "source": {"observer": {"display": "carnet"}},
        "entity": [{"what": {"display": e.resource_type or "record"}}],
    }
    if e.break_glass_reason:
        resource["outcomeDesc"] = f"break-the-glass: {e.break_glass_reason}"
    return checked(AuditEvent, resource)


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            "AuditEvent", ("search-type",), {"patient": "reference", "date": "date", "subtype": "token"}
        ),
    ),
)
