"""A cheap first check of what leaves, on the hottest types: the shape carnet's own mapper
writes, as a JSON Schema compiled once (jsonschema_rs).

`checked` (carnet.fhir.core.api) validates every answer against its fhir.resources R4B model,
so a mapping bug fails closed; that costs about a millisecond per Patient. The schema here
describes only what `patient_to_fhir` writes — each element typed and patterned at least as
strictly as FHIR R4 (ids, codes, dates, instants, non-blank strings, no unknown element) — so a
resource it accepts is one the R4B model accepts too; anything else (a new element, an odd
value) goes on to the full validation, which decides. tests/fhir/test_shapes.py checks both
directions on every Patient of a seeded hospital and on broken ones.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs

# FHIR R4 primitive patterns (http://hl7.org/fhir/R4/datatypes.html), anchored; strings are
# non-blank with no surrounding whitespace (stricter than FHIR's, on purpose).
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"}
_STRING = {"type": "string", "pattern": r"^\S([\s\S]*\S)?$", "maxLength": 1048576}
_CODE = {"type": "string", "pattern": r"^[^\s]+( [^\s]+)*$"}
_URI = {"type": "string", "pattern": r"^\S+$"}
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_DATE = {"type": "string", "pattern": rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])$"}
_INSTANT = {
    "type": "string",
    "pattern": (
        rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:"
        r"([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$"
    ),
}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        "minProperties": 1,
    }


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": 1}


def _reference(resource_type: str) -> dict[str, Any]:
    return _object(
        {"reference": {"type": "string", "pattern": rf"^{resource_type}/[A-Za-z0-9\-\.]{{1,64}}$"}}
    )


PATIENT_SCHEMA: dict[str, Any] = _object(
    {
        "resourceType": {"const": "Patient"},
        "id": _ID,
        "meta": _object({"versionId": _ID, "lastUpdated": _INSTANT}),
        "extension": _list(
            _object({"url": _URI, "valueBoolean": {"type": "boolean"}}, ("url", "valueBoolean"))
        ),
        "identifier": _list(_object({"system": _URI, "value": _STRING})),
        "active": {"type": "boolean"},
        "name": _list(_object({"use": {"enum": ["official"]}, "family": _STRING, "given": _list(_STRING)})),
        "telecom": _list(
            _object({"system": {"enum": ["phone", "email"]}, "value": _STRING}, ("system", "value"))
        ),
        "gender": {"enum": ["male", "female", "other", "unknown"]},
        "birthDate": _DATE,
        "address": _list(
            _object({"line": _list(_STRING), "city": _STRING, "postalCode": _STRING, "country": _STRING})
        ),
        "generalPractitioner": _list(_reference("Practitioner")),
        "managingOrganization": _reference("Organization"),
        "link": _list(
            _object(
                {"other": _reference("Patient"), "type": {"enum": ["replaced-by", "replaces"]}},
                ("other", "type"),
            )
        ),
    },
    ("resourceType",),
)

_PATIENT = jsonschema_rs.validator_for(PATIENT_SCHEMA)


def patient_ok(resource: dict[str, Any]) -> bool:
    """The Patient has the shape carnet's mapper writes (then it is valid R4: no need to ask the
    R4B model). False means only "ask the full validation"."""
    try:
        return bool(_PATIENT.is_valid(resource))
    except Exception:
        return False
