"""The access policy: role x resource x relationship -> the fields that may be seen.

Pure data and pure functions (no database): the gate computes the actor's relationships to a
patient, then asks `decide`. Anything not listed here is refused (deny by default): an unknown
role, resource type or relationship gets no field. docs/ACCESS.md is generated from this module.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from carnet.access.permissions import Permission, permissions_of
from carnet.access.roles import Role

# A booked appointment in this window around today makes a care relationship.
APPOINTMENT_WINDOW_BEFORE = dt.timedelta(days=7)
APPOINTMENT_WINDOW_AFTER = dt.timedelta(days=30)
BREAK_GLASS_DURATION = dt.timedelta(hours=1)
# A care relationship made by a colleague (a referral, a care-team membership) opens the chart to
# the practitioner it names until its end, which is required and bounded: access a referral gives
# lapses on its own even when nobody remembers to end it.
REFERRAL_MAX_DURATION = dt.timedelta(days=90)
CARE_TEAM_MAX_DURATION = dt.timedelta(days=365)
STEP_UP_FRESHNESS = dt.timedelta(minutes=5)
SEARCH_MAX_COUNT = 20
SEARCH_MAX_PAGE = 5


class ResourceType(StrEnum):
    """Patient-data resources, named as in FHIR R4."""

    PATIENT = "Patient"
    APPOINTMENT = "Appointment"
    ENCOUNTER = "Encounter"
    ALLERGY = "AllergyIntolerance"
    NOTE = "DocumentReference"
    PRESCRIPTION = "MedicationRequest"
    COVERAGE = "Coverage"
    CARD_READING = "CardReading"
    INVOICE = "Invoice"
    OBSERVATION = "Observation"
    CONDITION = "Condition"
    CARE_TEAM = "CareTeam"  # the patient's care relationships (who looks after them)
    DIAGNOSTIC_REPORT = "DiagnosticReport"  # a lab report grouping observations
    CONSENT = "Consent"  # the patient's privacy decisions, e.g. opposing other facilities
    SERVICE_REQUEST = "ServiceRequest"  # a lab order, which results answer (basedOn)
    # What was done or given (carnet/interventions), each kept whole as received.
    IMMUNIZATION = "Immunization"
    PROCEDURE = "Procedure"
    MEDICATION_ADMINISTRATION = "MedicationAdministration"
    MEDICATION_STATEMENT = "MedicationStatement"
    SPECIMEN = "Specimen"  # what a result was measured on (kept whole as received)


class Relationship(StrEnum):
    """Why an actor may see a patient."""

    SELF = "self"  # the patient themself
    CARE_TEAM = "care_team"
    REFERRAL = "referral"
    APPOINTMENT = "appointment"  # booked with the practitioner, -7/+30 days around today
    ATTENDING = "attending"  # attending physician of the current in-progress encounter
    WARD = "ward"  # nurse assigned to the ward hosting the patient's current stay
    DESIGNATED = "designated_physician"
    BREAK_GLASS = "break_glass"
    FACILITY = "facility"  # a patient of a facility in the actor's scope, no care relationship
    # Found by a specific search (an identifier, or family name + birth date): holds for that
    # search result only, never for opening the chart.
    LOCATED = "located"


class BreakGlassReason(StrEnum):
    EMERGENCY = "emergency"  # life-threatening, the patient cannot consent
    CONTINUITY = "continuity"  # the usual clinician is unavailable
    PATIENT_REQUEST = "patient_request"  # the patient asks, in person
    CONSULTATION = "consultation"  # an unscheduled consult requested by a colleague


# -- fields per resource (the names of the phi schemas' fields) --------------------------------
PATIENT_LOCATE = frozenset({"id", "family", "given", "birth_date", "gender"})
PATIENT_IDENTITY = PATIENT_LOCATE | {
    "facility_id",
    "version_id",
    "ins",
    "active",
    "designated_physician_id",
    "opposes_other_facilities",
    # A merged duplicate names the record it was merged into; a kept record the ones it replaces.
    "merged_into_id",
    "replaces",
}
PATIENT_CONTACT = frozenset({"address", "phone", "email"})
# Every field of a patient: with the Patient as received ("received", every element another
# system sent), granted only with all the others, as for an Observation (see OBSERVATION_ALL).
PATIENT_ALL = PATIENT_IDENTITY | PATIENT_CONTACT | {"received"}
APPOINTMENT_ADMIN = frozenset(
    {
        "id",
        "patient_id",
        "facility_id",
        "practitioner_id",
        "location_id",
        "start_at",
        "end_at",
        "status",
        "cancel_reason",
        "version_id",
    }
)
APPOINTMENT_ALL = APPOINTMENT_ADMIN | {"reason"}
ENCOUNTER_ALL = frozenset(
    {"id", "patient_id", "facility_id", "kind", "status", "start_at", "end_at", "location_id", "attending_id"}
    | {"version_id", "received", "bed_id", "beds"}
)
ALLERGY_ALL = frozenset(
    {
        "id",
        "patient_id",
        "substance_code",
        "substance_display",
        "criticality",
        "reaction",
        "clinical_status",
        "recorded_by",
        "version_id",
        "received",
    }
)
NOTE_ALL = frozenset(
    {"id", "patient_id", "encounter_id", "author_id", "kind", "title", "status", "version_id", "versions"}
)
PRESCRIPTION_ALL = frozenset(
    {
        "id",
        "patient_id",
        "prescriber_id",
        "medication_code",
        "medication_display",
        "substance_code",
        "dosage_text",
        "status",
        "authored_at",
        "valid_until",
        "stop_reason",
        "allergy_override_reason",
        "version_id",
        "warnings",
        "received",
    }
)
COVERAGE_ALL = frozenset(
    {"id", "patient_id", "kind", "payer", "member_id", "status", "period_start", "period_end"} | {"received"}
)
CARD_READING_ALL = frozenset({"id", "patient_id", "coverage_id", "read_at", "card_serial", "payload"})
INVOICE_ALL = frozenset(
    {
        "id",
        "patient_id",
        "number",
        "status",
        "issued_at",
        "total_cents",
        "currency",
        "lines",
        "version_id",
        "paid_cents",
        "payments",
        "encounter_id",
        "cancel_reason",
    }
)
# "received" is the FHIR resource as it was received, whole (every element of it): a field of its
# own, granted only with every other field of its type (a grant that leaves any field out
# leaves the whole resource out too, and the reader gets the columns' rendering, redacted).
OBSERVATION_ALL = frozenset(
    {
        "id",
        "patient_id",
        "category",
        "code",
        "display",
        "value_number",
        "unit",
        "value_text",
        "effective_at",
        "status",
        "version_id",
        "received",
        "order_id",
        "reference_range",
        "interpretation",
    }
)
CONDITION_ALL = frozenset(
    {
        "id",
        "patient_id",
        "code",
        "display",
        "clinical_status",
        "verification_status",
        "onset_at",
        "recorded_by",
        "version_id",
        "received",
    }
)
CARE_TEAM_ALL = frozenset(
    {"id", "patient_id", "facility_id", "practitioner_id", "kind", "status", "start_at", "end_at"}
    | {"version_id", "reason"}
)
DIAGNOSTIC_REPORT_ALL = frozenset(
    {
        "id",
        "patient_id",
        "facility_id",
        "code",
        "display",
        "status",
        "issued_at",
        "conclusion",
        "performer_id",
        "result_ids",
        "version_id",
        "received",
        "order_id",
    }
)
SERVICE_REQUEST_ALL = frozenset(
    {
        "id",
        "patient_id",
        "facility_id",
        "encounter_id",
        "requester_id",
        "placer_number",
        "category",
        "code",
        "display",
        "priority",
        "status",
        "received",
        "authored_at",
        "note",
        "version_id",
    }
)
CONSENT_ALL = frozenset(
    {
        "id",
        "patient_id",
        "facility_id",
        "kind",
        "status",
        "recorded_by",
        "recorded_at",
        "withdrawn_at",
        "withdrawn_by",
        "version_id",
    }
)
# An immunization, procedure, medication administered or statement: its columns and the
# resource as received ("received", granted only with the rest, as for an Observation).
INTERVENTION_ALL = frozenset(
    {
        "id",
        "patient_id",
        "code_system",
        "code",
        "display",
        "status",
        "occurred_at",
        "encounter_id",
        "recorded_by",
        "version_id",
        "received",
    }
)

ALL_FIELDS: Mapping[ResourceType, frozenset[str]] = {
    ResourceType.PATIENT: PATIENT_ALL,
    ResourceType.APPOINTMENT: APPOINTMENT_ALL,
    ResourceType.ENCOUNTER: ENCOUNTER_ALL,
    ResourceType.ALLERGY: ALLERGY_ALL,
    ResourceType.NOTE: NOTE_ALL,
    ResourceType.PRESCRIPTION: PRESCRIPTION_ALL,
    ResourceType.COVERAGE: COVERAGE_ALL,
    ResourceType.CARD_READING: CARD_READING_ALL,
    ResourceType.INVOICE: INVOICE_ALL,
    ResourceType.OBSERVATION: OBSERVATION_ALL,
    ResourceType.CONDITION: CONDITION_ALL,
    ResourceType.CARE_TEAM: CARE_TEAM_ALL,
    ResourceType.DIAGNOSTIC_REPORT: DIAGNOSTIC_REPORT_ALL,
    ResourceType.CONSENT: CONSENT_ALL,
    ResourceType.SERVICE_REQUEST: SERVICE_REQUEST_ALL,
    ResourceType.IMMUNIZATION: INTERVENTION_ALL,
    ResourceType.PROCEDURE: INTERVENTION_ALL,
    ResourceType.MEDICATION_ADMINISTRATION: INTERVENTION_ALL,
    ResourceType.MEDICATION_STATEMENT: INTERVENTION_ALL,
    ResourceType.SPECIMEN: INTERVENTION_ALL,
}
INTERVENTIONS = (
    ResourceType.IMMUNIZATION,
    ResourceType.PROCEDURE,
    ResourceType.MEDICATION_ADMINISTRATION,
    ResourceType.MEDICATION_STATEMENT,
    ResourceType.SPECIMEN,
)

R = Relationship
CLINICAL = frozenset({R.CARE_TEAM, R.REFERRAL, R.APPOINTMENT, R.ATTENDING, R.DESIGNATED, R.BREAK_GLASS})
NURSING = frozenset({R.WARD, R.CARE_TEAM, R.APPOINTMENT, R.BREAK_GLASS})
IN_FACILITY = frozenset(set(Relationship) - {R.SELF})
SELF = frozenset({R.SELF})

Grant = tuple[frozenset[Relationship], frozenset[str]]
T = ResourceType

# Reads: for each role and resource, which relationships open which fields (unions add up).
READ_RULES: Mapping[Role, Mapping[ResourceType, tuple[Grant, ...]]] = {
    Role.PHYSICIAN: {
        # Locating a patient outside one's care (to break the glass) shows who, not how to reach them.
        T.PATIENT: (
            (CLINICAL, PATIENT_ALL),
            (frozenset({R.LOCATED}), PATIENT_LOCATE),
        ),
        T.APPOINTMENT: ((CLINICAL, APPOINTMENT_ALL),),
        T.ENCOUNTER: ((CLINICAL, ENCOUNTER_ALL),),
        T.ALLERGY: ((CLINICAL, ALLERGY_ALL),),
        T.NOTE: ((CLINICAL, NOTE_ALL),),
        T.PRESCRIPTION: ((CLINICAL, PRESCRIPTION_ALL),),
        T.COVERAGE: ((CLINICAL, COVERAGE_ALL),),
        T.OBSERVATION: ((CLINICAL, OBSERVATION_ALL),),
        T.CONDITION: ((CLINICAL, CONDITION_ALL),),
        T.CARE_TEAM: ((CLINICAL, CARE_TEAM_ALL),),
        T.DIAGNOSTIC_REPORT: ((CLINICAL, DIAGNOSTIC_REPORT_ALL),),
        T.CONSENT: ((CLINICAL, CONSENT_ALL),),
        T.SERVICE_REQUEST: ((CLINICAL, SERVICE_REQUEST_ALL),),
        **{t: ((CLINICAL, INTERVENTION_ALL),) for t in INTERVENTIONS},
    },
    Role.NURSE: {
        T.PATIENT: ((NURSING, PATIENT_IDENTITY), (frozenset({R.LOCATED}), PATIENT_LOCATE)),
        T.APPOINTMENT: ((NURSING, APPOINTMENT_ALL),),
        T.ENCOUNTER: ((NURSING, ENCOUNTER_ALL),),
        T.ALLERGY: ((NURSING, ALLERGY_ALL),),
        T.NOTE: ((NURSING, NOTE_ALL),),
        T.PRESCRIPTION: ((NURSING, PRESCRIPTION_ALL),),
        T.OBSERVATION: ((NURSING, OBSERVATION_ALL),),
        T.CONDITION: ((NURSING, CONDITION_ALL),),
        T.CARE_TEAM: ((NURSING, CARE_TEAM_ALL),),
        T.DIAGNOSTIC_REPORT: ((NURSING, DIAGNOSTIC_REPORT_ALL),),
        T.CONSENT: ((NURSING, CONSENT_ALL),),
        # Nurses see the lab orders (samples to take, results awaited); physicians order them.
        T.SERVICE_REQUEST: ((NURSING, SERVICE_REQUEST_ALL),),
        **{t: ((NURSING, INTERVENTION_ALL),) for t in INTERVENTIONS},
    },
    Role.FRONT_DESK: {
        T.PATIENT: ((IN_FACILITY, PATIENT_ALL),),
        T.APPOINTMENT: ((IN_FACILITY, APPOINTMENT_ADMIN),),
        # The desk records a patient's opposition to other facilities, so it sees those decisions.
        T.CONSENT: ((IN_FACILITY, CONSENT_ALL),),
        T.COVERAGE: ((IN_FACILITY, COVERAGE_ALL),),
        T.CARD_READING: ((IN_FACILITY, CARD_READING_ALL),),
    },
    Role.BILLING: {
        T.PATIENT: ((IN_FACILITY, PATIENT_IDENTITY),),
        T.COVERAGE: ((IN_FACILITY, COVERAGE_ALL),),
        T.CARD_READING: ((IN_FACILITY, CARD_READING_ALL),),
        T.INVOICE: ((IN_FACILITY, INVOICE_ALL),),
    },
    Role.PATIENT: {resource: ((SELF, fields),) for resource, fields in ALL_FIELDS.items()},
    Role.SYSTEM_ADMINISTRATOR: {},
    Role.SECURITY_OFFICER: {},
    # A Backend Services client reads patients of the facility it is registered for, by no
    # care relationship (it has none); its token's scopes narrow this per resource type.
    Role.API_CLIENT: {
        resource: ((frozenset({R.FACILITY}), ALL_FIELDS[resource]),)
        for resource in (
            T.PATIENT,
            T.APPOINTMENT,
            T.ENCOUNTER,
            T.ALLERGY,
            T.NOTE,
            T.PRESCRIPTION,
            T.OBSERVATION,
            T.CONDITION,
            T.DIAGNOSTIC_REPORT,
            *INTERVENTIONS,
        )
    },
    Role.INTERFACE: {},  # write-only: an interface reads nothing back beyond its ACK
    Role.INTEGRATION: {},
}

# Writes: which relationships let a role write a resource (creation of a patient: FACILITY).
WRITE_RULES: Mapping[Role, Mapping[ResourceType, frozenset[Relationship]]] = {
    Role.PHYSICIAN: {
        # Not by break-the-glass alone, for writes that would outlast its hour: naming oneself the
        # designated physician, booking oneself an appointment (both are care relationships), or
        # withdrawing the patient's opposition to other facilities. Emergency care (notes,
        # prescriptions, allergies, results) is written under it.
        T.PATIENT: CLINICAL - {R.BREAK_GLASS},  # registration is phi:patient:create (no relationship yet)
        T.APPOINTMENT: CLINICAL - {R.BREAK_GLASS},
        T.ALLERGY: CLINICAL,
        T.NOTE: CLINICAL,
        T.PRESCRIPTION: CLINICAL,
        T.CONSENT: CLINICAL - {R.BREAK_GLASS},
        # Admission, transfer and discharge of a patient already in one's care. Not by
        # break-the-glass alone: a stay makes its attending a care relationship, which would
        # outlast the one-hour, one-patient emergency access.
        T.ENCOUNTER: CLINICAL - {R.BREAK_GLASS},
        # Correcting a result or a lab report makes no care relationship: emergency care may
        # correct one under break-the-glass (the correction is audited as break-the-glass).
        T.OBSERVATION: CLINICAL,
        T.DIAGNOSTIC_REPORT: CLINICAL,
        # Problems and diagnoses (ICD-10) are a physician's: recorded in an emergency too, since
        # a diagnosis opens no access to the patient.
        T.CONDITION: CLINICAL,
        # Referring a patient to a colleague, adding one to the care team, or ending either. Not
        # by break-the-glass (an hour's emergency access must not buy a colleague, or an
        # accomplice, months of it), and not by a referral: a consultant referred the patient
        # answers the physician who referred them rather than widening the circle onward
        # (each hop would otherwise restart the clock). Self-referral is refused by the gate.
        T.CARE_TEAM: CLINICAL - {R.BREAK_GLASS, R.REFERRAL},
        # Lab orders: emergency care orders tests under break-the-glass too (an order opens no
        # access to the patient).
        T.SERVICE_REQUEST: CLINICAL,
        # What was done or given: recorded as care is, in an emergency too.
        **{t: CLINICAL for t in INTERVENTIONS},
    },
    # Nurses record vital signs; lab reports are signed by a physician (or imported), and so are
    # diagnoses (a nurse reads the problem list but does not make a medical diagnosis).
    Role.NURSE: {
        T.ALLERGY: NURSING,
        T.NOTE: NURSING,
        T.OBSERVATION: NURSING,
        # Nurses vaccinate and give medications; procedures are recorded by the physician.
        T.IMMUNIZATION: NURSING,
        T.MEDICATION_ADMINISTRATION: NURSING,
        T.MEDICATION_STATEMENT: NURSING,
    },
    # A patient records (or withdraws) their own privacy decisions.
    Role.PATIENT: {T.CONSENT: SELF},
    Role.FRONT_DESK: {
        T.PATIENT: IN_FACILITY,
        T.APPOINTMENT: IN_FACILITY,
        T.CONSENT: IN_FACILITY,
        T.CARD_READING: IN_FACILITY,
    },
    Role.BILLING: {T.CARD_READING: IN_FACILITY, T.INVOICE: IN_FACILITY},
    # An HL7 v2 interface feeds the facility it is registered for: admissions and identity (ADT),
    # results and lab reports (ORU). Any patient of that facility, none elsewhere; nothing read.
    Role.INTERFACE: {
        T.PATIENT: frozenset({R.FACILITY}),
        T.ENCOUNTER: frozenset({R.FACILITY}),
        T.OBSERVATION: frozenset({R.FACILITY}),
        T.DIAGNOSTIC_REPORT: frozenset({R.FACILITY}),
        # Results that answer an order move the order on (completed when final).
        T.SERVICE_REQUEST: frozenset({R.FACILITY}),
    },
    # A Backend Services client (a lab, a hub) writes in the facility it is registered for,
    # within its token's scopes.
    Role.API_CLIENT: {
        T.PATIENT: frozenset({R.FACILITY}),
        T.ENCOUNTER: frozenset({R.FACILITY}),
        T.OBSERVATION: frozenset({R.FACILITY}),
        T.DIAGNOSTIC_REPORT: frozenset({R.FACILITY}),
        T.CONDITION: frozenset({R.FACILITY}),
        T.ALLERGY: frozenset({R.FACILITY}),
        **{t: frozenset({R.FACILITY}) for t in INTERVENTIONS},
    },
}

READ_PERMISSION: Mapping[ResourceType, Permission] = {
    T.PATIENT: Permission.PATIENT_READ,
    T.APPOINTMENT: Permission.APPOINTMENT_READ,
    T.ENCOUNTER: Permission.ENCOUNTER_READ,
    T.ALLERGY: Permission.ALLERGY_READ,
    T.NOTE: Permission.NOTE_READ,
    T.PRESCRIPTION: Permission.PRESCRIPTION_READ,
    T.COVERAGE: Permission.COVERAGE_READ,
    T.CARD_READING: Permission.CARD_READING_READ,
    T.INVOICE: Permission.INVOICE_READ,
    T.OBSERVATION: Permission.OBSERVATION_READ,
    T.CONDITION: Permission.CONDITION_READ,
    T.CARE_TEAM: Permission.PATIENT_READ,
    T.DIAGNOSTIC_REPORT: Permission.OBSERVATION_READ,
    T.CONSENT: Permission.PATIENT_READ,
    T.SERVICE_REQUEST: Permission.ORDER_READ,
    T.IMMUNIZATION: Permission.IMMUNIZATION_READ,
    T.PROCEDURE: Permission.PROCEDURE_READ,
    T.MEDICATION_ADMINISTRATION: Permission.PRESCRIPTION_READ,
    T.MEDICATION_STATEMENT: Permission.PRESCRIPTION_READ,
    T.SPECIMEN: Permission.OBSERVATION_READ,  # read and written with the results measured on it
}

WRITE_PERMISSION: Mapping[ResourceType, Permission] = {
    T.PATIENT: Permission.PATIENT_UPDATE,
    T.APPOINTMENT: Permission.APPOINTMENT_WRITE,
    T.ENCOUNTER: Permission.ENCOUNTER_WRITE,
    T.OBSERVATION: Permission.OBSERVATION_WRITE,
    T.DIAGNOSTIC_REPORT: Permission.OBSERVATION_WRITE,
    T.CONDITION: Permission.CONDITION_WRITE,
    T.ALLERGY: Permission.ALLERGY_WRITE,
    T.NOTE: Permission.NOTE_WRITE,
    T.PRESCRIPTION: Permission.PRESCRIPTION_WRITE,
    T.CONSENT: Permission.CONSENT_WRITE,
    T.CARE_TEAM: Permission.CARE_TEAM_WRITE,
    T.CARD_READING: Permission.CARD_READING_WRITE,
    T.INVOICE: Permission.INVOICE_WRITE,
    T.SERVICE_REQUEST: Permission.ORDER_WRITE,
    T.IMMUNIZATION: Permission.IMMUNIZATION_WRITE,
    T.PROCEDURE: Permission.PROCEDURE_WRITE,
    T.MEDICATION_ADMINISTRATION: Permission.ADMINISTRATION_WRITE,
    T.MEDICATION_STATEMENT: Permission.ADMINISTRATION_WRITE,
    T.SPECIMEN: Permission.OBSERVATION_WRITE,
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    fields: frozenset[str]
    reason: str


def _roles(roles: Iterable[Role | str]) -> list[Role]:
    known = []
    for role in roles:
        try:
            known.append(Role(role))
        except ValueError:
            continue  # unknown roles grant nothing
    return sorted(known)


def _resource(resource: ResourceType | str) -> ResourceType | None:
    try:
        return ResourceType(resource)
    except ValueError:
        return None


def ever_reads(roles: Iterable[Role | str], resource: ResourceType) -> bool:
    """Whether any of these roles reads `resource` of some patient under some relationship: a
    chart section none of them ever opens is not worth asking the gate for (its refusal would
    count with the actor's denials)."""
    return any(READ_RULES.get(role, {}).get(resource) for role in _roles(roles))


@functools.cache
def _decided_by_facility_alone(roles: frozenset[Role]) -> bool:
    known = _roles(roles)
    if not known or any(READ_RULES.get(role) for role in known):
        return False
    return all(rels <= {R.FACILITY} for role in known for rels in WRITE_RULES.get(role, {}).values())


def decided_by_facility_alone(roles: Iterable[Role | str]) -> bool:
    """Whether these roles read nothing and write only by the facility relationship (an HL7
    interface): no care relationship (care team, appointment, stay...) can change one of their
    decisions, nor what they are shown (nothing), so the gate need not look them up."""
    return _decided_by_facility_alone(frozenset(_roles(roles)))


def readable_fields(
    role: Role, resource: ResourceType, relationships: Iterable[Relationship]
) -> frozenset[str]:
    """One cell of the permission matrix, for several relationships at once."""
    rels = set(relationships)
    fields: set[str] = set()
    for grant_rels, grant_fields in READ_RULES.get(role, {}).get(resource, ()):
        if grant_rels & rels:
            fields |= grant_fields
    return frozenset(fields)


# `decide`'s answers by their question. A decision is a pure function of its arguments and of
# this module's tables (READ_RULES, WRITE_RULES, ALL_FIELDS, the permissions), built at import and
# never changed (tests/access/test_policy.py asks both ways for every role, resource and
# relationship); Decision is frozen, so one answer can be handed to every caller.
_decisions: dict[tuple[Any, ...], Decision] = {}


def decide(
    *,
    roles: Iterable[Role | str],
    resource: ResourceType | str,
    relationships: Iterable[Relationship],
    write: bool = False,
    permission: Permission | None = None,
) -> Decision:
    """May an actor holding `roles`, related to a patient by `relationships`, read (or write) it?

    For a read, `fields` are the fields it may see; for a write, all the resource's fields.
    `permission` overrides the one implied (e.g. patient:create instead of patient:update).
    """
    # The answer depends on the set of roles and of relationships, not on their order.
    held = roles if isinstance(roles, frozenset) else frozenset(roles)
    rels = relationships if isinstance(relationships, frozenset) else frozenset(relationships)
    key = (held, resource, rels, write, permission)
    found = _decisions.get(key)
    if found is None:
        found = _decide(roles=held, resource=resource, relationships=rels, write=write, permission=permission)
        if len(_decisions) > 10_000:
            _decisions.clear()
        _decisions[key] = found
    return found


def _decide(
    *,
    roles: Iterable[Role | str],
    resource: ResourceType | str,
    relationships: Iterable[Relationship],
    write: bool,
    permission: Permission | None,
) -> Decision:
    """`decide`, computed."""
    kind = _resource(resource)
    if kind is None:
        return Decision(False, frozenset(), f"unknown resource type {str(resource)[:40]!r}")
    known = _roles(roles)
    if not known:
        return Decision(False, frozenset(), "no known role")
    needed = permission or (WRITE_PERMISSION.get(kind) if write else READ_PERMISSION.get(kind))
    rels = frozenset(relationships)
    reasons: list[str] = []
    fields: set[str] = set()
    for role in known:
        if needed is None or needed not in permissions_of([role]):
            continue
        if write:
            granted = WRITE_RULES.get(role, {}).get(kind, frozenset()) & rels
            if granted:
                fields |= ALL_FIELDS[kind]
                reasons.append(f"{role.value} writes {kind.value} by {','.join(sorted(granted))}")
        else:
            cell = readable_fields(role, kind, rels)
            if cell:
                fields |= cell
                reasons.append(f"{role.value} reads {kind.value} by {','.join(sorted(rels))}")
    if not fields:
        verb = "write" if write else "read"
        return Decision(False, frozenset(), f"no role may {verb} {kind.value} by {','.join(sorted(rels))}")
    return Decision(True, frozenset(fields), "; ".join(reasons))


def granting_relationships(
    *, roles: Iterable[Role | str], resource: ResourceType, write: bool = False
) -> frozenset[Relationship]:
    """Every relationship that opens `resource` to one of `roles`: the SQL filter of a list."""
    found: set[Relationship] = set()
    for rel in Relationship:
        if decide(roles=roles, resource=resource, relationships=[rel], write=write).allowed:
            found.add(rel)
    return frozenset(found)


def matrix() -> list[tuple[Role, ResourceType, Relationship, frozenset[str]]]:
    """The whole read matrix, one row per (role, resource, relationship) that opens any field."""
    rows = []
    for role in Role:
        for resource in ResourceType:
            for rel in Relationship:
                decision = decide(roles=[role], resource=resource, relationships=[rel])
                if decision.allowed:
                    rows.append((role, resource, rel, decision.fields))
    return rows
