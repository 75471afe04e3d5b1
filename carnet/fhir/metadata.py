"""GET /fhir/metadata: a CapabilityStatement assembled from the installed modules' declarations,
so it lists only what carnet really serves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from carnet import __version__
from carnet.fhir.core import registry
from carnet.fhir.core.outcome import FHIR_JSON
from carnet.fhir.routes import MODULES

router = APIRouter(prefix="/fhir", tags=["fhir"])

# Each resource type served, with its interactions (its module's own, and those the shared
# machinery derives from them: carnet.fhir.core.registry.ResourceType.capabilities) and search
# parameters: the statement cannot claim more than the installed modules serve.
TYPES: dict[str, registry.ResourceType] = {t.name: t for module in MODULES for t in module.types}
# The same, as plain data (what tests and tools read): every interaction served, as declared.
SUPPORTED: dict[str, dict[str, Any]] = {
    name: {
        "interactions": list(t.capabilities),
        "search": dict(t.search),
        "conditionalCreate": t.creates_conditionally,
        "searchInclude": t.search_include,
        "searchRevInclude": t.search_revinclude,
    }
    for name, t in TYPES.items()
}
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
        "conditionalCreate": rtype.creates_conditionally,
        "conditionalRead": "full-support" if "read" in codes else "not-supported",
        "conditionalUpdate": rtype.conditional_update,
        "conditionalDelete": "single" if rtype.conditional_delete else "not-supported",
    }
    if rtype.search_include:
        entry["searchInclude"] = rtype.search_include
    if rtype.search_revinclude:
        entry["searchRevInclude"] = rtype.search_revinclude
    if rtype.validates:
        entry["operation"] = [{"name": "validate", "definition": VALIDATE_DEFINITION}]
    return entry


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
    resources = [_resource(rtype) for _name, rtype in sorted(TYPES.items())]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        # FHIR Bulk Data (carnet.fhir.operations.export): kick-offs wait for a second person.
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "carnet", "version": __version__},
        "implementation": {"description": "carnet electronic patient record"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
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


# == the conformance table of docs/FHIR.md, generated from the statement =======================
TABLE_START = "<!-- conformance-table: generated by `carnet fhir conformance-table --write`; do not edit -->"
TABLE_END = "<!-- /conformance-table -->"
_COLUMNS = (
    ("read", "read"),
    ("vread", "vread"),
    ("update", "update"),
    ("patch", "patch"),
    ("delete", "delete"),
    ("history-instance", "history (instance)"),
    ("history-type", "history (type)"),
    ("create", "create"),
    ("search-type", "search"),
)
_FLAGS = ("conditional create", "conditional update", "conditional delete", "$validate")


def conformance_table(statement: dict[str, Any] | None = None) -> str:
    """The interaction × resource table, in Markdown, of what the CapabilityStatement declares."""
    rest = (statement or capability_statement())["rest"][0]
    header = ["resource", *(label for _, label in _COLUMNS), *_FLAGS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for resource in rest["resource"]:
        codes = {i["code"] for i in resource["interaction"]}
        flags = (
            resource.get("conditionalCreate") is True,
            resource.get("conditionalUpdate") is True,
            resource.get("conditionalDelete") in ("single", "multiple"),
            any(o["name"] == "validate" for o in resource.get("operation", [])),
        )
        cells = ["yes" if code in codes else "" for code, _ in _COLUMNS] + ["yes" if f else "" for f in flags]
        lines.append("| " + " | ".join([resource["type"], *cells]) + " |")
    system = ", ".join(sorted(i["code"] for i in rest["interaction"]))
    operations = ", ".join(f"`${o['name']}`" for o in rest["operation"])
    lines += ["", f"System interactions: {system}. Operations: {operations}."]
    return "\n".join(lines)


def with_table(document: str, table: str) -> str:
    """`document` with the text between the table markers replaced by `table`."""
    start = document.index(TABLE_START) + len(TABLE_START)
    end = document.index(TABLE_END)
    return document[:start] + "\n" + table + "\n" + document[end:]


def table_in(document: str) -> str:
    """The table as it stands in `document`, between its markers."""
    start = document.index(TABLE_START) + len(TABLE_START)
    return document[start : document.index(TABLE_END)].strip("\n")
