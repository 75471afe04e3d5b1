"""Every FHIR router, in the order the app mounts them (literal paths before `{id}` ones)."""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    from carnet.fhir import (
        auditevents,
        billing,
        bundles,
        clinical,
        directory,
        exports,
        patients,
        records,
        search_post,
    )

    # exports first: its Patient/$export is a literal path, patients has Patient/{id}.
    # search_post first too: POST <type>/_search must not be read as a write to <type>.
    return [
        search_post.router,
        exports.router,
        patients.router,
        clinical.router,
        records.router,
        billing.router,
        directory.router,
        auditevents.router,
        bundles.router,
    ]
