"""Steps the domain operations share, on a guarded transaction: redaction, a chart section, one
record by id, the answer to a write, the first stored version, and checks of the names a
write refers to (practitioner, location, stay). Never called outside a guarded operation."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from sqlalchemy import select

from carnet.access.actor import ActorKind
from carnet.access.policy import ResourceType
from carnet.access.roles import Role
from carnet.billing.models import Invoice
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.interventions.models import Intervention
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import DirectoryEntry, Location, Practitioner
from carnet.patients.models import CareRelationship, Consent, Patient, ResourceVersion
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused
from carnet.prescriptions.models import Prescription
from carnet.records.models import (
    Allergy,
    ClinicalNote,
    Condition,
    DiagnosticReport,
    Observation,
    ServiceRequest,
)
from carnet.scheduling.models import Appointment, Encounter

T = TypeVar("T")


def sid(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def redact(schema: type[T], data: dict[str, Any], fields: frozenset[str]) -> T:
    kept = {k: v for k, v in data.items() if k in fields}
    kept["id"] = data["id"]
    if "updated_at" in data:  # when the record last changed: metadata, not patient data
        kept["updated_at"] = data["updated_at"]
    return schema(**kept, visible=fields)  # type: ignore[call-arg]


HISTORY_LIMIT = 200
SECTION_LIMIT = 500


# What `read_one` reads by id (other sections are read through their patient).
RECORD_MODELS: dict[ResourceType, Any] = {
    RT.APPOINTMENT: Appointment,
    RT.NOTE: ClinicalNote,
    RT.PRESCRIPTION: Prescription,
    RT.ALLERGY: Allergy,
    RT.ENCOUNTER: Encounter,
    RT.OBSERVATION: Observation,
    RT.CONDITION: Condition,
    RT.CARE_TEAM: CareRelationship,
    RT.DIAGNOSTIC_REPORT: DiagnosticReport,
    RT.CONSENT: Consent,
    RT.INVOICE: Invoice,
    RT.SERVICE_REQUEST: ServiceRequest,
}


# A Condition carnet writes is a problem-list item; a received one keeps its own categories.
CONDITION_CATEGORY = "problem-list-item"


def record_categories(tx: GuardedTx, resource: ResourceType, row: Any) -> frozenset[str]:
    """The category codes of a record, for a granular token's limit (Observation, Condition)."""
    if resource is RT.OBSERVATION:
        return frozenset({row.category})
    if resource is RT.CONDITION:
        received = received_of(tx, row) or {}
        codes = {
            str(coding.get("code"))
            for concept in received.get("category") or []
            if isinstance(concept, dict)
            for coding in concept.get("coding") or []
            if isinstance(coding, dict) and coding.get("code")
        }
        return frozenset(codes or {CONDITION_CATEGORY})
    return frozenset()


def within_categories(tx: GuardedTx, resource: ResourceType, query: Any) -> Any:
    """A granular token's category limit as SQL, where the category is a column."""
    limit = tx.category_limit(resource)
    if limit is not None and resource is RT.OBSERVATION:
        return query.where(Observation.category.in_(sorted(limit)))
    return query


def section(
    tx: GuardedTx, patient_id: str, resource: ResourceType, query: Any
) -> tuple[list[Any], frozenset[str]]:
    patient = tx.patient(patient_id)
    decision = tx.authorize(patient, resource)
    rows = tx.records(within_categories(tx, resource, query).limit(SECTION_LIMIT))
    limit = tx.category_limit(resource)
    if limit is not None:
        # A search never returns a category the token does not name (checked again per row).
        rows = [r for r in rows if limit & record_categories(tx, resource, r)]
    tx.resource_ids.extend(str(r.id) for r in rows)
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, decision.fields, resource=resource)
    return rows, decision.fields


def read_one(tx: GuardedTx, kind: ResourceType, resource_id: str) -> tuple[Any, frozenset[str]]:
    """One record by its id (a FHIR read), authorized and redacted like its chart section."""
    model = RECORD_MODELS[kind]
    rid = parse_id(resource_id)
    row = tx.session.get(model, rid) if rid else None
    if row is None:
        raise NotFound(NOT_FOUND)
    patient = tx.patient(row.patient_id)
    decision = tx.authorize(patient, kind)
    if tx.category_limit(kind) is not None:
        tx.check_categories(kind, record_categories(tx, kind, row))
    tx.resource_ids.append(str(row.id))
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, decision.fields, resource=kind)
    return row, decision.fields


def written(
    tx: GuardedTx,
    patient: Patient,
    resource: ResourceType,
    schema: type[T],
    data: dict[str, Any],
    version: int,
    action: str,
) -> T:
    tx.relationships.clear()
    tx.snapshot(resource, uuid.UUID(data["id"]), version, patient, action, data)
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), resource)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=resource)
    return redact(schema, data, fields)


# -- the resource as received ----------------------------------------------------------------
# FHIR types a received resource may reference, with the model that holds them: a clinical
# record must be of the same patient; a directory entry (practitioner, location) of one of the
# actor's facilities. Anything else is refused, naming the element (nothing silently dropped).
_RECORD_TYPES: dict[str, Any] = {
    "Observation": Observation,
    "Condition": Condition,
    "AllergyIntolerance": Allergy,
    "DiagnosticReport": DiagnosticReport,
    "Encounter": Encounter,
    "MedicationRequest": Prescription,
    "ServiceRequest": ServiceRequest,
    "Immunization": Intervention,
    "Procedure": Intervention,
    "MedicationAdministration": Intervention,
    "MedicationStatement": Intervention,
    "Specimen": Intervention,
}
_DIRECTORY_TYPES: dict[str, Any] = {"Practitioner": Practitioner, "Location": Location}
_RECEIVED_DIRECTORY = ("Practitioner", "PractitionerRole", "Organization", "Location")


def references(value: Any, path: str) -> list[tuple[str, str]]:
    """(element path, reference) for every `reference` inside a resource."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            found.append((path, ref))
        for key, item in value.items():
            if key != "reference":
                found.extend(references(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for item in value:
            found.extend(references(item, path))
    return found


def received_json(
    tx: GuardedTx, received: dict[str, Any], patient: Patient, rewritten: dict[str, str]
) -> str:
    """The resource as it will be kept: `rewritten` element -> carnet reference (subject,
    encounter: resolved by the operation), every other reference checked to resolve in carnet
    as written, contained ones (`#id`) kept. Refused with the element named otherwise."""
    kind = str(received.get("resourceType") or "resource")
    body = {k: v for k, v in received.items() if k != "id"}
    body["meta"] = {
        k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    if not body["meta"]:
        del body["meta"]
    for element, reference in rewritten.items():
        if isinstance(body.get(element), dict):
            body[element] = {**body[element], "reference": reference}
    for path, reference in references({k: v for k, v in body.items() if k not in rewritten}, kind):
        if reference.startswith("#"):
            continue
        rtype, _, rid = reference.rstrip("/").rpartition("/")
        rtype = rtype.rpartition("/")[2]
        key = parse_id(rid)
        model = _RECORD_TYPES.get(rtype) or _DIRECTORY_TYPES.get(rtype)
        row = tx.session.get(model, key) if model is not None and key is not None else None
        if rtype in _RECORD_TYPES:
            ok = (
                row is not None
                and row.patient_id == patient.id
                and getattr(row, "resource_type", rtype) == rtype  # interventions share a table
            )
        elif rtype == "Organization" and key in tx.ctx.facility_ids:
            ok = True  # the facility itself
        elif rtype == "Patient" and kind == "Patient":
            # A Patient's link to another record of the facility (another's data is no element
            # of any other resource's: those name their own patient, rewritten by the operation).
            other = tx.session.get(Patient, key) if key is not None else None
            ok = other is not None and other.facility_id in tx.ctx.facility_ids
        else:
            ok = row is not None and row.facility_id in tx.ctx.facility_ids
            if not ok and rtype in _RECEIVED_DIRECTORY and key is not None:
                # Another system's entry an import or a transaction Bundle kept.
                entry = tx.session.get(DirectoryEntry, key)
                ok = (
                    entry is not None
                    and entry.resource_type == rtype
                    and entry.facility_id in tx.ctx.facility_ids
                )
        if not ok:
            raise InvalidInput(f"{path}: carnet cannot resolve this reference (refused, not dropped)")
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def received_of(tx: GuardedTx, row: Any) -> dict[str, Any] | None:
    """The stored resource as received, decrypted (None when the record was not received)."""
    text = tx.dec(row.received_ct, row.__tablename__, "received", row.id) if row.received_ct else None
    return None if text is None else dict(json.loads(text))


def received_shown(tx: GuardedTx, row: Any, fields: frozenset[str]) -> dict[str, Any] | None:
    """The resource as received, for a reader whose fields include it: nothing is decrypted
    for a reader who may not see it (redaction before decryption, as for every field)."""
    return received_of(tx, row) if "received" in fields else None


def first_version(
    tx: GuardedTx, resource: ResourceType, row: Any, patient: Patient, data: dict[str, Any]
) -> None:
    """A record written before it was versioned (seeded, imported) gets its state as it
    stood as its first stored version, by the system, so no earlier state is lost."""
    kept = tx.session.scalar(
        select(ResourceVersion.id)
        .where(ResourceVersion.resource_type == resource.value, ResourceVersion.resource_id == row.id)
        .limit(1)
    )
    if kept is not None:
        return
    row_id = new_id()
    body = json.dumps(data, default=str, sort_keys=True, ensure_ascii=False)
    tx.session.add(
        ResourceVersion(
            id=row_id,
            resource_type=resource.value,
            resource_id=row.id,
            version_id=row.version_id,
            patient_id=patient.id,
            facility_id=patient.facility_id,
            recorded_at=row.updated_at or row.created_at,
            author_id=None,
            action="create",
            snapshot_ct=tx.enc(body, patient.facility_id, "resource_versions", "snapshot", row_id),
        )
    )


def writing_practitioner(tx: GuardedTx) -> uuid.UUID:
    if tx.ctx.practitioner_id is None:
        raise Refused("only a practitioner writes clinical records")
    return tx.ctx.practitioner_id


def result_author(tx: GuardedTx) -> uuid.UUID | None:
    """Who performed a result: the practitioner writing it, or none for a Backend Services
    client feeding its facility (a lab system; the audit names the client)."""
    if tx.actor.kind is ActorKind.CLIENT and Role.API_CLIENT in tx.ctx.roles:
        return None
    return writing_practitioner(tx)


def facility_practitioner(tx: GuardedTx, value: str | None, facility_id: uuid.UUID) -> uuid.UUID | None:
    if value is None:
        return None
    pid = parse_id(value)
    practitioner = tx.session.get(Practitioner, pid) if pid else None
    if practitioner is None or practitioner.facility_id not in tx.ctx.facility_ids or not practitioner.active:
        raise InvalidInput("unknown practitioner")
    return practitioner.id


def facility_location(tx: GuardedTx, value: str | None, facility_id: uuid.UUID) -> uuid.UUID | None:
    if value is None:
        return None
    lid = parse_id(value)
    location = tx.session.get(Location, lid) if lid else None
    if location is None or location.facility_id != facility_id or not location.active:
        raise InvalidInput("unknown location")
    return location.id


def patient_stay(tx: GuardedTx, value: str | None, patient: Patient) -> uuid.UUID | None:
    if value is None:
        return None
    eid = parse_id(value)
    encounter = tx.session.get(Encounter, eid) if eid else None
    if encounter is None or encounter.patient_id != patient.id:
        raise InvalidInput("unknown encounter for this patient")
    if encounter.status == "entered-in-error":
        # A stay opened by mistake is no stay: nothing new is written (or billed) against it.
        raise InvalidInput("this stay was entered in error: name the right stay, or none")
    return encounter.id


def own_worklist(tx: GuardedTx, practitioner_id: str) -> uuid.UUID:
    """A worklist (the patients one cares for now) is the actor's own: asked for another
    practitioner, it is refused, and the refusal is audited like any other."""
    me = tx.ctx.practitioner_id
    if me is None:
        raise Refused("a worklist belongs to a practitioner")
    if parse_id(practitioner_id) != me:
        raise Refused("another practitioner's worklist")
    return me


def expose_worklist(
    tx: GuardedTx,
    shown: list[uuid.UUID],
    rels: dict[uuid.UUID, frozenset[Any]],
    fields: set[str],
    name: str,
) -> None:
    """A worklist's patients, counted as the day list counts them: one list exposure."""
    tx.query = name
    tx.reasons.append(f"own {name}")
    event = SearchEvent(shape=SearchShape.LIST, term_digest=f"{name}:{tx.now.date().isoformat()}", page=1)
    tx.expose(shown, Channel.LIST, rels, fields, shape=event)
