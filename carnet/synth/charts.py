"""The synthetic hospital, each patient's chart: problems, allergies, notes, stays, vital signs
and lab results, appointments, prescriptions, coverage and invoices, drawn from the patients'
seeded stream in a fixed order (so the same seed gives the same hospital). Mixed into
carnet.synth.generator.HospitalGenerator."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carnet.phi.loader import SeedBatch
from carnet.records import beds
from carnet.synth import vocab

if TYPE_CHECKING:
    from carnet.synth.generator import FacilityPools

APPOINTMENT_WINDOW_DAYS = 15  # a month around the base day: -15 .. +15


def seeded_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


@dataclass(frozen=True)
class PatientContext:
    patient_id: uuid.UUID
    facility_id: uuid.UUID
    pools: FacilityPools
    created: dt.datetime
    age: int
    canary: bool


class ChartRecords:
    """The chart of one patient, row by row (HospitalGenerator's per-patient records)."""

    seed: int
    base_day: dt.datetime
    _rng: random.Random
    _used_slots: set[tuple[uuid.UUID, dt.datetime]]
    _invoice_counter: int

    def _base_row(self, ctx: PatientContext, at: dt.datetime) -> dict[str, Any]:
        return {
            "id": seeded_uuid(self._rng),
            "facility_id": ctx.facility_id,
            "patient_id": ctx.patient_id,
            "version_id": 1,
            "created_at": at,
            "updated_at": at,
        }

    def _past(self, ctx: PatientContext, max_days: int) -> dt.datetime:
        """A moment after the patient was registered and before the base day."""
        span = max(1, min(max_days, (self.base_day - ctx.created).days))
        return self.base_day - dt.timedelta(
            days=self._rng.randint(1, span), minutes=self._rng.randint(0, 1439)
        )

    def _author(self, ctx: PatientContext, designated: uuid.UUID | None) -> uuid.UUID:
        if designated is not None and self._rng.random() < 0.7:
            return designated
        return self._rng.choice(ctx.pools.physicians)

    def _conditions(self, batch: SeedBatch, ctx: PatientContext, designated: uuid.UUID | None) -> None:
        rng = self._rng
        count = rng.choices((0, 1, 2, 3), (35, 35, 20, 10) if ctx.age > 40 else (65, 25, 8, 2))[0]
        for code, display in rng.sample(vocab.CONDITIONS, count):
            at = self._past(ctx, 3650)
            row = self._base_row(ctx, at)
            row.update(
                code=code,
                display=display,
                clinical_status="active" if rng.random() < 0.8 else "resolved",
                onset_at=at - dt.timedelta(days=rng.randint(0, 365)),
                recorded_by=self._author(ctx, designated),
            )
            batch.add("conditions", row)

    def _allergies(self, batch: SeedBatch, ctx: PatientContext, designated: uuid.UUID | None) -> list[str]:
        rng = self._rng
        count = rng.choices((0, 1, 2), (82, 15, 3))[0]
        codes: list[str] = []
        for code, display in rng.sample(vocab.ALLERGENS, count):
            row = self._base_row(ctx, self._past(ctx, 3650))
            row.update(
                substance_code=code,
                substance_display=display,
                criticality=rng.choice(("low", "high", "unable-to-assess")),
                clinical_status="active",
                recorded_by=self._author(ctx, designated),
            )
            batch.add("allergies", row)
            codes.append(code)
        return codes

    def _note(
        self,
        batch: SeedBatch,
        ctx: PatientContext,
        *,
        author: uuid.UUID,
        at: dt.datetime,
        encounter_id: uuid.UUID | None,
        kind: tuple[str, str],
        motif: str,
    ) -> None:
        rng = self._rng
        note = self._base_row(ctx, at)
        versions = 2 if rng.random() < 0.15 else 1
        note.update(
            encounter_id=encounter_id,
            author_id=author,
            kind=kind[0],
            title=kind[1],
            status="current",
            version_id=versions,
        )
        batch.add("clinical_notes", note)
        text = " ".join(
            (
                rng.choice(vocab.NOTE_OPENINGS).format(motif=motif.lower()),
                rng.choice(vocab.NOTE_FINDINGS),
                rng.choice(vocab.NOTE_PLANS),
            )
        )
        recorded = at
        for version in range(1, versions + 1):
            reason = None
            if version > 1:
                recorded = recorded + dt.timedelta(hours=rng.randint(1, 72))
                reason = rng.choice(vocab.AMENDMENT_REASONS)
                text = f"{text} Complément : {rng.choice(vocab.NOTE_PLANS)}"
                note["updated_at"] = recorded
            batch.add(
                "note_versions",
                {
                    "id": seeded_uuid(rng),
                    "facility_id": ctx.facility_id,
                    "note_id": note["id"],
                    "version": version,
                    "text": text,
                    "author_id": author,
                    "recorded_at": recorded,
                    "amendment_reason": reason,
                },
            )

    @staticmethod
    def _free_bed(ctx: PatientContext, ward: uuid.UUID | None) -> uuid.UUID | None:
        """The ward's first free bed for a stay in progress (none free: it waits for a bed)."""
        if ward is None:
            return None
        for bed in ctx.pools.beds.get(ward, ()):
            if bed not in ctx.pools.beds_held:
                ctx.pools.beds_held.add(bed)
                return bed
        return None

    def _encounters(self, batch: SeedBatch, ctx: PatientContext) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Past visits and stays, and for a few patients a stay in progress. Returns (id, attending)."""
        rng = self._rng
        made: list[tuple[uuid.UUID, uuid.UUID]] = []
        plans: list[str] = []
        if rng.random() < 0.3:
            plans.append(rng.choices(("outpatient", "emergency", "inpatient"), (50, 25, 25))[0])
        if not ctx.canary and rng.random() < 0.02:
            plans.append("current")
        for plan in plans:
            attending = rng.choice(ctx.pools.physicians)
            row = self._base_row(ctx, self.base_day)
            if plan == "current":
                start = self.base_day - dt.timedelta(days=rng.randint(0, 10), minutes=rng.randint(0, 1439))
                row.update(kind="inpatient", status="in-progress", start_at=start, end_at=None)
            else:
                start = self._past(ctx, 720)
                hours = rng.randint(48, 240) if plan == "inpatient" else rng.randint(1, 6)
                row.update(
                    kind=plan, status="finished", start_at=start, end_at=start + dt.timedelta(hours=hours)
                )
            inpatient = row["kind"] == "inpatient"
            ward = rng.choice(ctx.pools.wards) if inpatient else None
            bed = self._free_bed(ctx, ward) if row["status"] == "in-progress" else None
            row.update(
                location_id=ward,
                attending_id=attending,
                created_at=row["start_at"],
                updated_at=row["end_at"] or row["start_at"],
                bed_id=bed,
                bed_history=beds.history_text(beds.moved([], bed, ward, row["start_at"])) if bed else None,
            )
            batch.add("encounters", row)
            made.append((row["id"], attending))
            motif = rng.choice(vocab.CONDITIONS)[1]
            self._note(
                batch,
                ctx,
                author=attending,
                at=row["start_at"] + dt.timedelta(hours=1),
                encounter_id=row["id"],
                kind=vocab.NOTE_KINDS[1] if inpatient else vocab.NOTE_KINDS[3],
                motif=motif,
            )
            if inpatient and row["end_at"] is not None:
                self._note(
                    batch,
                    ctx,
                    author=attending,
                    at=row["end_at"],
                    encounter_id=row["id"],
                    kind=vocab.NOTE_KINDS[2],
                    motif=motif,
                )
            self._vitals(batch, ctx, row["id"], row["start_at"] + dt.timedelta(minutes=30))
            if row["status"] == "finished":
                self._invoice(batch, ctx, row["id"], row["end_at"], row["kind"])
        return made

    def _vitals(
        self, batch: SeedBatch, ctx: PatientContext, encounter_id: uuid.UUID, at: dt.datetime
    ) -> None:
        rng = self._rng
        for code, display, unit, low, high, decimals in rng.sample(vocab.VITALS, rng.randint(3, 5)):
            row = self._base_row(ctx, at)
            row.update(
                encounter_id=encounter_id,
                report_id=None,
                category="vital-signs",
                code=code,
                display=display,
                value_number=round(rng.uniform(low, high), decimals),
                unit=unit,
                value_text=None,
                effective_at=at,
                status="final",
                performer_id=None,
            )
            batch.add("observations", row)

    def _labs(self, batch: SeedBatch, ctx: PatientContext) -> None:
        rng = self._rng
        if rng.random() >= 0.15:
            return
        panel_code, panel_display, tests = rng.choice(vocab.LAB_PANELS)
        at = self._past(ctx, 365)
        report = self._base_row(ctx, at)
        report.update(
            code=panel_code,
            display=panel_display,
            status="final",
            issued_at=at + dt.timedelta(hours=rng.randint(2, 30)),
            conclusion=rng.choice(vocab.REPORT_CONCLUSIONS),
            performer_id=None,
        )
        batch.add("diagnostic_reports", report)
        for code, display, unit, low, high, decimals in tests:
            row = self._base_row(ctx, at)
            row.update(
                encounter_id=None,
                report_id=report["id"],
                category="laboratory",
                code=code,
                display=display,
                value_number=round(rng.uniform(low, high), decimals),
                unit=unit,
                value_text=None,
                effective_at=at,
                status="final",
                performer_id=None,
            )
            batch.add("observations", row)

    def _appointments(self, batch: SeedBatch, ctx: PatientContext, designated: uuid.UUID | None) -> None:
        rng = self._rng
        count = rng.choices((0, 1, 2), (45, 45, 10))[0]
        if ctx.canary:
            return  # an appointment would give its practitioner a reason to open the canary
        for _ in range(count):
            practitioner = designated if designated is not None and rng.random() < 0.6 else None
            practitioner = practitioner or rng.choice(ctx.pools.physicians)
            start = self._slot(practitioner)
            if start is None:
                continue
            row = self._base_row(ctx, start - dt.timedelta(days=rng.randint(1, 40)))
            if start < self.base_day:
                status = rng.choices(("fulfilled", "noshow", "cancelled"), (85, 5, 10))[0]
            elif start < self.base_day + dt.timedelta(days=1):
                status = rng.choices(("booked", "arrived"), (70, 30))[0]
            else:
                status = rng.choices(("booked", "cancelled"), (92, 8))[0]
            row.update(
                practitioner_id=practitioner,
                location_id=rng.choice(ctx.pools.clinics),
                start_at=start,
                end_at=start + dt.timedelta(minutes=rng.choice((15, 30))),
                status=status,
                reason=rng.choice(vocab.APPOINTMENT_REASONS),
                cancel_reason=rng.choice(vocab.CANCEL_REASONS) if status == "cancelled" else None,
                booked_by=rng.choice(ctx.pools.front_desk)
                if ctx.pools.front_desk and rng.random() < 0.7
                else None,
            )
            batch.add("appointments", row)

    def _slot(self, practitioner: uuid.UUID) -> dt.datetime | None:
        """A free half-hour on a weekday within the month around the base day (no double booking)."""
        rng = self._rng
        for _ in range(8):
            day = self.base_day + dt.timedelta(
                days=rng.randint(-APPOINTMENT_WINDOW_DAYS, APPOINTMENT_WINDOW_DAYS)
            )
            if day.weekday() >= 5:
                friday = day - dt.timedelta(days=day.weekday() - 4)
                monday = day + dt.timedelta(days=7 - day.weekday())
                # To the Friday before, unless that leaves the window (a weekend at its first day).
                early = friday < self.base_day - dt.timedelta(days=APPOINTMENT_WINDOW_DAYS)
                day = monday if early else friday
            start = day + dt.timedelta(hours=7, minutes=30 * rng.randint(0, 19))
            if (practitioner, start) not in self._used_slots:
                self._used_slots.add((practitioner, start))
                return start
        return None

    def _consultation_notes(
        self, batch: SeedBatch, ctx: PatientContext, designated: uuid.UUID | None
    ) -> None:
        rng = self._rng
        for _ in range(rng.choices((0, 1, 2), (55, 35, 10))[0]):
            self._note(
                batch,
                ctx,
                author=self._author(ctx, designated),
                at=self._past(ctx, 1500),
                encounter_id=None,
                kind=rng.choice((vocab.NOTE_KINDS[0], vocab.NOTE_KINDS[3])),
                motif=rng.choice(vocab.APPOINTMENT_REASONS),
            )

    def _prescriptions(
        self,
        batch: SeedBatch,
        ctx: PatientContext,
        designated: uuid.UUID | None,
        encounters: list[tuple[uuid.UUID, uuid.UUID]],
        allergies: list[str],
    ) -> None:
        rng = self._rng
        count = rng.choices((0, 1, 2, 3), (40, 30, 20, 10))[0]
        allowed = [m for m in vocab.MEDICATIONS if not any(m[2].startswith(a) for a in allergies)]
        for code, display, substance, dosage in rng.sample(allowed, min(count, len(allowed))):
            encounter_id, prescriber = (None, self._author(ctx, designated))
            if encounters and rng.random() < 0.4:
                encounter_id, prescriber = rng.choice(encounters)
            at = self._past(ctx, 540)
            status = rng.choices(("active", "completed", "stopped"), (55, 35, 10))[0]
            row = self._base_row(ctx, at)
            row.update(
                prescriber_id=prescriber,
                encounter_id=encounter_id,
                medication_code=code,
                medication_display=display,
                substance_code=substance,
                dosage_text=dosage,
                status=status,
                authored_at=at,
                valid_until=at + dt.timedelta(days=rng.choice((7, 30, 90, 180, 365))),
                renewed_from_id=None,
                stop_reason="Effet indésirable" if status == "stopped" else None,
                allergy_override_reason=None,
            )
            batch.add("prescriptions", row)

    def _coverage(self, batch: SeedBatch, ctx: PatientContext, ins: str) -> None:
        rng = self._rng
        amo: dict[str, Any] | None = None
        if rng.random() < 0.12:
            start = self._past(ctx, 3650) - dt.timedelta(days=400)
            old = self._base_row(ctx, start)
            old.update(
                kind="AMO",
                payer=rng.choice(vocab.AMO_PAYERS),
                member_id=ins[:13],
                status="cancelled",
                period_start=start,
                period_end=start + dt.timedelta(days=rng.randint(200, 380)),
            )
            batch.add("coverages", old)
        if rng.random() < 0.98:
            start = ctx.created
            amo = self._base_row(ctx, start)
            amo.update(
                kind="AMO",
                payer=rng.choice(vocab.AMO_PAYERS),
                member_id=ins[:13],
                status="active",
                period_start=start,
                period_end=None,
            )
            batch.add("coverages", amo)
        if rng.random() < 0.65:
            start = self._past(ctx, 2000)
            amc = self._base_row(ctx, start)
            amc.update(
                kind="AMC",
                payer=rng.choice(vocab.AMC_PAYERS),
                member_id=f"{rng.randint(10_000_000, 99_999_999)}",
                status="active",
                period_start=start,
                period_end=self.base_day + dt.timedelta(days=rng.randint(30, 365)),
            )
            batch.add("coverages", amc)
        if amo is None:
            return
        serial = f"{rng.randint(0, 9_999_999_999):010d}"
        for _ in range(rng.choices((0, 1, 2, 3), (40, 35, 18, 7))[0]):
            at = self._past(ctx, 1500)
            batch.add(
                "card_readings",
                {
                    "id": seeded_uuid(rng),
                    "facility_id": ctx.facility_id,
                    "patient_id": ctx.patient_id,
                    "coverage_id": amo["id"],
                    "read_at": at,
                    "read_by": rng.choice(ctx.pools.front_desk) if ctx.pools.front_desk else None,
                    "card_serial": serial,
                    "payload": {"nir": ins[:13], "regime": "01", "caisse": amo["payer"], "serial": serial},
                },
            )

    def _invoice(
        self, batch: SeedBatch, ctx: PatientContext, encounter_id: uuid.UUID, at: dt.datetime, kind: str
    ) -> None:
        rng = self._rng
        self._invoice_counter += 1
        acts = {
            "inpatient": ("GHS", "FJ"),
            "emergency": ("ATU", "ZBQK002"),
            "outpatient": ("APC", "DEQP003"),
        }[kind]
        lines = [a for a in vocab.ACTS if a[0] in acts]
        invoice = self._base_row(ctx, at)
        total = sum(a[2] for a in lines)
        status = rng.choices(("issued", "balanced", "draft"), (40, 55, 5))[0]
        if ctx.canary:
            # An invoice still to settle would put the decoy on billing's worklist: honest clerks
            # would be shown it, and contained for it. A canary's past visits were paid.
            status = "balanced"
        invoice.update(
            encounter_id=encounter_id,
            number=f"F{ctx.pools.facility.finess[-4:]}-{self.seed % 10_000:04d}-{self._invoice_counter:08d}",
            status=status,
            issued_at=None if status == "draft" else at + dt.timedelta(days=rng.randint(0, 5)),
            total_cents=total,
            currency="EUR",
        )
        batch.add("invoices", invoice)
        for code, description, amount in lines:
            batch.add(
                "invoice_lines",
                {
                    "id": seeded_uuid(rng),
                    "facility_id": ctx.facility_id,
                    "invoice_id": invoice["id"],
                    "code": code,
                    "description": description,
                    "amount_cents": amount,
                },
            )
        if status == "balanced":
            batch.add(
                "payments",
                {
                    "id": seeded_uuid(rng),
                    "facility_id": ctx.facility_id,
                    "invoice_id": invoice["id"],
                    "amount_cents": total,
                    "method": rng.choice(vocab.PAYMENT_METHODS),
                    "received_at": at + dt.timedelta(days=rng.randint(5, 40)),
                    "received_by": rng.choice(ctx.pools.billing) if ctx.pools.billing else None,
                },
            )
