"""The Bundles every FHIR route answers with: a searchset (paged with `_count` and `_page`, its
self/next/previous links) and an instance's history (`_history`, and one version: vread)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from carnet.fhir.core.api import (
    base_url,
    count_param,
    etag,
    fhir_response,
    gate_for,
    instant,
    page_param,
    resource_response,
)
from carnet.kernel.errors import NotFound
from carnet.phi.schemas import VersionView


def searchset(
    request: Request,
    resource_type: str,
    resources: Sequence[dict[str, Any]],
    *,
    page: int,
    has_more: bool,
    total: int | None = None,
) -> Response:
    base = base_url(request)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "_page"]

    def link(relation: str, number: int) -> dict[str, str]:
        query = urlencode([*params, ("_page", str(number))])
        return {"relation": relation, "url": f"{base}/{resource_type}?{query}"}

    links = [link("self", page)]
    if has_more:
        links.append(link("next", page + 1))
    if page > 1:
        links.append(link("previous", page - 1))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    if total is not None:
        bundle["total"] = total
    return fhir_response(bundle)


def paged(
    request: Request,
    resource_type: str,
    resources: Sequence[dict[str, Any]],
) -> Response:
    """Page a chart section (already bounded by the gate) with _count and _page."""
    count = count_param(request)
    page = page_param(request)
    start = (page - 1) * count
    chunk = list(resources[start : start + count])
    return searchset(
        request,
        resource_type,
        chunk,
        page=page,
        has_more=len(resources) > start + count,
        total=len(resources),
    )


def history_bundle(
    request: Request,
    resource_type: str,
    versions: Sequence[VersionView],
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    base = base_url(request)
    entries = []
    for v in reversed(versions):  # newest first, as FHIR history is
        resource = versioned(to_fhir(snapshot(v)), v)
        method = {"create": "POST", "update": "PUT", "delete": "DELETE"}.get(v.action, "PUT")
        entries.append(
            {
                "fullUrl": f"{base}/{resource_type}/{v.resource_id}",
                "resource": resource,
                "request": {"method": method, "url": f"{resource_type}/{v.resource_id}"},
                "response": {
                    "status": "201" if v.action == "create" else "200",
                    "etag": etag(v.version_id),
                    "lastModified": instant(v.recorded_at),
                },
            }
        )
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "history",
            "total": len(entries),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": entries,
        }
    )


def history_response(
    request: Request,
    resource_type: str,
    resource_id: str,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """`GET [type]/[id]/_history`: every kept version, through the gate's audited history."""
    gate = gate_for(request, resource_type, "read")
    versions = gate.history(resource_type=resource_type, resource_id=resource_id)
    return history_bundle(request, resource_type, versions, to_fhir)


def vread_response(
    request: Request,
    resource_type: str,
    resource_id: str,
    version_id: str,
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    """`GET [type]/[id]/_history/[vid]`: one kept version, through the gate's audited history."""
    gate = gate_for(request, resource_type, "read")
    for v in gate.history(resource_type=resource_type, resource_id=resource_id):
        if str(v.version_id) == version_id:
            return resource_response(request, versioned(to_fhir(snapshot(v)), v))
    raise NotFound("no such version")


def snapshot(v: VersionView) -> dict[str, Any]:
    return dict(v.data, id=v.resource_id, version_id=v.version_id)


def versioned(resource: dict[str, Any], v: VersionView) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(v.version_id)
    meta["lastUpdated"] = instant(v.recorded_at)
    return dict(resource, meta=meta)
