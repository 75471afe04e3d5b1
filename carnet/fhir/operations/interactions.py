"""The R4 interactions every resource type gets from what its module declares, on top of the
routes the module serves itself (carnet.fhir.core.registry: `ResourceType.capabilities`):

    POST   [type] + If-None-Exist conditional create: the search, then the type's own create
                                  (no match), the match (one, 200) or 412 (several)
    PUT    [type]?[search]        conditional update: the search, then the type's own update
                                  (one match), create (no match, no id) or 412 (several)
    DELETE [type]?[search]        conditional delete: the search, then the type's own delete
                                  (one match), 204 (none) or 412 (several)
    PATCH  [type]/[id]            JSON Patch (application/json-patch+json) or JSON Merge Patch
    PATCH  [type]?[search]        (application/merge-patch+json, or a partial resource in JSON,
                                  as fhirpy sends it): the type's own read, the patch applied to
                                  the version read, then the type's own update at that version
    POST   [type]/$validate       the resource checked as a create (or `mode` update, delete):
    POST   [type]/[id]/$validate  an OperationOutcome, nothing read or written
    GET    [type]/_history        the versions of one patient's records, newest first, and
    GET    _history               every type at once: scoped like a search (`patient` required)

Each step is the route (or the gate operation) that serves it alone, run as a request of the
same actor (registry.serve): a conditional update is audited as the search it makes and the
update it makes, and nothing here reaches patient data any other way. A type gets these by
declaring the interactions they build on; a type that does not answers 405.
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
import jsonpatch
import jsonpointer
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from carnet.fhir.core import registry
from carnet.fhir.core.api import (
    base_url,
    etag,
    fhir_response,
    gate_for,
    instant,
    parse_instant,
    parse_version,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import snapshot, versioned
from carnet.fhir.core.negotiation import JSON_PATCH, MERGE_PATCH
from carnet.fhir.core.outcome import operation_outcome
from carnet.fhir.core.registry import FhirModule, serve, serve_get
from carnet.kernel.errors import Conflict, InvalidInput, NotFound

router = APIRouter(prefix="/fhir", tags=["fhir"])
HISTORY_DEFAULT = 20
HISTORY_MAX = 100
HISTORY_PAGES = 10  # with HISTORY_MAX: the gate's bound on one history (carnet.phi.steps)
MAX_PATCH = 200_000  # bytes: a patch changes a resource, it does not carry a document
_CONTROL = {"_count", "_since", "_format", "_type", "_page"}
# A conditional request's own read must not become a 304: the condition is the client's.
_NOT_CONDITIONAL = {"if-none-match": "", "if-modified-since": ""}


def _declared(resource_type: str, capability: str | None = None) -> registry.ResourceType:
    found = registry.resource_type(resource_type)
    if found is None:
        raise NotFound("no such resource type")
    if (
        capability is not None
        and capability not in found.capabilities
        and not getattr(found, capability.replace("-", "_"), False)
    ):
        raise HTTPException(405, f"{resource_type} does not support {capability}")
    return found


def _body(response: Response) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(bytes(response.body))
    return loaded


# == conditional update, delete, patch: one search, then the type's own route ==================
def _matches(request: Request, resource_type: str, query: str, what: str = "") -> list[dict[str, Any]]:
    """The resources a conditional request's search finds (the type's own search route: the
    same rules, audit and exposure accounting as any search)."""
    names = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    if not query or not names - _CONTROL:
        where = what or f"{resource_type}?<search>"
        raise InvalidInput(f"a conditional request needs search parameters: {where}")
    bundle = _body(serve_get(request, f"/fhir/{resource_type}", query, strict=True))
    found = [
        e["resource"]
        for e in bundle.get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
        and (e.get("resource") or {}).get("resourceType") == resource_type
    ]
    more = any(link.get("relation") == "next" for link in bundle.get("link") or [])
    if len(found) > 1 or (found and more):
        raise Conflict(f"the search matches more than one {resource_type}: make it more specific")
    return found


def _conditional_update(request: Request, resource_type: str, body: Any) -> Response:
    declared = _declared(resource_type, "conditional-update")
    gate_for(request, resource_type, "update")  # a token without the scope stops here (audited)
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        raise InvalidInput(f"the body must be a {resource_type} resource")
    found = _matches(request, resource_type, request.url.query)
    if found:
        rid = str(found[0]["id"])
        if body.get("id") not in (None, rid):
            raise InvalidInput("the resource id is not the id of the resource the search found")
        return serve(request, "PUT", f"/fhir/{resource_type}/{rid}", body=dict(body, id=rid))
    if body.get("id"):
        raise InvalidInput("nothing matches and the body has an id: carnet assigns ids (leave id out)")
    if "create" not in declared.interactions:
        raise NotFound(f"nothing matches, and a {resource_type} is not created through the API")
    return serve(
        request, "POST", f"/fhir/{resource_type}", body=body, headers={"if-none-exist": ""}, skip=router
    )


def _conditional_delete(request: Request, resource_type: str) -> Response:
    _declared(resource_type, "conditional-delete")
    gate_for(request, resource_type, "delete")
    found = _matches(request, resource_type, request.url.query)
    if not found:
        return Response(status_code=204)  # nothing to delete: R4 answers as a delete of nothing
    rid = str(found[0]["id"])
    # If-Match, when sent, passes to the delete; else the version the search just read.
    headers = {} if request.headers.get("if-match") else {"if-match": etag(_version_of(found[0]))}
    return serve(request, "DELETE", f"/fhir/{resource_type}/{rid}", headers=headers)


def _version_of(resource: dict[str, Any]) -> int:
    raw = (resource.get("meta") or {}).get("versionId")
    return int(raw) if raw and str(raw).isdigit() else 1


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _patched(current: dict[str, Any], media: str, patch: Any) -> dict[str, Any]:
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise InvalidInput("a JSON Patch is an array of operations")
        try:
            result = jsonpatch.JsonPatch(patch).apply(current)
        except jsonpatch.JsonPatchTestFailed:
            # The client's precondition failed: the resource is not what the patch expects.
            raise Conflict("a JSON Patch test operation failed: nothing was changed") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError):
            # Name what is wrong, never echo a value (it may be patient data).
            raise InvalidInput("the JSON Patch does not apply: check each operation's op and path") from None
    else:
        if not isinstance(patch, dict):
            raise InvalidInput("a merge patch is a JSON object")
        if patch.get("resourceType") == "Parameters":
            raise InvalidInput(f"FHIRPath Patch is not supported: send {JSON_PATCH}")
        result = merge_patch(current, patch)
    if not isinstance(result, dict):
        raise InvalidInput("the patch must leave a resource")
    return result


def _patch(request: Request, resource_type: str, resource_id: str | None, media: str, patch: Any) -> Response:
    _declared(resource_type, "patch")
    gate_for(request, resource_type, "update")  # a token that may not update reads nothing here
    if resource_id is None:
        found = _matches(request, resource_type, request.url.query)
        if not found:
            raise NotFound(f"no {resource_type} matches the search")
        resource_id = str(found[0]["id"])
    read = serve(request, "GET", f"/fhir/{resource_type}/{resource_id}", headers=_NOT_CONDITIONAL)
    current = _body(read)
    version = _version_of(current)
    wanted = parse_version(request.headers.get("if-match"))
    if wanted is not None and wanted != version:
        raise Conflict(f"the {resource_type} has changed since the version you read (If-Match)")
    result = _patched(current, media, patch)
    if result.get("resourceType") != resource_type or result.get("id") != resource_id:
        raise InvalidInput("a patch cannot change resourceType or id")
    meta = dict(result.get("meta") or {})
    meta["versionId"] = str(version)
    result["meta"] = meta
    # The update is the type's own, at the version the patch was applied to: a change made
    # meanwhile answers 412 there, and nothing is lost.
    return serve(
        request,
        "PUT",
        f"/fhir/{resource_type}/{resource_id}",
        body=result,
        headers={"if-match": etag(version)},
    )


async def _patch_body(request: Request) -> tuple[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if len(raw) > MAX_PATCH:
        raise InvalidInput("the patch is too long")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("the patch is not JSON") from None
    return (JSON_PATCH if media == JSON_PATCH else MERGE_PATCH), document


def _create(request: Request, resource_type: str, body: Any) -> Response:
    """`POST [type]`: the type's own create; with `If-None-Exist: [search]` first the type's
    own search (audited and counted as any search): one match answers it (200, nothing
    created), several 412, none goes on to the create."""
    condition = request.headers.get("if-none-exist")
    declared = registry.resource_type(resource_type)
    path = f"/fhir/{resource_type}"
    if condition and declared is not None and declared.creates_conditionally:
        gate_for(request, resource_type, "create")  # a token that may not create searches nothing
        query = condition.strip().removeprefix("?").removeprefix(f"{resource_type}?")
        found = _matches(request, resource_type, query, what="If-None-Exist")
        if found:
            return resource_response(request, found[0])
        # Created as if no condition was sent (the query string too: Patient reads one there).
        return serve(request, "POST", path, "", body=body, headers={"if-none-exist": ""}, skip=router)
    return serve(request, "POST", path, request.url.query, body=body, skip=router)


@router.post("/{resource_type}", summary="Create, conditional with If-None-Exist", include_in_schema=False)
async def create(request: Request, resource_type: str) -> Response:
    body = await _json(request)
    return await anyio.to_thread.run_sync(_create, request, resource_type, body)


@router.put("/{resource_type}", summary="Conditional update: PUT [type]?[search]")
async def conditional_update(request: Request, resource_type: str) -> Response:
    body = await _json(request)
    return await anyio.to_thread.run_sync(_conditional_update, request, resource_type, body)


@router.delete("/{resource_type}", summary="Conditional delete: DELETE [type]?[search] (single match)")
def conditional_delete(request: Request, resource_type: str) -> Response:
    return _conditional_delete(request, resource_type)


@router.patch("/{resource_type}/{resource_id}", summary="JSON Patch or JSON Merge Patch of one resource")
async def patch_resource(request: Request, resource_type: str, resource_id: str) -> Response:
    media, document = await _patch_body(request)
    return await anyio.to_thread.run_sync(_patch, request, resource_type, resource_id, media, document)


@router.patch("/{resource_type}", summary="Conditional patch: PATCH [type]?[search]")
async def conditional_patch(request: Request, resource_type: str) -> Response:
    media, document = await _patch_body(request)
    return await anyio.to_thread.run_sync(_patch, request, resource_type, None, media, document)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("the body is not JSON") from None


# == $validate =================================================================================
_MODES = ("create", "update", "delete")


def _validation_input(body: Any, resource_type: str, resource_id: str | None) -> tuple[Any, str]:
    """The resource and mode of a $validate: the resource itself, or a Parameters with
    `resource` and `mode`; the mode is create at type level, update at instance level."""
    mode = "update" if resource_id is not None else "create"
    if isinstance(body, dict) and body.get("resourceType") == "Parameters" and resource_type != "Parameters":
        resource = None
        for part in body.get("parameter") or []:
            name = part.get("name") if isinstance(part, dict) else None
            if name == "resource":
                resource = part.get("resource")
            elif name == "mode":
                mode = str(part.get("valueCode") or "")
            elif name != "profile":
                raise InvalidInput("$validate takes the parameters resource, mode and profile")
        body = resource
    if mode not in _MODES:
        raise InvalidInput("mode must be create, update or delete")
    if mode != "create" and resource_id is None:
        raise InvalidInput(f"mode {mode} validates one resource: POST [type]/[id]/$validate")
    return body, mode


def _validate(request: Request, resource_type: str, resource_id: str | None, body: Any) -> Response:
    declared = _declared(resource_type, "validates")
    resource, mode = _validation_input(body, resource_type, resource_id)
    gate = gate_for(request, resource_type, mode)
    gate.check_write(resource_type=resource_type, mode=mode)  # role-checked and audited
    writes = declared.writes
    assert writes is not None  # `validates` says so
    problems: list[str] = []
    try:
        if mode != "delete" or resource is not None:
            checked = validated(writes.model, resource, resource_type)
            if mode == "create":
                if writes.create is None:
                    raise InvalidInput(f"a {resource_type} is not created through the API")
                writes.create(checked, gate, None)  # the gate's input, built: nothing runs
            elif mode == "update":
                if checked.get("id") != resource_id:
                    raise InvalidInput("the resource id must match the URL")
                if writes.update is None:
                    raise InvalidInput(f"a {resource_type} is not updated through the API")
                writes.update(checked, str(resource_id), 1)
        if mode == "delete" and writes.delete is None:
            raise InvalidInput(f"a {resource_type} is not deleted through the API")
    except InvalidInput as exc:
        problems.append(str(exc))
    if problems:
        outcome = operation_outcome("invalid", problems[0])
    else:
        outcome = operation_outcome("informational", f"the {resource_type} is valid ({mode})", "information")
    return fhir_response(outcome)


@router.post("/{resource_type}/$validate", summary="$validate a resource (nothing is written)")
async def validate_type(request: Request, resource_type: str) -> Response:
    body = await _json(request)
    return await anyio.to_thread.run_sync(_validate, request, resource_type, None, body)


@router.post("/{resource_type}/{resource_id}/$validate", summary="$validate a change of one resource")
async def validate_instance(request: Request, resource_type: str, resource_id: str) -> Response:
    raw = await request.body()
    body = await _json(request) if raw.strip() else None
    return await anyio.to_thread.run_sync(_validate, request, resource_type, resource_id, body)


# == type-level and system-level _history, scoped like a search ================================
def _history(request: Request, resource_types: list[str], self_path: str) -> Response:
    gate = gate_for(request, resource_types[0] if len(resource_types) == 1 else "Patient", "read")
    params = request.query_params
    unknown = sorted(set(params) - _CONTROL - {"patient", "subject"})
    if unknown:
        raise InvalidInput("unsupported _history parameters: " + ", ".join(unknown))
    patient = reference_id(params.get("patient") or params.get("subject"), "Patient")
    if patient is None:
        raise InvalidInput("a _history needs patient=Patient/<id>: there is no browsing across patients")
    raw = params.get("_count")
    if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= HISTORY_MAX):
        raise InvalidInput(f"_count must be between 1 and {HISTORY_MAX}")
    count = int(raw) if raw else HISTORY_DEFAULT
    page_raw = params.get("_page", "1")
    if not page_raw.isdigit() or not 1 <= int(page_raw) <= HISTORY_PAGES:
        raise InvalidInput(f"_page must be between 1 and {HISTORY_PAGES}")
    page = int(page_raw)
    since = parse_instant(params["_since"], "_since") if params.get("_since") else None
    versions, more = gate.patient_history(
        patient_id=patient, resource_types=resource_types, since=since, count=count, page=page
    )
    base = base_url(request)
    entries = []
    for v in versions:
        writes = registry.writes(v.resource_type)
        if writes is None:
            continue  # patient_history is asked for rendered types only
        resource = versioned(writes.to_fhir(snapshot(v)), v)
        method = {"create": "POST", "update": "PUT", "delete": "DELETE"}.get(v.action, "PUT")
        entries.append(
            {
                "fullUrl": f"{base}/{v.resource_type}/{v.resource_id}",
                "resource": resource,
                "request": {"method": method, "url": f"{v.resource_type}/{v.resource_id}"},
                "response": {
                    "status": "201" if v.action == "create" else "200",
                    "etag": etag(v.version_id),
                    "lastModified": instant(v.recorded_at),
                },
            }
        )
    kept = [(k, v) for k, v in params.multi_items() if k != "_page"]

    def link(relation: str, number: int) -> dict[str, str]:
        return {
            "relation": relation,
            "url": f"{base}{self_path}?{urlencode([*kept, ('_page', str(number))])}",
        }

    links = [link("self", page)]
    if more:
        links.append(link("next", page + 1))
    if page > 1:
        links.append(link("previous", page - 1))
    return fhir_response({"resourceType": "Bundle", "type": "history", "link": links, "entry": entries})


def _historied(resource_type: str | None) -> list[str]:
    """The types with kept versions (they declare history-instance) and a mapper to show them."""
    types = [
        t.name
        for m in registry.installed()
        for t in m.types
        if "history-type" in t.capabilities and (resource_type is None or t.name == resource_type)
    ]
    return types


@router.get("/_history", summary="System history of one patient's records (patient required)")
def system_history(request: Request) -> Response:
    wanted = request.query_params.get("_type")
    types = _historied(None)
    if wanted:
        chosen = [t.strip() for t in wanted.split(",")]
        if any(t not in types for t in chosen):
            raise InvalidInput("_type names a type without history: " + ", ".join(types))
        types = chosen
    return _history(request, types, "/_history")


@router.get("/{resource_type}/_history", summary="Type history of one patient's records (patient required)")
def type_history(request: Request, resource_type: str) -> Response:
    _declared(resource_type, "history-type")
    if request.query_params.get("_type"):
        raise InvalidInput("_type is for the system history (GET [base]/_history)")
    return _history(request, _historied(resource_type), f"/{resource_type}/_history")


MODULE = FhirModule(router=router, system_interactions=("history-system",))

# Mounted after every type: `PUT/DELETE/PATCH [type]` and `PATCH [type]/[id]` above would make a
# GET at an unknown type's path a 405; an unknown type is a 404, as it was.
fallback = APIRouter(prefix="/fhir", tags=["fhir"])


@fallback.get("/{resource_type}", include_in_schema=False)
@fallback.get("/{resource_type}/{resource_id}", include_in_schema=False)
def unknown_type(resource_type: str) -> Response:
    raise NotFound("no such resource type")


FALLBACK = FhirModule(router=fallback)
