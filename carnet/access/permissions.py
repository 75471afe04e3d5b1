"""Permissions: one enum, `scope:resource:action`, and what each role holds.

A permission says what kind of action a role may attempt at all; carnet.access.policy then says,
per patient relationship, which fields of which resource it may see (minimum necessary).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from carnet.access.roles import Role


class Permission(StrEnum):
    PATIENT_READ = "phi:patient:read"
    PATIENT_SEARCH = "phi:patient:search"
    PATIENT_CREATE = "phi:patient:create"
    PATIENT_UPDATE = "phi:patient:update"
    # Merging duplicate records is identity vigilance: the desk (medical records office), not care.
    PATIENT_MERGE = "phi:patient:merge"
    DAY_LIST_READ = "phi:day-list:read"
    APPOINTMENT_READ = "phi:appointment:read"
    APPOINTMENT_WRITE = "phi:appointment:write"
    ENCOUNTER_READ = "phi:encounter:read"
    ENCOUNTER_WRITE = "phi:encounter:write"  # admit, transfer, discharge
    ALLERGY_READ = "phi:allergy:read"
    ALLERGY_WRITE = "phi:allergy:write"
    NOTE_READ = "phi:note:read"
    NOTE_WRITE = "phi:note:write"
    PRESCRIPTION_READ = "phi:prescription:read"
    PRESCRIPTION_WRITE = "phi:prescription:write"
    COVERAGE_READ = "phi:coverage:read"
    CARD_READING_READ = "phi:card-reading:read"
    CARD_READING_WRITE = "phi:card-reading:write"
    INVOICE_READ = "phi:invoice:read"
    INVOICE_WRITE = "phi:invoice:write"  # a payment received against an invoice
    OBSERVATION_READ = "phi:observation:read"
    OBSERVATION_WRITE = "phi:observation:write"  # observations, and lab reports grouping them
    CONDITION_READ = "phi:condition:read"
    CONDITION_WRITE = "phi:condition:write"  # problems and diagnoses (ICD-10)
    CONSENT_WRITE = "phi:consent:write"
    ORDER_READ = "phi:service-request:read"  # lab orders and their status
    ORDER_WRITE = "phi:service-request:write"  # ordering a test; results moving an order on
    # Immunizations given, procedures performed, medications administered or taken (the
    # patient's own statement): read as the chart is; written by whom does them.
    IMMUNIZATION_READ = "phi:immunization:read"
    IMMUNIZATION_WRITE = "phi:immunization:write"
    PROCEDURE_READ = "phi:procedure:read"
    PROCEDURE_WRITE = "phi:procedure:write"
    # A medication given (MedicationAdministration) or reported taken (MedicationStatement).
    ADMINISTRATION_WRITE = "phi:medication-administration:write"
    # Referring a patient, adding a colleague to their care team, ending either: each opens (or
    # closes) the chart to another practitioner, so only physicians hold it.
    CARE_TEAM_WRITE = "phi:care-team:write"
    HISTORY_READ = "phi:history:read"
    BREAK_GLASS = "access:break-glass:start"
    BREAK_GLASS_REVIEW = "access:break-glass:review"
    ROLE_GRANT_REQUEST = "admin:role-grant:request"
    ROLE_GRANT_DECIDE = "admin:role-grant:decide"
    AUDIT_READ = "audit:event:read"
    EXPORT_REQUEST = "phi:export:request"
    EXPORT_DECIDE = "access:export:decide"
    INTERFACE_LOG_READ = "integration:message-log:read"


P = Permission

_CLINICAL_READ = frozenset(
    {
        P.PATIENT_READ,
        P.PATIENT_SEARCH,
        P.DAY_LIST_READ,
        P.APPOINTMENT_READ,
        P.ENCOUNTER_READ,
        P.ALLERGY_READ,
        P.NOTE_READ,
        P.PRESCRIPTION_READ,
        P.OBSERVATION_READ,
        P.CONDITION_READ,
        P.IMMUNIZATION_READ,
        P.PROCEDURE_READ,
        P.HISTORY_READ,
        P.BREAK_GLASS,
        P.ORDER_READ,
    }
)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.PHYSICIAN: _CLINICAL_READ
    | {
        P.COVERAGE_READ,
        P.PATIENT_CREATE,
        P.PATIENT_UPDATE,
        P.APPOINTMENT_WRITE,
        P.ALLERGY_WRITE,
        P.NOTE_WRITE,
        P.PRESCRIPTION_WRITE,
        P.ENCOUNTER_WRITE,
        P.OBSERVATION_WRITE,
        P.CONDITION_WRITE,
        P.IMMUNIZATION_WRITE,
        P.PROCEDURE_WRITE,
        P.ADMINISTRATION_WRITE,
        P.EXPORT_REQUEST,
        P.CONSENT_WRITE,
        P.CARE_TEAM_WRITE,
        P.ORDER_WRITE,
    },
    Role.NURSE: _CLINICAL_READ
    | {P.ALLERGY_WRITE, P.NOTE_WRITE, P.OBSERVATION_WRITE, P.IMMUNIZATION_WRITE, P.ADMINISTRATION_WRITE},
    Role.FRONT_DESK: frozenset(
        {
            P.PATIENT_READ,
            P.PATIENT_SEARCH,
            P.PATIENT_CREATE,
            P.PATIENT_UPDATE,
            P.PATIENT_MERGE,
            P.APPOINTMENT_READ,
            P.APPOINTMENT_WRITE,
            P.HISTORY_READ,
            P.CONSENT_WRITE,
            # Admission reads the health card: the coverage it proves, never anything clinical.
            P.COVERAGE_READ,
            P.CARD_READING_READ,
            P.CARD_READING_WRITE,
        }
    ),
    Role.BILLING: frozenset(
        {
            P.PATIENT_READ,
            P.PATIENT_SEARCH,
            P.COVERAGE_READ,
            P.CARD_READING_READ,
            P.CARD_READING_WRITE,
            P.INVOICE_READ,
            P.INVOICE_WRITE,
            P.HISTORY_READ,
        }
    ),
    Role.PATIENT: frozenset(
        {
            P.PATIENT_READ,
            P.APPOINTMENT_READ,
            P.ENCOUNTER_READ,
            P.ALLERGY_READ,
            P.NOTE_READ,
            P.PRESCRIPTION_READ,
            P.COVERAGE_READ,
            P.CARD_READING_READ,
            P.INVOICE_READ,
            P.OBSERVATION_READ,
            P.CONDITION_READ,
            P.IMMUNIZATION_READ,
            P.PROCEDURE_READ,
            P.HISTORY_READ,
            P.ORDER_READ,
            P.CONSENT_WRITE,  # their own privacy decisions (the policy: SELF only)
        }
    ),
    # Administrators administer: no permission on patient data, by any path.
    Role.SYSTEM_ADMINISTRATOR: frozenset({P.ROLE_GRANT_REQUEST, P.ROLE_GRANT_DECIDE}),
    # A security officer approves exports (a second person) but never runs one.
    Role.SECURITY_OFFICER: frozenset({P.BREAK_GLASS_REVIEW, P.AUDIT_READ, P.EXPORT_DECIDE}),
    # A Backend Services client acting for itself: at most these, always narrowed by the
    # SMART scopes it registered and asked for (carnet.access.context.client_permissions), and
    # only for patients of the one facility it is registered for (carnet.access.policy).
    Role.API_CLIENT: frozenset(
        {
            P.PATIENT_READ,
            P.PATIENT_SEARCH,
            P.PATIENT_CREATE,
            P.PATIENT_UPDATE,
            P.APPOINTMENT_READ,
            P.ENCOUNTER_READ,
            P.ENCOUNTER_WRITE,
            P.ALLERGY_READ,
            P.ALLERGY_WRITE,
            P.NOTE_READ,
            P.PRESCRIPTION_READ,
            P.OBSERVATION_READ,
            P.OBSERVATION_WRITE,
            P.CONDITION_READ,
            P.CONDITION_WRITE,
            P.IMMUNIZATION_READ,
            P.IMMUNIZATION_WRITE,
            P.PROCEDURE_READ,
            P.PROCEDURE_WRITE,
            P.ADMINISTRATION_WRITE,
        }
    ),
    # An HL7 v2 interface writes admissions and results (carnet.interfaces); it holds no read
    # permission, and the policy gives it no field to read (WRITE_RULES only).
    Role.INTERFACE: frozenset(
        {
            P.PATIENT_CREATE,
            P.PATIENT_UPDATE,
            P.PATIENT_MERGE,
            P.ENCOUNTER_WRITE,
            P.OBSERVATION_WRITE,
            P.ORDER_WRITE,
        }
    ),
    # Integration staff read the interfaces' message log: ids and statuses, no patient data.
    Role.INTEGRATION: frozenset({P.INTERFACE_LOG_READ}),
}


def permissions_of(roles: Iterable[Role | str]) -> frozenset[Permission]:
    """Union of the roles' permissions; an unknown role contributes nothing (deny by default)."""
    if not isinstance(roles, frozenset):
        return _permissions_of(roles)
    # Asked on every request with the actor's roles: remembered per set of roles (ROLE_PERMISSIONS
    # is built at import and never changed; tests/access/test_policy.py asks both ways).
    found = _by_roles.get(roles)
    if found is None:
        found = _permissions_of(roles)
        if len(_by_roles) > 10_000:
            _by_roles.clear()
        _by_roles[roles] = found
    return found


_by_roles: dict[frozenset[Role | str], frozenset[Permission]] = {}


def _permissions_of(roles: Iterable[Role | str]) -> frozenset[Permission]:
    held: set[Permission] = set()
    for role in roles:
        try:
            held |= ROLE_PERMISSIONS.get(Role(role), frozenset())
        except ValueError:
            continue
    return frozenset(held)
