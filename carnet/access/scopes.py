"""SMART scopes (v1 `system/Patient.read`, v2 `system/Observation.rs`) as permissions.

A token's scopes narrow what its roles allow: a Backend Services client holds exactly the
permissions its scopes name, and reads nothing its scopes do not name (a write-only lab client
sees no field of what it writes). Two narrowings more, for apps (SMART App Launch):

- **patient/ scopes confine the whole token to its launch patient** (the gate's compartment):
  a token holding any patient/ scope reaches no other patient, whatever its other scopes say.
- **granular v2 scopes** (`patient/Observation.rs?category=laboratory`) limit what is read of a
  type to those categories: a search never returns another category, a read of one answers
  like a missing record. They are read/search only (`rs`): a write is never granular here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from carnet.access.permissions import Permission
from carnet.access.policy import READ_PERMISSION, WRITE_PERMISSION, ResourceType

# <system|user|patient>/<Resource or *>.<read|write|*|cruds>[?category=<code>]
SCOPE = re.compile(
    r"^(system|user|patient)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)(?:\?([^\s?#]{1,300}))?$"
)
ACTIONS = ("create", "read", "update", "delete", "search")
_LETTER = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
# Scopes that name no resource: launch context, identity, refresh (SMART App Launch v2).
LAUNCH = "launch"
LAUNCH_PATIENT = "launch/patient"
OPENID = "openid"
FHIR_USER = "fhirUser"
OFFLINE = "offline_access"
ONLINE = "online_access"
CONTEXT_SCOPES = frozenset({LAUNCH, LAUNCH_PATIENT, OPENID, FHIR_USER, "profile", OFFLINE, ONLINE})
# Types whose scopes may be granular, with the category system each one's codes belong to.
CATEGORY_SYSTEMS = {
    "Observation": "http://terminology.hl7.org/CodeSystem/observation-category",
    "Condition": "http://terminology.hl7.org/CodeSystem/condition-category",
}


@dataclass(frozen=True)
class ResourceScope:
    context: str  # system, user, patient
    resource: str  # a FHIR type or *
    permission: str  # read, write, *, or v2 letters
    categories: frozenset[str] | None  # granular: only these category codes; None: all


def parse(scope: str) -> ResourceScope | None:
    """A resource scope, or None for anything else (a context scope, or not a scope at all)."""
    match = SCOPE.match(scope)
    if match is None:
        return None
    context, resource, permission, query = match.groups()
    if not permission:
        return None  # "patient/Observation." names no action
    categories: frozenset[str] | None = None
    if query is not None:
        system = CATEGORY_SYSTEMS.get(resource)
        name, _, value = query.partition("=")
        if system is None or name != "category" or not value or "&" in value:
            return None  # only ?category= on Observation and Condition
        if not set(permission) <= {"r", "s"}:
            return None  # granular scopes read; they never write
        wanted_system, bar, code = value.rpartition("|")
        if bar and wanted_system != system:
            return None
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", code):
            return None
        categories = frozenset({code})
    return ResourceScope(context, resource, permission, categories)


def grants(scope: str, resource_type: str, action: str) -> bool:
    """Does one scope allow `action` (create, read, update, delete, search) on a type?"""
    parsed = parse(scope)
    if parsed is None or parsed.resource not in ("*", resource_type):
        return False
    permission = parsed.permission
    if permission == "*":
        return True
    if permission == "read":
        return action in ("read", "search")
    if permission == "write":
        return action in ("create", "update", "delete")
    return _LETTER[action] in permission


def category_limit(scopes: Iterable[str] | None, resource_type: str) -> frozenset[str] | None:
    """The category codes of `resource_type` a token may read; None when it is not limited
    (no token, or one scope granting the type whole). Granular scopes add up."""
    if scopes is None:
        return None
    allowed: set[str] = set()
    for scope in scopes:
        parsed = parse(scope)
        if parsed is None or not (
            grants(scope, resource_type, "read") or grants(scope, resource_type, "search")
        ):
            continue
        if parsed.categories is None:
            return None
        allowed |= parsed.categories
    return frozenset(allowed)


def patient_scoped(scopes: Iterable[str] | None) -> bool:
    """Does the token hold a patient/ scope (and so reach only its launch patient)?"""
    return any(s.startswith("patient/") for s in scopes or ())


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
