"""Codes shown to people as words: roles, statuses, genders, record types, audit kinds.

Each English word is marked with N_ so `pybabel extract` (babel.cfg) puts it in the catalogue;
the template helper `label(group, code)` translates it at render time. A code with no word here
is shown as it is, so a new status is visible (and a French page test fails on it) rather than
hidden.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def N_(message: str) -> str:
    """gettext's conventional marker: extracted for translation, translated later."""
    return message


LABELS: dict[str, dict[str, str]] = {
    "role": {
        "physician": N_("Physician"),
        "nurse": N_("Nurse"),
        "front_desk": N_("Front desk"),
        "billing": N_("Billing office"),
        "system_administrator": N_("System administrator"),
        "security_officer": N_("Security officer"),
        "patient": N_("Patient"),
        "api_client": N_("Application"),
    },
    "gender": {
        "female": N_("female"),
        "male": N_("male"),
        "other": N_("other gender"),
        "unknown": N_("gender unknown"),
    },
    "appointment": {
        "proposed": N_("proposed"),
        "pending": N_("pending"),
        "booked": N_("booked"),
        "arrived": N_("arrived"),
        "checked-in": N_("checked in"),
        "fulfilled": N_("seen"),
        "cancelled": N_("cancelled"),
        "noshow": N_("did not come"),
        "entered-in-error": N_("entered in error"),
        "waitlist": N_("waiting list"),
    },
    "encounter": {
        "inpatient": N_("hospital stay"),
        "outpatient": N_("outpatient visit"),
        "emergency": N_("emergency"),
    },
    # Why a dose was not given (the administration record; carnet.interventions.schemas).
    "not-given": {
        "refused": N_("refused by the patient"),
        "asleep": N_("patient asleep"),
        "absent": N_("patient absent"),
        "vomited": N_("patient vomited"),
        "held-by-physician": N_("held by the physician"),
    },
    "prescription": {
        "active": N_("ongoing"),
        "on-hold": N_("on hold"),
        "stopped": N_("stopped"),
        "completed": N_("completed"),
        "cancelled": N_("cancelled"),
        "draft": N_("draft"),
        "entered-in-error": N_("entered in error"),
    },
    "allergy": {
        "active": N_("current allergy"),
        "inactive": N_("no longer current"),
        "resolved": N_("resolved"),
    },
    "criticality": {
        "low": N_("low risk"),
        "high": N_("high risk"),
        "unable-to-assess": N_("risk not assessed"),
    },
    "coverage": {
        "active": N_("in force"),
        "cancelled": N_("cancelled"),
        "draft": N_("draft"),
        "entered-in-error": N_("entered in error"),
    },
    "invoice": {
        "draft": N_("draft"),
        "issued": N_("issued, unpaid"),
        "balanced": N_("paid"),
        "cancelled": N_("cancelled"),
        "entered-in-error": N_("entered in error"),
    },
    "care_team": {
        "proposed": N_("proposed"),
        "active": N_("in charge"),
        "suspended": N_("suspended"),
        "inactive": N_("ended"),
        "entered-in-error": N_("entered in error"),
    },
    "coverage_kind": {
        "AMO": N_("statutory health insurance"),
        "AMC": N_("complementary insurance"),
        "mandatory": N_("statutory health insurance"),
        "complementary": N_("complementary insurance"),
    },
    "account": {
        "active": N_("active account"),
        "suspended": N_("suspended"),
        "disabled": N_("closed"),
        "contained": N_("contained"),
    },
    "grant": {
        "pending": N_("awaiting approval"),
        "active": N_("granted"),
        "rejected": N_("refused"),
        "revoked": N_("withdrawn"),
    },
    "alert": {
        "open": N_("to review"),
        "acknowledged": N_("acknowledged"),
        "false_positive": N_("false alarm"),
    },
    "level": {
        "record": N_("recorded"),
        "step-up": N_("step-up asked"),
        "throttle": N_("slowed down"),
        "contain": N_("contained"),
    },
    "rule": {
        "volume": N_("unusual volume"),
        "outside-care": N_("patients outside their care"),
        "outside-work": N_("patients with no business at the facility"),
        "weekly-volume": N_("unusual weekly volume"),
        "enumeration": N_("enumeration"),
        "deep-paging": N_("deep paging"),
        "canary": N_("decoy patient opened"),
        "no-patient-data-role": N_("patient data read by a role that reads none"),
        "denials": N_("repeated refusals"),
        "off-hours": N_("off-hours activity"),
        "new-address": N_("new network address"),
        "export": N_("export"),
        "api-client-volume": N_("application volume"),
        "persistence": N_("persistent activity"),
        "break-glass": N_("emergency access"),
        "care-relationships": N_("many referrals or care-team additions"),
    },
    "outcome": {
        "success": N_("done"),
        "denied": N_("refused"),
        "error": N_("failed"),
    },
    "purpose": {
        "TREAT": N_("care"),
        "ETREAT": N_("emergency care"),
        "HPAYMT": N_("billing"),
        "HOPERAT": N_("running the hospital"),
        "PATRQT": N_("your request"),
        "HSYSADMIN": N_("security"),
    },
    "resource": {
        "Patient": N_("identity and contact details"),
        "Appointment": N_("appointments"),
        "Encounter": N_("stays and visits"),
        "AllergyIntolerance": N_("allergies"),
        "DocumentReference": N_("notes"),
        "MedicationRequest": N_("prescriptions"),
        "Coverage": N_("health insurance"),
        "CardReading": N_("health card readings"),
        "Invoice": N_("invoices"),
        "Observation": N_("results and vital signs"),
        "Condition": N_("problems and diagnoses"),
        "CareTeam": N_("care team"),
        "DiagnosticReport": N_("lab reports"),
        "Consent": N_("privacy choices"),
        "Provenance": N_("record history"),
        "AuditEvent": N_("access log"),
        "Alert": N_("alert"),
        "Timeline": N_("timeline"),
        "Account": N_("user account"),
        "ApiClient": N_("application"),
        "RestoreRequest": N_("restore request"),
        "RoleGrant": N_("role"),
        "IncidentReport": N_("incident report"),
        "Facility": N_("facility"),
        "Bundle": N_("batch of records"),
        "AuditChain": N_("audit trail"),
        "ActorState": N_("account state"),
        "ExportRequest": N_("export request"),
    },
    "source": {
        "exposure": N_("data shown"),
        "audit": N_("audited action"),
        "detection": N_("detection"),
    },
    "channel": {
        "chart": N_("patients shown in a chart"),
        "search": N_("patients shown in search results"),
        "list": N_("patients shown in a list"),
        "export": N_("patients exported"),
        "report": N_("patients shown in a report"),
        "write": N_("patients whose record was written"),
    },
    "detection": {
        "search": N_("searched for patients"),
        "identifier-search": N_("searched by identifier"),
        "wildcard-search": N_("ran a broad search"),
        "deep-page": N_("paged deep into results"),
        "list-view": N_("opened a list of patients"),
        "denial": N_("was refused access"),
        "export-denial": N_("was refused an export"),
        "refusal": N_("did not pass a step-up or a throttle"),
    },
    # Audit kinds (carnet.audit.interfaces.AuditKind) as sentences.
    "audit": {
        "phi:resource:read": N_("opened a patient record"),
        "phi:resource:search": N_("searched for patients"),
        "phi:resource:list": N_("listed patient records"),
        "phi:resource:history": N_("read the history of a record"),
        "phi:resource:create": N_("added to a patient record"),
        "phi:resource:update": N_("changed a patient record"),
        "phi:resource:delete": N_("removed something from a patient record"),
        "phi:resource:export": N_("exported patient records"),
        "phi:resource:print": N_("printed a patient document"),
        "phi:resource:transaction": N_("sent a batch of changes"),
        "phi:patient:merge": N_("merged two records of one patient"),
        "phi:patient:unmerge": N_("separated two records merged by mistake"),
        "phi:system:access": N_("processed records (system task)"),
        "phi:export:requested": N_("asked for a bulk export"),
        "phi:export:approved": N_("approved a bulk export"),
        "phi:export:rejected": N_("refused a bulk export"),
        "phi:export:listed": N_("read the queue of export requests"),
        "access:break-glass:start": N_("started an emergency access"),
        "access:break-glass:listed": N_("read the list of emergency accesses"),
        "access:break-glass:reviewed": N_("reviewed an emergency access"),
        "access:role-grant:requested": N_("asked for a role to be granted"),
        "access:role-grant:approved": N_("approved a role"),
        "access:role-grant:rejected": N_("refused a role"),
        "access:role:revoked": N_("withdrew a role"),
        "account:login:success": N_("signed in"),
        "account:login:failure": N_("failed to sign in"),
        "account:logout": N_("signed out"),
        "account:mfa:enrolled": N_("registered a second factor"),
        "account:mfa:removed": N_("removed a second factor"),
        "account:mfa:step-up": N_("confirmed their identity again"),
        "account:recovery-code:used": N_("used a recovery code"),
        "account:session:revoked": N_("had a session closed"),
        "account:password:changed": N_("changed their password"),
        "account:account:created": N_("opened an account"),
        "account:account:suspended": N_("suspended an account"),
        "account:account:restored": N_("restored an account"),
        "account:setup:refused": N_("was refused an action before finishing account setup"),
        "account:setup:completed": N_("finished setting up their account"),
        "client:token:issued": N_("issued an access token"),
        "client:token:revoked": N_("revoked an access token"),
        "client:client:registered": N_("registered an application"),
        "client:app:authorized": N_("authorised an application"),
        "client:app:launched": N_("launched an application from a chart"),
        "detection:alert:raised": N_("raised a security alert"),
        "detection:actor:contained": N_("contained an account"),
        "detection:alert:read": N_("read security alerts"),
        "detection:alert:acknowledged": N_("acknowledged an alert"),
        "detection:alert:false-positive": N_("marked an alert as a false alarm"),
        "detection:restore:requested": N_("asked to restore a contained account"),
        "detection:restore:rejected": N_("refused to restore a contained account"),
        "detection:incident:report": N_("wrote an incident report"),
        "redteam:session:minted": N_("opened a simulated session (exercise)"),
        "admin:setting:changed": N_("changed a setting"),
        "admin:account:listed": N_("listed accounts"),
        "org:directory:read": N_("read the staff directory"),
        "audit:retention:purged": N_("purged old audit events"),
        "audit:chain:verified": N_("verified the audit trail"),
        "audit:event:read": N_("read the audit trail"),
        "crypto:kek:rotated": N_("rotated an encryption key"),
        "crypto:kek:retired": N_("retired an encryption key"),
        "crypto:data-key:created": N_("created a data key"),
        "crypto:data-key:destroyed": N_("destroyed a data key"),
        "crypto:data:reencrypted": N_("re-encrypted data"),
    },
}

# What detection.services writes on a timeline: "<kind> (<outcome>)[ from <address>]" for an
# audited action, "shown through <channel>" for an exposure.
_AUDITED = re.compile(
    r"^(?P<kind>[a-z-]+:[a-z-]+:[a-z-]+) \((?P<outcome>[a-z]+)\)(?: from (?P<address>.+))?$"
)
_SHOWN = re.compile(r"^shown through (?P<channel>[a-z]+)$")


def label(gettext: Callable[[str], str], group: str, code: str | None) -> str:
    """The word for `code` in `group`, translated; the code itself when it has no word."""
    if code is None or code == "":
        return ""
    word = LABELS.get(group, {}).get(code)
    return gettext(word) if word is not None else code


def timeline_sentence(gettext: Callable[[str], str], source: str, what: str) -> str:
    """A security timeline's line as a sentence: 'listed patient records — failed, from 10.0.0.7'."""
    if source == "audit" and (m := _AUDITED.match(what)):
        sentence = f"{label(gettext, 'audit', m['kind'])} — {label(gettext, 'outcome', m['outcome'])}"
        if m["address"]:
            sentence += " " + gettext("from %(address)s") % {"address": m["address"]}
        return sentence
    if source == "exposure" and (m := _SHOWN.match(what)):
        return label(gettext, "channel", m["channel"])
    if source == "detection":
        return label(gettext, "detection", what)
    return what
