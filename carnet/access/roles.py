"""Roles. What each role may do is decided in carnet.access.policy."""

from enum import StrEnum


class Role(StrEnum):
    PHYSICIAN = "physician"
    NURSE = "nurse"
    FRONT_DESK = "front_desk"
    BILLING = "billing"
    SYSTEM_ADMINISTRATOR = "system_administrator"
    SECURITY_OFFICER = "security_officer"
    PATIENT = "patient"
    API_CLIENT = "api_client"
    # An HL7 v2 interface (admissions, results): writes through the gate, reads nothing back.
    INTERFACE = "interface"
    # Integration staff: read the interfaces' message log (control ids, statuses, patient ids).
    INTEGRATION = "integration"


# Roles that must use a phishing-resistant second factor (WebAuthn).
PRIVILEGED_ROLES = frozenset({Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER})

# Roles whose holders read patient data: granting one needs a second administrator.
PATIENT_DATA_ROLES = frozenset({Role.PHYSICIAN, Role.NURSE, Role.FRONT_DESK, Role.BILLING})

STAFF_ROLES = frozenset(Role) - {Role.PATIENT, Role.API_CLIENT, Role.INTERFACE}
