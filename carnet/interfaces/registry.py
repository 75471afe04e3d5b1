"""Registering an HL7 v2 interface: its own account (kind `interface`, role interface at one
facility, no password), a practitioner entry that authors what it writes, and its limits."""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
import zoneinfo
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.identity.models import Account
from carnet.interfaces.hl7v2 import SUPPORTED_TYPES
from carnet.interfaces.models import Interface
from carnet.kernel import clock
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.org.models import Facility, Practitioner

NAME = re.compile(r"[A-Za-z0-9_.-]{2,60}")
# No password can match this: an interface never signs in, it connects over MLLP.
NO_PASSWORD = "!interface: no password, MLLP connections only"


@dataclass(frozen=True)
class InterfaceSummary:
    """What `carnet interfaces list` shows: no secret, no patient data."""

    name: str
    sending_facility: str
    facility_id: uuid.UUID
    message_types: list[str]
    source_addresses: list[str]
    client_certificate: bool
    per_minute: int
    status: str


def register_interface(
    session: Session,
    *,
    name: str,
    sending_facility: str,
    facility_id: uuid.UUID,
    message_types: list[str],
    source_addresses: list[str],
    client_cert_sha256: str | None,
    per_minute: int,
    timezone: str = "Europe/Paris",
) -> uuid.UUID:
    """Register an interface (checked whole first: bad input changes nothing)."""
    if not NAME.fullmatch(name) or not NAME.fullmatch(sending_facility):
        raise InvalidInput("the name (MSH-3) and facility (MSH-4) are 2 to 60 of A-Z a-z 0-9 . _ -")
    types = sorted(set(message_types))
    unknown = [t for t in types if t not in SUPPORTED_TYPES]
    if not types or unknown:
        raise InvalidInput("message types are among: " + ", ".join(sorted(SUPPORTED_TYPES)))
    networks: list[str] = []
    for address in source_addresses:
        try:
            networks.append(str(ipaddress.ip_network(address, strict=False)))
        except ValueError:
            raise InvalidInput("a source address is an IP address or network (e.g. 10.1.2.0/24)") from None
    cert = (client_cert_sha256 or "").replace(":", "").lower() or None
    if cert is not None and not re.fullmatch(r"[0-9a-f]{64}", cert):
        raise InvalidInput("the client certificate is named by its SHA-256 fingerprint (64 hex digits)")
    if not networks and cert is None:
        raise InvalidInput("an interface connects from registered addresses, or with a client certificate")
    if not 1 <= per_minute <= 100_000:
        raise InvalidInput("the volume is 1 to 100,000 messages a minute")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("unknown time zone (e.g. Europe/Paris)") from None
    if session.get(Facility, facility_id) is None:
        raise InvalidInput("unknown facility")
    if session.scalar(select(Interface.id).where(Interface.name == name)) is not None:
        raise Conflict("an interface with this name is registered")
    now = clock.now()
    practitioner = Practitioner(
        facility_id=facility_id,
        rpps="I" + "".join(secrets.choice("0123456789") for _ in range(10)),  # not an RPPS number
        family=name,
        given="(interface)",
        profession="interface",
        specialty=None,
        active=True,
    )
    session.add(practitioner)
    session.flush()
    account = Account(
        username=f"interface:{name}",
        display_name=f"HL7 interface {name}",
        kind="interface",
        facility_id=facility_id,
        practitioner_id=practitioner.id,
        password_hash=NO_PASSWORD,
        status="active",
        created_at=now,
        password_changed_at=now,
    )
    session.add(account)
    session.flush()
    session.add(
        RoleGrant(
            account_id=account.id,
            role=Role.INTERFACE.value,
            facility_id=facility_id,
            status="active",
            requested_at=now,
            decided_at=now,
            reason="HL7 interface registered from the server's shell",
        )
    )
    row = Interface(
        name=name,
        sending_facility=sending_facility,
        facility_id=facility_id,
        account_id=account.id,
        message_types=" ".join(types),
        source_addresses=" ".join(networks),
        client_cert_sha256=cert,
        per_minute=per_minute,
        timezone=timezone,
        status="active",
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def list_interfaces(session: Session) -> list[InterfaceSummary]:
    rows = session.execute(select(Interface, Account.status).join(Account).order_by(Interface.name)).all()
    return [
        InterfaceSummary(
            name=i.name,
            sending_facility=i.sending_facility,
            facility_id=i.facility_id,
            message_types=i.message_types.split(),
            source_addresses=i.source_addresses.split(),
            client_certificate=i.client_cert_sha256 is not None,
            per_minute=i.per_minute,
            status=status if status != "active" else i.status,
        )
        for i, status in rows
    ]
