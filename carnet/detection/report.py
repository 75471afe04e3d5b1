"""The breach-scope report: exactly which patients an actor's data left for, with which fields
and when — the notification list of GDPR articles 33 and 34.

The list is the union of the exposure ledger and the audit trail (both written in the gate's
transaction, so they agree; the summary says so, or names the difference). Contact details are
decrypted through the audited elevated door, and the files are readable by their owner only.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.models import AuditEvent, AuditEventPatient
from carnet.detection.models import Exposure
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.runtime import Runtime

# Audited kinds whose patients had data leave the server (a write echoes the record back).
EXPOSING_KINDS = (
    AuditKind.PHI_READ,
    AuditKind.PHI_SEARCH,
    AuditKind.PHI_LIST,
    AuditKind.PHI_HISTORY,
    AuditKind.PHI_EXPORT,
    AuditKind.PHI_PRINT,
    AuditKind.PHI_CREATE,
    AuditKind.PHI_UPDATE,
)
# When the gate did not name the fields, what a resource type shows of a patient.
PATIENT_FIELDS = ("name", "birth_date", "gender", "address", "phone", "email", "ins")
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "Patient": PATIENT_FIELDS,
}
_BASIC = ("name", "birth_date")

CSV_COLUMNS = (
    "patient_id",
    "family",
    "given",
    "birth_date",
    "address",
    "phone",
    "email",
    "first_exposed_at",
    "last_exposed_at",
    "times",
    "channels",
    "resource_types",
    "fields",
    "sources",
)


@dataclass
class ExposedPatient:
    patient_id: uuid.UUID
    first_at: dt.datetime
    last_at: dt.datetime
    times: int = 0
    channels: set[str] = field(default_factory=set)
    resource_types: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)

    def see(self, at: dt.datetime, source: str) -> None:
        self.first_at = min(self.first_at, at)
        self.last_at = max(self.last_at, at)
        self.sources.add(source)


@dataclass(frozen=True)
class IncidentScope:
    actor_ref: str
    username: str
    since: dt.datetime
    until: dt.datetime
    patients: list[ExposedPatient]
    ledger_rows: int
    audit_events: int

    @property
    def only_in_ledger(self) -> int:
        return sum(1 for p in self.patients if p.sources == {"ledger"})

    @property
    def only_in_audit(self) -> int:
        return sum(1 for p in self.patients if p.sources == {"audit"})


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    csv: Path
    json: Path
    summary: Path
    patients: int


def resolve_actor(session: Session, actor: str) -> tuple[str, str]:
    """A username, or `client:<id>` / `account:<uuid>`, to (actor_ref, display name)."""
    actor = actor.strip()
    if actor.startswith(("client:", "account:")):
        return actor, actor
    account = session.scalar(select(Account).where(Account.username == actor))
    if account is None:
        raise NotFound(f"no account named {actor!r}")
    return f"account:{account.id}", account.username


def incident_scope(session: Session, *, actor: str, since: dt.datetime, until: dt.datetime) -> IncidentScope:
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidInput("times must carry a timezone (or be given as UTC)")
    if until <= since:
        raise InvalidInput("--until must come after --since")
    actor_ref, username = resolve_actor(session, actor)
    patients: dict[uuid.UUID, ExposedPatient] = {}

    def entry(pid: uuid.UUID, at: dt.datetime) -> ExposedPatient:
        found = patients.get(pid)
        if found is None:
            found = patients[pid] = ExposedPatient(pid, at, at)
        return found

    ledger_rows = 0
    rows = session.execute(
        select(Exposure.patient_id, Exposure.at, Exposure.channel, Exposure.resource_type, Exposure.fields)
        .where(Exposure.actor_ref == actor_ref, Exposure.at >= since, Exposure.at < until)
        .execution_options(yield_per=5000)
    )
    for pid, at, channel, resource_type, fields in rows:
        ledger_rows += 1
        item = entry(pid, at)
        item.see(at, "ledger")
        item.times += 1
        item.channels.add(channel)
        item.resource_types.add(resource_type)
        item.fields.update(_fields(fields, resource_type))

    audit_events: set[int] = set()
    audited = session.execute(
        select(AuditEventPatient.patient_id, AuditEvent.seq, AuditEvent.recorded_at, AuditEvent.resource_type)
        .join(AuditEvent, AuditEvent.seq == AuditEventPatient.seq)
        .where(
            AuditEvent.actor_ref == actor_ref,
            AuditEvent.recorded_at >= since,
            AuditEvent.recorded_at < until,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.kind.in_([k.value for k in EXPOSING_KINDS]),
        )
        .execution_options(yield_per=5000)
    )
    for pid, seq, at, audited_type in audited:
        audit_events.add(seq)
        item = entry(pid, at)
        item.see(at, "audit")
        if audited_type:
            item.resource_types.add(audited_type)
            if "ledger" not in item.sources:
                item.fields.update(_fields(None, audited_type))
    ordered = sorted(patients.values(), key=lambda p: (p.first_at, str(p.patient_id)))
    return IncidentScope(actor_ref, username, since, until, ordered, ledger_rows, len(audit_events))


def _fields(named: str | None, resource_type: str) -> Iterable[str]:
    if named:
        return named.split(",")
    return DEFAULT_FIELDS.get(resource_type, (*_BASIC, resource_type.lower()))


def write_report(
    runtime: Runtime,
    *,
    actor: str,
    since: dt.datetime,
    until: dt.datetime | None,
    out: Path | None,
    operator: str,
) -> ReportFiles:
    """Build the scope, decrypt contacts through the audited door, write CSV, JSON, summary."""
    from carnet.phi.notification import notification_contacts
    from carnet.phi.system import system_access

    until = until or clock.now()
    with runtime.session_factory() as session:
        scope = incident_scope(session, actor=actor, since=since, until=until)
    reason = (
        f"incident report for {scope.username} ({scope.actor_ref}) from {since.isoformat()} "
        f"to {until.isoformat()}: breach notification (GDPR art. 33/34)"
    )
    with system_access(runtime, reason=reason, operator=operator) as access:
        contacts = notification_contacts(
            access, patient_ids=[p.patient_id for p in scope.patients], purpose=reason
        )
        runtime.audit.append(
            access.session,
            _report_audit(access.actor, scope),
        )
    generated = clock.now()
    directory = out or runtime.settings.var_dir / "incidents" / (
        f"{_safe(scope.username)}-{generated.strftime('%Y%m%dT%H%M%SZ')}"
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    records = []
    for p in scope.patients:
        c = contacts.get(p.patient_id)
        records.append(
            {
                "patient_id": str(p.patient_id),
                "family": c.family if c else None,
                "given": c.given if c else None,
                "birth_date": c.birth_date if c else None,
                "address": c.address if c else None,
                "phone": c.phone if c else None,
                "email": c.email if c else None,
                "first_exposed_at": p.first_at.isoformat(),
                "last_exposed_at": p.last_at.isoformat(),
                "times": p.times,
                "channels": sorted(p.channels),
                "resource_types": sorted(p.resource_types),
                "fields": sorted(p.fields),
                "sources": sorted(p.sources),
            }
        )
    csv_path, json_path, summary_path = (
        directory / "patients.csv",
        directory / "patients.json",
        directory / "summary.md",
    )
    with _private(csv_path) as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in records:
            writer.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in record.items()})
    with _private(json_path) as handle:
        json.dump(
            {
                "actor": scope.actor_ref,
                "username": scope.username,
                "since": since.isoformat(),
                "until": until.isoformat(),
                "generated_at": generated.isoformat(),
                "patients": records,
            },
            handle,
            ensure_ascii=False,
            indent=1,
        )
    with _private(summary_path) as handle:
        handle.write(summary(scope, generated=generated, missing=len(scope.patients) - len(contacts)))
    return ReportFiles(directory, csv_path, json_path, summary_path, len(scope.patients))


def _report_audit(system_actor: Actor, scope: IncidentScope) -> AuditRecord:
    return AuditRecord(
        kind=AuditKind.INCIDENT_REPORT,
        outcome=Outcome.SUCCESS,
        actor=system_actor,
        resource_type="IncidentReport",
        resource_ids=(scope.actor_ref,),
        detail={
            "since": scope.since.isoformat(),
            "until": scope.until.isoformat(),
            "patients": str(len(scope.patients)),
        },
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)[:60] or "actor"


@contextmanager
def _private(path: Path) -> Iterator[TextIO]:
    """A new file readable by its owner only (it holds patient identities)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle


def summary(scope: IncidentScope, *, generated: dt.datetime, missing: int) -> str:
    """One page, no patient data: it can go to the DPO, the CNIL and management as is."""
    channels: dict[str, int] = {}
    fields: dict[str, int] = {}
    for p in scope.patients:
        for c in p.channels:
            channels[c] = channels.get(c, 0) + 1
        for f in p.fields:
            fields[f] = fields.get(f, 0) + 1
    first = min((p.first_at for p in scope.patients), default=None)
    last = max((p.last_at for p in scope.patients), default=None)
    agree = scope.only_in_audit == 0 and scope.only_in_ledger == 0
    lines = [
        f"# Incident report: {scope.username}",
        "",
        f"- Actor: {scope.username} (`{scope.actor_ref}`)",
        f"- Period examined: {scope.since.isoformat()} to {scope.until.isoformat()}",
        f"- Generated: {generated.isoformat()}",
        f"- **Patients whose data was exposed: {len(scope.patients)}**",
        f"- First exposure: {first.isoformat() if first else 'none'}",
        f"- Last exposure: {last.isoformat() if last else 'none'}",
        f"- Sources: {scope.ledger_rows} exposure-ledger rows, {scope.audit_events} audit events; "
        + (
            "they agree on every patient."
            if agree
            else f"{scope.only_in_ledger} patients only in the ledger, {scope.only_in_audit} only in the "
            "audit trail: check `carnet audit verify`."
        ),
    ]
    if missing:
        lines.append(f"- {missing} patients have no contact details on file (merged or deleted records).")
    lines += ["", "## How the data left", ""]
    lines += [f"- {name}: {n} patients" for name, n in sorted(channels.items(), key=lambda i: -i[1])] or [
        "- none"
    ]
    lines += ["", "## What was exposed", ""]
    lines += [f"- {name}: {n} patients" for name, n in sorted(fields.items(), key=lambda i: -i[1])] or [
        "- none"
    ]
    lines += [
        "",
        "## Next steps",
        "",
        "- GDPR art. 33: notify the supervisory authority (CNIL) within 72 hours of becoming aware.",
        "- GDPR art. 34: inform the patients listed in `patients.csv` / `patients.json` without undue delay.",
        "- Those two files hold patient identities and contacts: keep them on this machine,",
        "  readable by you only.",
        "",
    ]
    return "\n".join(lines)
