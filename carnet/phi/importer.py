"""`carnet import`: records from other systems, as FHIR Bundles (JSON) or Bulk Data NDJSON,
written through the one elevated door (carnet.phi.system) as a named, audited system actor.

Each resource is validated (fhir.resources R4B, then carnet's own input rules) before anything
is written. A transaction Bundle is all or nothing; a batch or collection Bundle and an NDJSON
file keep what is valid and report each rejected resource with its OperationOutcome.
References between resources resolve within the run: `urn:uuid:` full URLs of a Bundle and
`Patient/<source id>` of resources imported earlier in the run (list Patient files first);
a reference to a Patient already in carnet (its id) is accepted when it is in the facility.

Invoices keep the number the issuing system gave them (`identifier`), unless it has the form
of this facility's own carnet numbering (that sequence stays carnet's, gapless); one sent
without a number is numbered in the facility's sequence, as the gate numbers an issued one. A
PaymentReconciliation pays an Invoice of the same run (`urn:uuid:` or `Invoice/<source id>`,
in any order within a Bundle or NDJSON chunk, or from an earlier file): never more than is
due, only an issued (or balanced) invoice; the payment that settles an issued invoice makes it
balanced. An invoice already in carnet is paid through the API, naming its version.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select, text, update

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.billing.models import Invoice
from carnet.fhir.core.api import type_name
from carnet.fhir.core.outcome import operation_outcome, status_for
from carnet.kernel.errors import CarnetError, InvalidInput
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.phi.import_rows import Billed, Item, Run, Unit
from carnet.phi.loader import SeedBatch, load_batch
from carnet.phi.system import SystemAccess, system_access
from carnet.records.models import Observation
from carnet.runtime import Runtime

CHUNK = 1000  # resources per system transaction (batch and NDJSON)


@dataclass(frozen=True)
class Rejection:
    source: str  # file and entry / line number
    resource_type: str
    outcome: dict[str, Any]  # an OperationOutcome (never quotes the data)


@dataclass
class ImportReport:
    accepted: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    # References of accepted resources to resources of the run that were rejected (element and
    # reference as sent): kept as written, named here.
    dangling: list[str] = field(default_factory=list)
    # Each accepted resource's name in the files ("Type/<source id>", or its fullUrl) -> the
    # carnet id it was given (a directory entry matched: the one carnet already held).
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def total_accepted(self) -> int:
        return sum(self.accepted.values())


def read_units(path: Path) -> Iterator[Unit]:
    """A file's units: one per Bundle (JSON), or chunks of an NDJSON file."""
    name = path.name
    if path.suffix in (".ndjson", ".jsonl"):
        items: list[Item] = []
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(Item(f"{name}:{number}", orjson.loads(line)))
                except json.JSONDecodeError:
                    items.append(Item(f"{name}:{number}", None))
                if len(items) >= CHUNK:
                    yield Unit(False, items)
                    items = []
        if items:
            yield Unit(False, items)
        return
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput(f"{name}: not a JSON file") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInput(f"{name}: a JSON file must hold a Bundle")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch", "collection"):
        raise InvalidInput(f"{name}: a Bundle to import is a transaction, batch or collection")
    entries = bundle.get("entry") or []
    yield Unit(
        kind == "transaction",
        [
            Item(f"{name}#entry{number}", e.get("resource"), e.get("fullUrl"))
            for number, e in enumerate(entries, start=1)
        ],
    )


def _number_invoices(
    door: SystemAccess, facility_id: uuid.UUID, rows: list[dict[str, Any]], now: dt.datetime
) -> None:
    """Number the unit's invoices sent without a number in the facility's sequence, as the gate
    does (F<FINESS>-<year>-<sequence>, in order, one writer at a time per facility)."""
    if door.session.get_bind().dialect.name == "postgresql":
        door.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"carnet:invoice-number:{facility_id}"},
        )
    finess = door.session.scalar(select(Facility.finess).where(Facility.id == facility_id))
    prefix = f"F{finess}-{now.year:04d}-"
    last = door.session.scalar(
        select(func.max(Invoice.number)).where(
            Invoice.facility_id == facility_id, Invoice.number.like(prefix + "%")
        )
    )
    sequence = int(last.removeprefix(prefix)) if last and last.removeprefix(prefix).isdigit() else 0
    for row in rows:
        sequence += 1
        row["number"] = f"{prefix}{sequence:07d}"


def _rejection(item: Item, rtype: str, exc: CarnetError) -> Rejection:
    _status, code = status_for(exc)
    return Rejection(item.source, rtype, operation_outcome(code, f"{item.source}: {exc}"))


class _MergedMeanwhile(Exception):
    """A patient the unit files under was merged after `Run.patient_ref` checked it."""


def _write_unit(
    run: Run,
    batch: SeedBatch,
    links: list[tuple[uuid.UUID, list[uuid.UUID]]],
    settled: list[uuid.UUID],
    payers: list[uuid.UUID],
    *,
    resources: int,
    operator: str,
    source: str,
) -> None:
    """Write one unit's rows and its audit event, in one transaction."""
    with system_access(run.runtime, reason=f"import of {source}", operator=operator) as door:
        # The existing patients the unit files under are held (FOR SHARE, as the gate's writes
        # hold them) until commit and read again: a merge that committed since `patient_ref`
        # checked them refuses the unit, one not yet begun waits for it (issue #9).
        created = {r["id"] for r in batch.rows.get("patients", [])}
        existing = sorted(
            {r["patient_id"] for rows in batch.rows.values() for r in rows if "patient_id" in r} - created
        )
        if existing:
            held = door.session.execute(
                select(Patient.id, Patient.merged_into_id)
                .where(Patient.id.in_(existing))
                .order_by(Patient.id)
                .with_for_update(read=True)
            ).all()
            merged = [(pid, into) for pid, into in held if into is not None]
            if merged:
                pid, into = merged[0]
                raise _MergedMeanwhile(
                    f"Patient/{pid} was merged into Patient/{into} during the import: reference that record"
                )
        unnumbered = [r for r in batch.rows.get("invoices", []) if r["number"] is None]
        if unnumbered:
            _number_invoices(door, run.facility_id, unnumbered, run.now)
        load_batch(door, batch)
        if settled:  # fully paid by this unit: balanced, as the gate's last payment makes it
            door.session.execute(
                update(Invoice).where(Invoice.id.in_(settled)).values(status="balanced", updated_at=run.now)
            )
        for report_id, observations in links:
            if observations:  # results written by an earlier unit of this run
                door.session.execute(
                    update(Observation).where(Observation.id.in_(observations)).values(report_id=report_id)
                )
        # Which patients the import touched: each sees it in their access log.
        touched = list(
            dict.fromkeys(
                [r["patient_id"] for rows in batch.rows.values() for r in rows if "patient_id" in r] + payers
            )
        )
        patient_rows = [r["id"] for r in batch.rows.get("patients", [])]
        door.audit.append(
            door.session,
            AuditRecord(
                kind=AuditKind.PHI_CREATE,
                outcome=Outcome.SUCCESS,
                actor=door.actor,
                resource_type="Bundle",
                resource_ids=[str(i) for i in patient_rows[:200]],
                patient_ids=list(dict.fromkeys(patient_rows + touched)),
                query=f"import;resources={resources}",
                policy_reason=f"import of {source}"[:500],
            ),
        )


@contextmanager
def _young_collections_only() -> Iterator[Callable[[], None]]:
    """The run holds every resource it read (about a hundred objects each) until it ends; the
    automatic collector walks all of them again and again as they grow (a third of an import's
    time). Off for the run, the run collects each unit's young objects itself; what was read is
    set aside (frozen, not walked) once read, and handed back to the collector at the end."""
    enabled = gc.isenabled()
    frozen = False

    def hold_what_is_read() -> None:
        nonlocal frozen
        if gc.get_freeze_count() == 0:  # a freeze already there is the process's own: left alone
            gc.freeze()
            frozen = True

    gc.disable()
    try:
        yield hold_what_is_read
    finally:
        if frozen:
            gc.unfreeze()
        if enabled:
            gc.enable()


def import_files(
    runtime: Runtime,
    *,
    paths: list[Path],
    facility_id: uuid.UUID,
    operator: str,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import files in order; `progress(n)` is told of each n resources handled."""
    report = ImportReport()
    run = Run(runtime, facility_id)
    with _young_collections_only() as hold_what_is_read:
        # Every unit read first: references resolve in any order, within a file and across files.
        units = [(path.name, unit) for path in paths for unit in read_units(path)]
        run.preassign([u for _name, u in units])
        run.match_directory([u for _name, u in units])
        hold_what_is_read()
        for name, unit in units:
            _import_unit(run, unit, report, operator=operator, source=name)
            gc.collect(1)  # the unit's own cycles, without walking what the run holds again
            if progress is not None:
                progress(len(unit.items))
    report.dangling = run.dangling()
    report.ids = {
        key: str(carnet_id) for key, (_rtype, carnet_id) in run.index.items() if carnet_id in run.accepted_ids
    }
    return report


def _import_unit(run: Run, unit: Unit, report: ImportReport, *, operator: str, source: str) -> None:
    pending: dict[str, uuid.UUID] = {}
    batch = SeedBatch()
    run.look_up_identifiers(unit)
    run.look_up_numbers(unit)
    run.unit_observations, run.unit_reports = {}, []
    run.unit_invoices, run.unit_payments, run.unit_numbers = {}, [], set()
    accepted: dict[str, int] = {}
    rejected: list[Rejection] = []
    for item in unit.items:
        rtype = type_name(item.resource.get("resourceType") if isinstance(item.resource, dict) else None)
        try:
            rtype, rows = run.rows(item, pending)
        except CarnetError as exc:
            rejected.append(_rejection(item, rtype, exc))
            continue
        except (ValueError, TypeError, KeyError, AttributeError):
            # fhir_core raises these on some malformed values instead of a ValidationError.
            rejected.append(_rejection(item, rtype, InvalidInput(f"{rtype}: malformed resource")))
            continue
        for table, row in rows:
            batch.add(table, row)
        accepted[rtype] = accepted.get(rtype, 0) + 1
    # Reports and their results, in either order within the unit.
    links: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
    for item, lab, references in run.unit_reports:
        try:
            links.append((lab["id"], run.link_results(lab, references)))
        except CarnetError as exc:
            rejected.append(_rejection(item, "DiagnosticReport", exc))
            batch.rows["diagnostic_reports"].remove(lab)
            accepted["DiagnosticReport"] -= 1
            if not accepted["DiagnosticReport"]:
                del accepted["DiagnosticReport"]
    # Payments and the invoices they pay, in either order within the unit.
    paid: dict[uuid.UUID, int] = {}
    payers: list[uuid.UUID] = []  # the patients whose invoices the unit's payments pay
    settled: list[uuid.UUID] = []  # invoices of earlier units these payments balance
    for item, payment, reference, currency in run.unit_payments:
        try:
            payers.append(run.pay(reference, payment, currency, paid))
        except CarnetError as exc:
            rejected.append(_rejection(item, "PaymentReconciliation", exc))
            accepted["PaymentReconciliation"] -= 1
            if not accepted["PaymentReconciliation"]:
                del accepted["PaymentReconciliation"]
            continue
        if payment.pop("settles", False):
            settled.append(payment["invoice_id"])
        batch.add("payments", payment)
    if unit.transaction and rejected:
        # All or nothing: the valid entries are not written either, and say so.
        report.rejected.extend(rejected)
        for item in unit.items:
            if not any(r.source == item.source for r in rejected):
                rtype = type_name(
                    item.resource.get("resourceType") if isinstance(item.resource, dict) else None
                )
                report.rejected.append(
                    Rejection(
                        item.source,
                        rtype,
                        operation_outcome(
                            "processing",
                            f"{item.source}: not written, another entry of the transaction failed",
                        ),
                    )
                )
        return
    if accepted:
        try:
            _write_unit(
                run,
                batch,
                links,
                settled,
                payers,
                resources=sum(accepted.values()),
                operator=operator,
                source=source,
            )
        except _MergedMeanwhile as exc:
            # Nothing of the unit was written: each entry says why (its own refusal, or this).
            for item in unit.items:
                if any(r.source == item.source for r in rejected):
                    continue
                rtype = type_name(
                    item.resource.get("resourceType") if isinstance(item.resource, dict) else None
                )
                rejected.append(_rejection(item, rtype, InvalidInput(f"not written: {exc}")))
            report.rejected.extend(rejected)
            return
    run.patients.update(pending)
    run.observations.update(
        {ref: (row["id"], row["patient_id"]) for ref, row in run.unit_observations.items()}
    )
    run.numbers_seen |= run.unit_numbers
    for billed in run.invoices.values():
        billed.paid_cents += paid.pop(billed.id, 0)
        if billed.id in settled:
            billed.status = "balanced"
    run.invoices.update(
        {
            ref: Billed(
                row["id"],
                row["patient_id"],
                row["total_cents"],
                paid.get(row["id"], 0),
                row["status"],
                row["currency"],
            )
            for ref, row in run.unit_invoices.items()
        }
    )
    refused = {r.source for r in rejected}
    for item in unit.items:
        if item.source in refused:
            continue
        if item.assigned is not None:
            run.accepted_ids.add(item.assigned)
        for carnet_id, where in item.refs.items():
            run.referenced.setdefault(carnet_id, where)
    for rtype, n in accepted.items():
        report.accepted[rtype] = report.accepted.get(rtype, 0) + n
    report.rejected.extend(rejected)


def resolve_facility(runtime: Runtime, value: str | None) -> uuid.UUID:
    """The facility the import belongs to: the one named, or the only one there is."""
    with runtime.session_factory() as session:
        ids = list(session.scalars(select(Facility.id).limit(2)))
        if value is not None:
            wanted = parse_id(value)
            if wanted is None or session.get(Facility, wanted) is None:
                raise InvalidInput("unknown facility id")
            return wanted
    if len(ids) != 1:
        raise InvalidInput("name the facility to import into (--facility ID)")
    return ids[0]


def total_resources(paths: list[Path]) -> int:
    """How many resources the files hold (for the progress bar); unreadable files count 0."""
    total = 0
    for path in paths:
        try:
            if path.suffix in (".ndjson", ".jsonl"):
                with path.open(encoding="utf-8") as fh:
                    total += sum(1 for line in fh if line.strip())
            else:
                total += len(json.loads(path.read_text(encoding="utf-8")).get("entry") or [])
        except (OSError, ValueError, AttributeError):
            continue
    return total
