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
