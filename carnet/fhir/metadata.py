"""GET /fhir/metadata: a CapabilityStatement assembled from the installed modules' declarations,
so it lists only what carnet really serves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from carnet import __version__
from carnet.fhir.core.outcome import FHIR_JSON
from carnet.fhir.routes import MODULES

router = APIRouter(prefix="/fhir", tags=["fhir"])

# Each resource type served, with its interactions and search parameters, as its module
# declares it: the statement cannot claim more than the installed modules serve.
SUPPORTED: dict[str, dict[str, Any]] = {
    t.name: {
        "interactions": list(t.interactions),
        "search": dict(t.search),
        "conditionalCreate": t.conditional_create,
        "searchInclude": t.search_include,
        "searchRevInclude": t.search_revinclude,
    }
    for module in MODULES
    for t in module.types
}
# Whole-system interactions (transaction, batch) and operations ($everything), declared the same way.
SYSTEM_INTERACTIONS: list[str] = [code for module in MODULES for code in module.system_interactions]
OPERATIONS: dict[str, str] = {n: d for module in MODULES for n, d in module.operations.items()}


def capability_statement() -> dict[str, Any]:
    resources = [
        {
            "type": rtype,
            "interaction": [{"code": code} for code in spec.get("interactions", [])],
            "searchParam": [{"name": n, "type": t} for n, t in spec.get("search", {}).items()],
            "versioning": "versioned",
            # Only the types whose versions are kept answer vread and _history.
            "readHistory": "vread" in spec.get("interactions", []),
            "conditionalCreate": bool(spec.get("conditionalCreate")),
            **({"searchInclude": spec["searchInclude"]} if spec.get("searchInclude") else {}),
            **({"searchRevInclude": spec["searchRevInclude"]} if spec.get("searchRevInclude") else {}),
        }
        for rtype, spec in sorted(SUPPORTED.items())
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "carnet", "version": __version__},
        "implementation": {"description": "carnet electronic patient record"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Every request needs a session or OAuth 2 token; access is scoped by care "
                    "relationship and audited.",
                },
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "operation": [{"name": n, "definition": d} for n, d in sorted(OPERATIONS.items())],
            }
        ],
    }


@router.get("/metadata")
def metadata() -> JSONResponse:
    return JSONResponse(capability_statement(), media_type=FHIR_JSON)
