"""Facility work: which patients front desk and billing have a reason to handle right now.

Front desk and billing serve a whole facility, so no care relationship narrows what they may
open. Their work still follows the patients who come through the facility: someone with an
appointment around now (-7/+30 days), a stay of the last month (not one entered in error), an
invoice in progress (a draft, or issued and not yet paid), of the last 90 days or worked on in
them (a payment taken), or a record
registered this week.
Detection uses this (carnet.detection, `WorkRelations`) to tell a desk's day from a sweep of the
register: a patient with none of these is "outside their work". It never decides access.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import Uuid, bindparam, or_, select, union
from sqlalchemy.orm import Session

from carnet.access.policy import APPOINTMENT_WINDOW_AFTER, APPOINTMENT_WINDOW_BEFORE
from carnet.billing.models import Invoice
from carnet.db.base import UtcDateTime
from carnet.patients.models import Patient
from carnet.scheduling.models import Appointment, Encounter

# How far around now a patient's business with the facility keeps them in the desk's work: the
# appointment window is the care relationship's (-7/+30 days, carnet.access.policy).
APPOINTMENT_BEFORE = APPOINTMENT_WINDOW_BEFORE
APPOINTMENT_AFTER = APPOINTMENT_WINDOW_AFTER
ENCOUNTER_BEFORE = dt.timedelta(days=30)  # a stay or visit still being coded and invoiced
INVOICE_BEFORE = dt.timedelta(days=90)  # an invoice still being settled
REGISTERED_BEFORE = dt.timedelta(days=7)


def _statement() -> object:
    ids = bindparam("ids", expanding=True, type_=Uuid())
    now = bindparam("now", type_=UtcDateTime())
    return union(
        select(Appointment.patient_id).where(
            Appointment.patient_id.in_(ids),
            Appointment.start_at >= bindparam("appointment_since", type_=UtcDateTime()),
            Appointment.start_at <= bindparam("appointment_until", type_=UtcDateTime()),
        ),
        select(Encounter.patient_id).where(
            Encounter.patient_id.in_(ids),
            # A stay opened by mistake (the wrong patient, a duplicate) was no business here.
            Encounter.status != "entered-in-error",
            or_(
                Encounter.status == "in-progress",
                Encounter.start_at >= bindparam("encounter_since", type_=UtcDateTime()),
            ),
            Encounter.start_at <= now,
        ),
        select(Invoice.patient_id).where(
            Invoice.patient_id.in_(ids),
            or_(
                # Still to settle however old (a draft, or issued and unpaid: the billing
                # worklist's), or of the last months.
                Invoice.status.in_(("draft", "issued")),
                Invoice.created_at >= bindparam("invoice_since", type_=UtcDateTime()),
                # Worked on lately: a payment just taken settles the invoice in the same
                # transaction its exposure is judged in, and the clerk's next questions follow it.
                Invoice.updated_at >= bindparam("invoice_since", type_=UtcDateTime()),
            ),
        ),
        select(Patient.id).where(
            Patient.id.in_(ids), Patient.created_at >= bindparam("registered_since", type_=UtcDateTime())
        ),
    )


_IN_WORK = _statement()


class SqlFacilityWork:
    """`carnet.detection.interfaces.WorkRelations` on the application database (one round trip)."""

    def in_work(
        self, session: Session, *, patient_ids: Sequence[uuid.UUID], at: dt.datetime
    ) -> frozenset[uuid.UUID]:
        if not patient_ids:
            return frozenset()
        params = {
            "ids": list(patient_ids),
            "now": at,
            "appointment_since": at - APPOINTMENT_BEFORE,
            "appointment_until": at + APPOINTMENT_AFTER,
            "encounter_since": at - ENCOUNTER_BEFORE,
            "invoice_since": at - INVOICE_BEFORE,
            "registered_since": at - REGISTERED_BEFORE,
        }
        found = session.scalars(_IN_WORK, params)  # type: ignore[call-overload]
        return frozenset(p if isinstance(p, uuid.UUID) else uuid.UUID(str(p)) for p in found)
