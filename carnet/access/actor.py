"""Who is asking. Built by carnet.identity from a session or token; consumed by the gate."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from carnet.access.roles import PRIVILEGED_ROLES, Role


class ActorKind(StrEnum):
    STAFF = "staff"
    PATIENT = "patient"
    CLIENT = "client"  # an OAuth API client acting for itself (SMART Backend Services)
    INTERFACE = "interface"  # an HL7 v2 interface (carnet.interfaces): its own account, write-only
    SYSTEM = "system"  # carnet itself, through the one audited elevated door


class PurposeOfUse(StrEnum):
    """HL7 v3 PurposeOfUse codes carnet accepts."""

    TREATMENT = "TREAT"
    EMERGENCY = "ETREAT"  # break-the-glass
    PAYMENT = "HPAYMT"
    OPERATIONS = "HOPERAT"
    PATIENT_REQUEST = "PATRQT"
    SECURITY = "HSYSADMIN"


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    username: str
    roles: frozenset[Role]
    account_id: uuid.UUID | None = None
    facility_id: uuid.UUID | None = None
    practitioner_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    client_id: str | None = None
    address: str | None = None
    user_agent: str | None = None
    purpose_of_use: PurposeOfUse = PurposeOfUse.TREATMENT
    # SMART scopes of a token; None for a browser session (roles alone decide).
    scopes: frozenset[str] | None = None
    # The launch patient of an app token holding patient/ scopes: the gate confines every
    # access to this one patient (SMART App Launch).
    compartment_patient_id: uuid.UUID | None = None
    # When the second factor was last proven in this session (step-up freshness).
    second_factor_at: dt.datetime | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_privileged(self) -> bool:
        return bool(self.roles & PRIVILEGED_ROLES)

    @cached_property
    def actor_ref(self) -> str:
        """A stable reference for ledgers and audit: the account id, or the API client id.

        Computed once per actor (asked a dozen times by a read: detection, audit): the fields it
        is made of are frozen, and `dataclasses.replace` makes a new actor, computed afresh. Kept
        in the instance's `__dict__`, which is no field: equality and hashing ignore it."""
        if self.account_id is not None:
            return f"account:{self.account_id}"
        if self.client_id is not None:
            return f"client:{self.client_id}"
        return f"{self.kind.value}:{self.username}"
