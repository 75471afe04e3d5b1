"""Search parameters every chart section shares: the one patient a search is about (no
browsing across patients), date criteria with prefixes, and token values."""

from __future__ import annotations

import datetime as dt

from fastapi import Request

from carnet.fhir.core.api import reference_id
from carnet.kernel.errors import InvalidInput


def patient_of(request: Request, allowed: set[str], subject: str = "patient") -> str:
    """The one patient a search is about; unknown parameters are refused (fail closed)."""
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed - {"_count", "_page", "_format", subject, "subject"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    value = params.get(subject) or params.get("subject")
    patient = reference_id(value, "Patient")
    if patient is None:
        raise InvalidInput(f"a search needs {subject}=Patient/<id>: there is no browsing across patients")
    return patient


def date_matches(value: dt.datetime | None, criteria: list[str]) -> bool:
    if value is None:
        return False
    day = value.date()
    for raw in criteria:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", raw)
        try:
            wanted = dt.date.fromisoformat(text[:10])
        except ValueError:
            raise InvalidInput("date must be YYYY-MM-DD with an optional eq/ge/le/gt/lt prefix") from None
        ok = {
            "eq": day == wanted,
            "ge": day >= wanted,
            "le": day <= wanted,
            "gt": day > wanted,
            "lt": day < wanted,
        }[prefix]
        if not ok:
            return False
    return True


def tokens(raw: str | None) -> list[str] | None:
    """A token search value (`a,b`, each `system|code` or `code`) as its codes."""
    if raw is None:
        return None
    return [c.rpartition("|")[2] for c in raw.split(",")]
