"""Coverage and health-card readings (run only by the gate kernel, carnet.phi.kernel)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from sqlalchemy import Select, select

from carnet.access.permissions import Permission
from carnet.audit.interfaces import AuditKind
from carnet.coverage.models import CardReading, Coverage
from carnet.detection.interfaces import Channel
from carnet.kernel.errors import InvalidInput
from carnet.kernel.ids import new_id
from carnet.patients.models import Patient
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import CardReadingInput, CardReadingView, CoverageSection, CoverageView
from carnet.phi.steps import SECTION_LIMIT, received_of, received_shown, redact, sid


@guarded(AuditKind.PHI_READ, RT.COVERAGE, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> CoverageSection:
    """Coverages and health-card readings (the readings only for roles that may see them)."""
    patient = tx.patient(patient_id)
    decision = tx.authorize(patient, RT.COVERAGE)
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, decision.fields, resource=RT.COVERAGE)
    return _section(tx, patient, decision.fields)


def coverages_section(pid: uuid.UUID | None) -> Select[Coverage]:
    """The statement of a patient's coverages, latest first (the gate's fast read sends it ahead)."""
    return select(Coverage).where(Coverage.patient_id == pid).order_by(Coverage.period_start.desc())


def _section(tx: GuardedTx, patient: Patient, fields: frozenset[str]) -> CoverageSection:
    rows = tx.records(coverages_section(patient.id).limit(SECTION_LIMIT))
    tx.resource_ids.extend(str(r.id) for r in rows)
    coverages = [
        redact(
            CoverageView,
            {
                "id": str(r.id),
                "updated_at": r.updated_at,
                "patient_id": str(r.patient_id),
                "kind": r.kind,
                "payer": r.payer,
                "member_id": tx.dec(r.member_id_ct, "coverages", "member_id", r.id)
                if "member_id" in fields
                else None,
                "status": r.status,
                "period_start": r.period_start,
                "period_end": r.period_end,
                "received": received_shown(tx, r, fields),
            },
            fields,
        )
        for r in rows
    ]
    readings: list[CardReadingView] = []
    rels = tx.relationships_of([patient]).get(patient.id, frozenset())
    card_fields = tx.read_fields(rels, RT.CARD_READING)
    if card_fields and tx.ctx.may(Permission.CARD_READING_READ):
        for r in tx.session.scalars(
            select(CardReading)
            .where(CardReading.patient_id == patient.id)
            .order_by(CardReading.read_at.desc())
            .limit(SECTION_LIMIT)
        ):
            payload = (
                tx.dec(r.payload_ct, "card_readings", "payload", r.id) if "payload" in card_fields else None
            )
            readings.append(
                redact(
                    CardReadingView,
                    {
                        "id": str(r.id),
                        "patient_id": str(r.patient_id),
                        "coverage_id": sid(r.coverage_id),
                        "read_at": r.read_at,
                        "card_serial": tx.dec(r.card_serial_ct, "card_readings", "card_serial", r.id)
                        if "card_serial" in card_fields
                        else None,
                        "payload": json.loads(payload) if payload else None,
                    },
                    card_fields,
                )
            )
            tx.resource_ids.append(str(r.id))
    return CoverageSection(coverages=coverages, card_readings=readings)


# -- health cards ---------------------------------------------------------------------------------
@guarded(AuditKind.PHI_CREATE, RT.CARD_READING, targeted=True)
def record_card_reading(tx: GuardedTx, /, *, data: CardReadingInput) -> CoverageSection:
    """Record one reading of the patient's health card. The coverage it proves is linked (the
    same payer and member id) or replaces the active one of its kind, which is ended, never
    deleted: the coverage history is kept. Returns the patient's coverage section."""
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.CARD_READING, write=True)
    if data.rights_end is not None and data.rights_end < data.rights_start:
        raise InvalidInput("the rights end after they start")
    rights_start = dt.datetime.combine(data.rights_start, dt.time(), tzinfo=dt.UTC)
    rights_end = dt.datetime.combine(data.rights_end, dt.time(), tzinfo=dt.UTC) if data.rights_end else None
    current = list(
        tx.session.scalars(
            select(Coverage)
            .where(Coverage.patient_id == patient.id, Coverage.kind == data.kind, Coverage.status == "active")
            .order_by(Coverage.period_start.desc())
        )
    )
    coverage: Coverage | None = None
    for row in current:
        same = (
            row.payer == data.payer
            and tx.dec(row.member_id_ct, "coverages", "member_id", row.id) == data.member_id
        )
        if same and coverage is None:
            coverage = row
            if row.period_end != rights_end:
                tx.bump(Coverage, row, row.version_id, period_end=rights_end)
                _follow(tx, patient, row)
                _snapshot(tx, patient, row, "update")
        else:
            # A card naming another payer or member ends the coverage it replaces.
            tx.bump(Coverage, row, row.version_id, status="cancelled", period_end=tx.now)
            _follow(tx, patient, row)
            _snapshot(tx, patient, row, "update")
    if coverage is None:
        coverage_id = new_id()
        coverage = Coverage(
            id=coverage_id,
            facility_id=patient.facility_id,
            patient_id=patient.id,
            kind=data.kind,
            payer=data.payer,
            member_id_ct=tx.enc(data.member_id, patient.facility_id, "coverages", "member_id", coverage_id),
            status="active",
            period_start=rights_start,
            period_end=rights_end,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(coverage)
        tx.session.flush()
        _snapshot(tx, patient, coverage, "create")
    reading_id = new_id()
    payload = json.dumps(data.model_dump(mode="json", exclude={"patient_id"}), sort_keys=True)
    tx.session.add(
        CardReading(
            id=reading_id,
            facility_id=patient.facility_id,
            patient_id=patient.id,
            coverage_id=coverage.id,
            read_at=tx.now,
            read_by=tx.ctx.account_id,
            card_serial_ct=tx.enc(
                data.card_serial, patient.facility_id, "card_readings", "card_serial", reading_id
            ),
            payload_ct=tx.enc(payload, patient.facility_id, "card_readings", "payload", reading_id),
        )
    )
    tx.session.flush()
    tx.resource_ids.append(str(reading_id))
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.COVERAGE)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.CARD_READING)
    return _section(tx, patient, fields)


def _follow(tx: GuardedTx, patient: Patient, row: Coverage) -> None:
    """A Coverage kept as received (imported) follows what a card reading changed: its status
    and the end of its period; every other element stays as received."""
    kept = received_of(tx, row)
    if kept is None:
        return
    kept["status"] = row.status
    period = dict(kept.get("period") or {})
    if row.period_end is None:
        period.pop("end", None)
    else:
        period["end"] = row.period_end.isoformat()
    if period:
        kept["period"] = period
    text = json.dumps(kept, ensure_ascii=False, sort_keys=True)
    row.received_ct = tx.enc(text, patient.facility_id, "coverages", "received", row.id)
    tx.session.flush()


def _snapshot(tx: GuardedTx, patient: Patient, row: Coverage, action: str) -> None:
    data = {
        "id": str(row.id),
        "kind": row.kind,
        "payer": row.payer,
        "member_id": tx.dec(row.member_id_ct, "coverages", "member_id", row.id),
        "status": row.status,
        "period_start": row.period_start,
        "period_end": row.period_end,
        "received": received_of(tx, row),
    }
    tx.snapshot(RT.COVERAGE, row.id, row.version_id, patient, action, data)
