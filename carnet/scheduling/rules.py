"""The calendar rules: a practitioner is never double-booked; which appointments are inactive."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from carnet.access.policy import PATIENT_LOCATE
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.org.models import Practitioner
from carnet.phi.kernel import GuardedTx
from carnet.scheduling.models import Appointment

INACTIVE_APPOINTMENT = ("cancelled", "entered-in-error", "noshow")
SCHEDULE_MAX_DAYS = 7  # a practitioner's calendar: a day or a week at a time
SCHEDULE_PATIENT = PATIENT_LOCATE  # who an appointment is for: name, birth date, sex
CALENDAR_MAX_PRACTITIONERS = 40  # rows of the calendar grid (one facility's practitioners)
# The front desk's arrivals list: today's appointments in a window of a few hours (around now
# by default; the desk moves it earlier or later within today), at most ARRIVALS_ROWS of them.
# Who each is for is named only for the ARRIVALS_NAMED appointments nearest now (within the
# hour before and the two hours after): the patients about to come to the desk. The others
# show as slots (time, practitioner, status), so whichever window or refresh a session asks
# for, it is shown at most ARRIVALS_NAMED patients at a time, one list of the day for
# detection: a stolen session scraping the day gets what the desk sees now, not the day.
ARRIVALS_WINDOW_BEFORE = dt.timedelta(hours=1)
ARRIVALS_WINDOW_AFTER = dt.timedelta(hours=2)
ARRIVALS_ROWS = 60
ARRIVALS_NAMED = 15  # about a quarter of an hour either side of now at a busy desk
ARRIVABLE = ("booked",)  # checked in from the arrivals list: booked -> arrived


def check_slot(
    tx: GuardedTx,
    practitioner_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    exclude: uuid.UUID | None,
) -> None:
    """The double-booking rule: a practitioner is never booked twice at once (`exclude`: the
    appointment being moved). Conflict when the slot overlaps an active appointment."""
    if end <= start:
        raise InvalidInput("an appointment ends after it starts")
    if end - start > dt.timedelta(hours=12):
        raise InvalidInput("an appointment lasts at most 12 hours")
    # One booking at a time per practitioner: the row lock orders concurrent bookings.
    tx.session.execute(select(Practitioner.id).where(Practitioner.id == practitioner_id).with_for_update())
    overlap = select(Appointment.id).where(
        Appointment.practitioner_id == practitioner_id,
        Appointment.status.not_in(INACTIVE_APPOINTMENT),
        Appointment.start_at < end,
        Appointment.end_at > start,
    )
    if exclude is not None:
        overlap = overlap.where(Appointment.id != exclude)
    if tx.session.scalar(overlap.limit(1)) is not None:
        raise Conflict("the practitioner is already booked at that time")
