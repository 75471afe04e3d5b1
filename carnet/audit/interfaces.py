"""The audit contract the gate and identity rely on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sqlalchemy.orm import Session

from carnet.access.actor import Actor


class AuditKind(StrEnum):
    """Every kind of audited event: `scope:resource:action`. One enum, no scattered strings."""

    # patient data, through the gate
    PHI_READ = "phi:resource:read"
    PHI_SEARCH = "phi:resource:search"
    PHI_LIST = "phi:resource:list"
    PHI_HISTORY = "phi:resource:history"
    PHI_VALIDATE = "phi:resource:validate"  # FHIR $validate: checked like a write, changes nothing
    PHI_CREATE = "phi:resource:create"
    PHI_UPDATE = "phi:resource:update"
    PHI_DELETE = "phi:resource:delete"
    PHI_EXPORT = "phi:resource:export"
    # A document printed (prescription, invoice, receipt, discharge letter): its id in `query`.
    PHI_PRINT = "phi:resource:print"
    PHI_TRANSACTION = "phi:resource:transaction"  # a FHIR transaction Bundle: all or nothing
    PHI_MERGE = "phi:patient:merge"  # two records of one person made one (both patients named)
    PHI_UNMERGE = "phi:patient:unmerge"  # a merge done in error reversed (both patients named)
    PHI_SYSTEM_ACCESS = "phi:system:access"
    # a bulk export: asked with a purpose, decided by a second person (the export is PHI_EXPORT)
    PHI_EXPORT_REQUESTED = "phi:export:requested"
    PHI_EXPORT_APPROVED = "phi:export:approved"
    PHI_EXPORT_REJECTED = "phi:export:rejected"
    PHI_EXPORT_LISTED = "phi:export:listed"  # an officer's queue of requests (no patient data)
    # access policy
    BREAK_GLASS_START = "access:break-glass:start"
    BREAK_GLASS_LISTED = "access:break-glass:listed"
    BREAK_GLASS_REVIEWED = "access:break-glass:reviewed"
    ROLE_GRANT_REQUESTED = "access:role-grant:requested"
    ROLE_GRANT_APPROVED = "access:role-grant:approved"
    ROLE_GRANT_REJECTED = "access:role-grant:rejected"
    ROLE_REVOKED = "access:role:revoked"
    # identity
    LOGIN_SUCCESS = "account:login:success"
    LOGIN_FAILURE = "account:login:failure"
    LOGOUT = "account:logout"
    MFA_ENROLLED = "account:mfa:enrolled"
    MFA_REMOVED = "account:mfa:removed"
    STEP_UP = "account:mfa:step-up"
    # An access-widening action without a fresh proof by the person in this session (refused).
    STEP_UP_REFUSED = "account:step-up:refused"
    ACCOUNT_REENROLLED = "account:account:re-enrolled"  # its owner, in person, at the server
    RECOVERY_CODE_USED = "account:recovery-code:used"
    SESSION_REVOKED = "account:session:revoked"
    PASSWORD_CHANGED = "account:password:changed"
    ACCOUNT_CREATED = "account:account:created"
    ACCOUNT_SUSPENDED = "account:account:suspended"
    ACCOUNT_RESTORED = "account:account:restored"
    # An account opened by an administrator: its owner replaces the handed-over credentials first.
    ACCOUNT_SETUP_REFUSED = "account:setup:refused"  # a handover session asked for anything else
    ACCOUNT_SETUP_COMPLETED = "account:setup:completed"
    TOKEN_ISSUED = "client:token:issued"
    TOKEN_REVOKED = "client:token:revoked"
    API_CLIENT_REGISTERED = "client:client:registered"
    APP_AUTHORIZED = "client:app:authorized"
    APP_LAUNCHED = "client:app:launched"  # a SMART EHR launch from the chart
    # HL7 v2 interfaces (carnet.interfaces): registered, and their message log read
    INTERFACE_REGISTERED = "interface:interface:registered"
    INTERFACE_LOG_READ = "interface:message-log:read"
    # detection
    DETECTION_ALERT = "detection:alert:raised"
    CONTAINMENT = "detection:actor:contained"
    DETECTION_ALERTS_READ = "detection:alert:read"
    DETECTION_ALERT_ACKNOWLEDGED = "detection:alert:acknowledged"
    DETECTION_ALERT_FALSE_POSITIVE = "detection:alert:false-positive"
    RESTORE_REQUESTED = "detection:restore:requested"
    RESTORE_REJECTED = "detection:restore:rejected"
    INCIDENT_REPORT = "detection:incident:report"
    REDTEAM_SESSION = "redteam:session:minted"  # demo/test only: a stand-in for a stolen session
    # administration
    SETTING_CHANGED = "admin:setting:changed"
    ACCOUNTS_LISTED = "admin:account:listed"
    DIRECTORY_READ = "org:directory:read"  # practitioners, roles, facilities, locations (no patient data)
    AUDIT_PURGED = "audit:retention:purged"
    AUDIT_VERIFIED = "audit:chain:verified"
    AUDIT_EVENTS_READ = "audit:event:read"  # a security officer or a patient reads the trail
    # encryption keys (carnet keys rotate)
    KEK_ROTATED = "crypto:kek:rotated"
    KEK_RETIRED = "crypto:kek:retired"
    DATA_KEY_CREATED = "crypto:data-key:created"
    DATA_KEY_DESTROYED = "crypto:data-key:destroyed"
    DATA_REENCRYPTED = "crypto:data:reencrypted"


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True)
class AuditRecord:
    """What happened, by whom, to which patients, why, and the policy's reason.

    Never holds patient data itself: search values are reduced to parameter names.
    """

    kind: AuditKind
    outcome: Outcome
    actor: Actor
    resource_type: str | None = None
    resource_ids: Sequence[str] = ()
    patient_ids: Sequence[uuid.UUID] = ()
    query: str | None = None
    policy_reason: str | None = None
    break_glass_reason: str | None = None
    detail: dict[str, str] = field(default_factory=dict)


class AuditWriter(Protocol):
    """Appends audit events to the hash chain inside the caller's transaction.

    If `append` raises, the caller's transaction must roll back and no data may be returned:
    an access that cannot be audited does not happen.
    """

    def append(self, session: Session, record: AuditRecord) -> int:
        """Append one event; returns its sequence number."""
        ...
