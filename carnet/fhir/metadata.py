"""GET /fhir/metadata: a CapabilityStatement assembled from the installed modules' declarations,
so it lists only what carnet really serves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
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
    }
    for module in MODULES
    for t in module.types
}
# Whole-system interactions (transaction, batch) and operations ($everything), declared the same way.
SYSTEM_INTERACTIONS: list[str] = [code for module in MODULES for code in module.system_interactions]
OPERATIONS: dict[str, str] = {n: d for module in MODULES for n, d in module.operations.items()}


SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _smart_security(origin: str | None) -> list[dict[str, Any]]:
    """SMART's endpoints as the CapabilityStatement extension v1 clients read (discovery at
    /.well-known/smart-configuration says the same, and more)."""
    if not origin:
        return []
    base = origin.rstrip("/")
    return [
        {
            "url": SMART_OAUTH_URIS,
            "extension": [
                {"url": "authorize", "valueUri": base + "/oauth/authorize"},
                {"url": "token", "valueUri": base + "/oauth/token"},
                {"url": "revoke", "valueUri": base + "/oauth/revoke"},
            ],
        }
    ]


def capability_statement(origin: str | None = None) -> dict[str, Any]:
    resources = [
        {
            "type": rtype,
            "interaction": [{"code": code} for code in spec.get("interactions", [])],
            "searchParam": [{"name": n, "type": t} for n, t in spec.get("search", {}).items()],
            "versioning": "versioned",
            # Only the types whose versions are kept answer vread and _history.
            "readHistory": "vread" in spec.get("interactions", []),
            "conditionalCreate": bool(spec.get("conditionalCreate")),
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
                    # CORS for registered SMART apps' origins only (carnet.identity.cors).
                    "cors": True,
                    **({"extension": _smart_security(origin)} if origin else {}),
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
def metadata(request: Request) -> JSONResponse:
    origin = request.app.state.runtime.settings.origin
    return JSONResponse(capability_statement(origin), media_type=FHIR_JSON)
