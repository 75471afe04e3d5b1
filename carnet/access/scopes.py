"""SMART scopes (v1 `system/Patient.read`, v2 `system/Observation.rs`) as permissions.

A token's scopes narrow what its roles allow: a Backend Services client holds exactly the
permissions its scopes name, and reads nothing its scopes do not name (a write-only lab client
sees no field of what it writes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from carnet.access.permissions import Permission
from carnet.access.policy import READ_PERMISSION, WRITE_PERMISSION, ResourceType

# <system|user|patient>/<Resource or *>.<read|write|*|cruds>
SCOPE = re.compile(r"^(system|user|patient)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)$")
ACTIONS = ("create", "read", "update", "delete", "search")
_LETTER = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}


def grants(scope: str, resource_type: str, action: str) -> bool:
    """Does one scope allow `action` (create, read, update, delete, search) on a type?"""
    match = SCOPE.match(scope)
    if match is None:
        return False
    _context, resource, permission = match.groups()
    if resource not in ("*", resource_type):
        return False
    if permission == "*":
        return True
    if permission == "read":
        return action in ("read", "search")
    if permission == "write":
        return action in ("create", "update", "delete")
    return _LETTER[action] in permission


def permissions_for(scopes: Iterable[str]) -> frozenset[Permission]:
    """The permissions a set of scopes names (before the role's own limits)."""
    held: set[Permission] = set()
    wanted = list(scopes)
    for resource in ResourceType:
        if any(grants(s, resource.value, "read") for s in wanted):
            held.add(READ_PERMISSION[resource])
        if any(grants(s, resource.value, "search") for s in wanted) and resource is ResourceType.PATIENT:
            held.add(Permission.PATIENT_SEARCH)
        if resource in WRITE_PERMISSION:
            if any(grants(s, resource.value, "update") for s in wanted):
                held.add(WRITE_PERMISSION[resource])
            if any(grants(s, resource.value, "create") for s in wanted):
                # Creating a patient is its own permission; other types create with their write one.
                held.add(
                    Permission.PATIENT_CREATE
                    if resource is ResourceType.PATIENT
                    else WRITE_PERMISSION[resource]
                )
    return frozenset(held)


def reads(scopes: Iterable[str] | None, resource: ResourceType) -> bool:
    """May a token with these scopes see fields of `resource` (None: not a token, roles decide)?"""
    if scopes is None:
        return True
    return any(grants(s, resource.value, "read") or grants(s, resource.value, "search") for s in scopes)
