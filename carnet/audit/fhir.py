"""An audit event as a FHIR R4 `AuditEvent`, shaped after IHE Basic Audit Log Patterns (BALP).

Served to security officers only (the FHIR router checks that): it names staff, addresses and
break-the-glass reasons. Every resource is validated against the R4B model before it leaves.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from carnet.access.actor import ActorKind
from carnet.audit.interfaces import AuditKind, Outcome
from carnet.audit.models import AuditEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_IP = "2"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
CARNET = "urn:carnet:"

# kind -> (type coding, subtype coding or None, action, BALP profile or None)
_REST = {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_KINDS: dict[str, tuple[dict[str, str], dict[str, str] | None, str, str | None]] = {
    AuditKind.PHI_READ: (_REST, {"system": RESTFUL, "code": "read"}, "R", "IHE.BasicAudit.PatientRead"),
    AuditKind.PHI_SEARCH: (
        _REST,
        {"system": RESTFUL, "code": "search-type"},
        "E",
        "IHE.BasicAudit.PatientQuery",
    ),
    AuditKind.PHI_LIST: (
        _REST,
        {"system": RESTFUL, "code": "search-type"},
        "E",
        "IHE.BasicAudit.PatientQuery",
    ),
    AuditKind.PHI_HISTORY: (
        _REST,
        {"system": RESTFUL, "code": "history-instance"},
        "R",
        "IHE.BasicAudit.PatientRead",
    ),
    AuditKind.PHI_VALIDATE: (_REST, {"system": RESTFUL, "code": "operation"}, "E", None),
    AuditKind.PHI_CREATE: (_REST, {"system": RESTFUL, "code": "create"}, "C", "IHE.BasicAudit.PatientCreate"),
    AuditKind.PHI_UPDATE: (_REST, {"system": RESTFUL, "code": "update"}, "U", "IHE.BasicAudit.PatientUpdate"),
    AuditKind.PHI_DELETE: (_REST, {"system": RESTFUL, "code": "delete"}, "D", "IHE.BasicAudit.PatientDelete"),
    AuditKind.PHI_MERGE: (
        _REST,
        {"system": RESTFUL, "code": "operation"},
        "U",
        "IHE.BasicAudit.PatientUpdate",
    ),
    AuditKind.PHI_UNMERGE: (
        _REST,
        {"system": RESTFUL, "code": "operation"},
        "U",
        "IHE.BasicAudit.PatientUpdate",
    ),
    AuditKind.PHI_EXPORT: ({"system": DCM, "code": "110106", "display": "Export"}, None, "R", None),
    # A print is a read that leaves on paper: a patient read, of the operation kind.
    AuditKind.PHI_PRINT: (_REST, {"system": RESTFUL, "code": "operation"}, "R", "IHE.BasicAudit.PatientRead"),
    AuditKind.LOGIN_SUCCESS: (
        {"system": DCM, "code": "110114", "display": "User Authentication"},
        {"system": DCM, "code": "110122", "display": "Login"},
        "E",
        None,
    ),
    AuditKind.LOGIN_FAILURE: (
        {"system": DCM, "code": "110114", "display": "User Authentication"},
        {"system": DCM, "code": "110122", "display": "Login"},
        "E",
        None,
    ),
    AuditKind.LOGOUT: (
        {"system": DCM, "code": "110114", "display": "User Authentication"},
        {"system": DCM, "code": "110123", "display": "Logout"},
        "E",
        None,
    ),
}
_SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
_ROLES_CHANGED = {"system": DCM, "code": "110136", "display": "Security Roles Changed"}
_USER_CHANGED = {"system": DCM, "code": "110137", "display": "User Security Attributes Changed"}
_APPLICATION = {"system": DCM, "code": "110100", "display": "Application Activity"}
_OUTCOMES = {Outcome.SUCCESS.value: "0", Outcome.DENIED.value: "4", Outcome.ERROR.value: "8"}


def _classify(kind: str) -> tuple[dict[str, str], dict[str, str] | None, str, str | None]:
    if kind in _KINDS:
        return _KINDS[kind]
    scope, _, action = kind.partition(":")
    subtype = {"system": f"{CARNET}audit-kind", "code": kind}
    if scope == "detection" or kind.startswith("access:break-glass"):
        return _SECURITY_ALERT, subtype, "E", None
    if kind.startswith(("access:role", "access:role-grant")):
        return _ROLES_CHANGED, subtype, "U", None
    if scope in ("account", "client"):
        return _USER_CHANGED, subtype, "U" if action else "E", None
    return _APPLICATION, subtype, "E", None


def to_fhir(event: AuditEvent) -> dict[str, Any]:
    """The FHIR R4 AuditEvent for one stored event, validated with the R4B model."""
    event_type, subtype, action, profile = _classify(event.kind)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.seq),
        "type": event_type,
        "action": action,
        "recorded": event.recorded_at.isoformat(timespec="microseconds"),
        "outcome": _OUTCOMES.get(event.outcome, "8"),
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": event.purpose_of_use}]}],
        "agent": [_agent(event)],
        "source": {
            "site": "carnet",
            "observer": {"display": "carnet"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(event),
    }
    if profile:
        # The Patient* profiles need a patient entity; without one the generic profile applies.
        if not json.loads(event.patient_ids or "[]"):
            profile = profile.replace("BasicAudit.Patient", "BasicAudit.")
        resource["meta"] = {"profile": [BALP + profile]}
    if subtype:
        resource["subtype"] = [subtype]
    if event.policy_reason:
        resource["outcomeDesc"] = event.policy_reason
    validated = FhirAuditEvent.model_validate(resource)
    result: dict[str, Any] = json.loads(validated.model_dump_json(exclude_none=True))
    return result


def _agent(event: AuditEvent) -> dict[str, Any]:
    who: dict[str, Any]
    if event.account_id is not None:
        who = {"identifier": {"system": f"{CARNET}account", "value": str(event.account_id)}}
    elif event.client_id:
        who = {"identifier": {"system": f"{CARNET}client", "value": event.client_id}}
    else:
        who = {"identifier": {"system": f"{CARNET}actor", "value": event.actor_ref}}
    who["display"] = event.username
    agent: dict[str, Any] = {
        # BALP: the user who asked is the information recipient (IRCP).
        "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
        "who": who,
        "requestor": event.actor_kind != ActorKind.SYSTEM.value,
        "purposeOfUse": [{"coding": [{"system": ACT_REASON, "code": event.purpose_of_use}]}],
    }
    roles = [r for r in event.roles.split(",") if r]
    if roles:
        agent["role"] = [{"coding": [{"system": f"{CARNET}role", "code": r}]} for r in roles]
    if event.address:
        agent["network"] = {"address": event.address, "type": NETWORK_IP}
    if event.session_id is not None:
        agent["policy"] = [f"{CARNET}session:{event.session_id}"]
    if event.client_id and event.account_id is not None:
        agent["altId"] = event.client_id
    return agent


def _entities(event: AuditEvent) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    for patient_id in json.loads(event.patient_ids or "[]"):
        entity: dict[str, Any] = {
            "what": {"reference": f"Patient/{patient_id}"},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }
        if event.break_glass_reason:
            entity["detail"] = [{"type": "break-the-glass-reason", "valueString": event.break_glass_reason}]
        entities.append(entity)
    for resource_id in json.loads(event.resource_ids or "[]"):
        entities.append(
            {
                "what": {"reference": f"{event.resource_type}/{resource_id}"}
                if event.resource_type
                else {"identifier": {"value": str(resource_id)}},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if event.query:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(event.query.encode()).decode(),
            }
        )
    # The event's place in the chain, and its detail, so an officer can check it against verify.
    chain_detail = [{"type": "chain-hash", "valueString": event.hash}]
    chain_detail += [{"type": k, "valueString": str(v)} for k, v in json.loads(event.detail or "{}").items()]
    entities.append(
        {
            "what": {"identifier": {"system": f"{CARNET}audit-event", "value": str(event.seq)}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
            "detail": chain_detail,
        }
    )
    return entities
