"""GET /fhir/metadata: a CapabilityStatement assembled from the installed modules' declarations,
so it lists only what carnet really serves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from carnet import __version__
from carnet.fhir.core import registry
from carnet.fhir.core.outcome import FHIR_JSON
from carnet.fhir.routes import MODULES

router = APIRouter(prefix="/fhir", tags=["fhir"])

# Each resource type served, with its interactions (its module's own, and those the shared
# machinery derives from them: carnet.fhir.core.registry.ResourceType.capabilities) and search
# parameters: the statement cannot claim more than the installed modules serve.
SUPPORTED: dict[str, registry.ResourceType] = {t.name: t for module in MODULES for t in module.types}
# Whole-system interactions (transaction, batch, history-system) and operations, declared the same way.
SYSTEM_INTERACTIONS: list[str] = [code for module in MODULES for code in module.system_interactions]
OPERATIONS: dict[str, str] = {n: d for module in MODULES for n, d in module.operations.items()}
VALIDATE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"


def _resource(rtype: registry.ResourceType) -> dict[str, Any]:
    codes = rtype.capabilities
    entry: dict[str, Any] = {
        "type": rtype.name,
        "interaction": [{"code": code} for code in codes],
        "searchParam": [{"name": n, "type": t} for n, t in rtype.search.items()],
        "versioning": "versioned",
        # Only the types whose versions are kept answer vread and _history.
        "readHistory": "vread" in codes,
        "updateCreate": False,  # carnet assigns ids: a PUT to an unknown id is refused
        "conditionalCreate": rtype.conditional_create,
        "conditionalRead": "full-support" if "read" in codes else "not-supported",
        "conditionalUpdate": rtype.conditional_update,
        "conditionalDelete": "single" if rtype.conditional_delete else "not-supported",
    }
    if rtype.validates:
        entry["operation"] = [{"name": "validate", "definition": VALIDATE_DEFINITION}]
    return entry


def capability_statement() -> dict[str, Any]:
    resources = [_resource(rtype) for _name, rtype in sorted(SUPPORTED.items())]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "carnet", "version": __version__},
        "implementation": {"description": "carnet electronic patient record"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
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
