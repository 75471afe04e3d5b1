"""What the resource mappers share: meta, references, dates, extensions, the code systems of
more than one resource type, and the gate's input schemas built with a clear error.

Mappers take plain dicts (a view's `model_dump()` or a stored version's snapshot) so a read,
a vread and a history entry render the same way. Fields the gate redacted are None and are
left out. Every resource is validated against its fhir.resources R4B model before it leaves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from carnet.fhir.core.api import instant
from carnet.kernel.errors import InvalidInput

LOINC = "http://loinc.org"
ATC_SYSTEM = "http://www.whocc.no/atc"
EXT = "https://carnet.example.org/fhir/StructureDefinition/"


def meta(d: dict[str, Any]) -> dict[str, Any]:
    """meta.versionId, and meta.lastUpdated when the view carries the record's last change."""
    out = {"versionId": str(d.get("version_id") or 1)}
    updated = when(d.get("updated_at"))
    if updated is not None:
        out["lastUpdated"] = updated
    return out


def as_received(d: dict[str, Any]) -> dict[str, Any] | None:
    """The resource as it was received (kept whole by the gate, references already carnet's),
    with the server's id and meta; None when there is none or the reader may not see it all."""
    received = d.get("received")
    if not received:
        return None
    resource = {"resourceType": received.get("resourceType"), "id": d["id"]}
    resource.update({k: v for k, v in received.items() if k not in ("resourceType", "id")})
    resource["meta"] = {**(received.get("meta") or {}), **meta(d)}
    if d.get("patient_id") and isinstance(resource.get("subject"), dict):
        # The patient the record belongs to now (a merge moves records to the record kept).
        resource["subject"] = {**resource["subject"], "reference": f"Patient/{d['patient_id']}"}
    return resource


def received_instant(value: Any, element: str) -> dt.datetime:
    """A FHIR date or dateTime as the instant a column sorts by: a date (or a year, a month) is
    its first moment in UTC; the resource keeps the value as sent. Naming the element if not."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{element} is required")
    text = value.replace("Z", "+00:00")
    try:
        if "T" not in text:
            year, month, day = [*(int(p) for p in text.split("-")), 1, 1][:3]
            return dt.datetime(year, month, day, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise InvalidInput(f"{element} must be a FHIR date or dateTime") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{element} must carry a time zone")
    return parsed.astimezone(dt.UTC)


def ref(resource_type: str, value: Any) -> dict[str, str] | None:
    return {"reference": f"{resource_type}/{value}"} if value else None


def clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v not in (None, [], {})}


def when(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return instant(value)
    return instant(dt.datetime.fromisoformat(str(value)))


def schema_input(schema: Any, values: dict[str, Any], what: str) -> Any:
    """The gate's input schema built from mapped values; a refusal names the fields, never
    their values."""
    try:
        return schema(**values)
    except ValidationError as exc:
        places = sorted({".".join(str(p) for p in err.get("loc", ())) or what for err in exc.errors()})
        raise InvalidInput(f"invalid {what}: check " + ", ".join(places)) from None


def extension_text(body: dict[str, Any], url: str) -> str | None:
    for ext in body.get("extension") or []:
        if ext.get("url") == url and isinstance(ext.get("valueString"), str):
            value: str = ext["valueString"]
            return value
    return None


# The reason a DELETE records where the gate asks for one (a cancelled appointment or invoice).
DELETED_REASON = "deleted through the FHIR API"
