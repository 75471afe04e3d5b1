"""The benign workload: a hospital's staff doing their work over simulated days, through the gate,
to count what detection must never do to them — contain — and how often it asks for a step-up.

- Clinicians (physicians, nurses) open their day list at 08:00 local, then, every few minutes, a
  listed patient's chart, allergies and often notes.
- Front desk agents share their facility's arrivals of the day: each is found by name and birth
  date, their appointments and coverage are read (check-in). Between arrivals, callers who are
  patients of the facility are found and booked, and a few new patients are registered and booked.
- Billing clerks share the visits of the day before: each patient's invoices and coverage are
  read; a few patients come to the counter with their INS about an invoice.

A step-up is answered the way staff would (a fresh second factor, then the same request again)
and counted. Simulated days move carnet's clock: demo and test mode only. Everyone runs in this
process, one after the other within a simulated day (the clock moves back for each person), which
is what makes 30 days of a 200-staff hospital take minutes rather than hours.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.detection.config import get_detection_config
from carnet.identity.models import Account
from carnet.identity.service import roles_of
from carnet.kernel import clock, localtime
from carnet.kernel.errors import AccountContained, CarnetError, InvalidInput, StepUpRequired, Throttled
from carnet.phi.exercise import FacilityDay, Visit, facility_days
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, PatientInput, PaymentInput
from carnet.runtime import Runtime
from carnet.settings import install_movable_clock

CLINICAL = (Role.PHYSICIAN, Role.NURSE)
WORKERS = (Role.PHYSICIAN, Role.NURSE, Role.FRONT_DESK, Role.BILLING)

# A front desk agent's day besides check-ins, and a billing clerk's counter visits.
CALLERS_PER_AGENT = 6
REGISTRATIONS_PER_AGENT = 2
WHO_PER_CALENDAR = 2  # "Who is this?" on the first slots of each morning calendar
WORKLIST_PAYMENTS = 3  # payments a billing clerk takes from the morning worklist
COUNTER_VISITS_PER_CLERK = 2

_FAMILIES = ("Arnaud", "Besson", "Carpentier", "Delorme", "Etienne", "Faure", "Gilbert", "Hamon")
_GIVENS = ("Camille", "Dominique", "Claude", "Maxime", "Alix", "Sacha", "Morgan", "Noa")


@dataclass
class BenignResult:
    clinician_days: int = 0  # kept for callers of the clinicians-only workload
    requests: int = 0
    patients_opened: int = 0
    step_ups: int = 0
    throttles: int = 0
    containments: list[str] = field(default_factory=list)
    # Per role: staff-days worked and step-ups asked; and the most step-ups one account got.
    staff_days: Counter[str] = field(default_factory=Counter)
    role_step_ups: Counter[str] = field(default_factory=Counter)
    account_step_ups: Counter[str] = field(default_factory=Counter)
    bookings: int = 0
    registrations: int = 0
    # The day's work lists in use: patients checked in from the arrivals list, payments taken
    # from the billing worklist, ward boards read.
    check_ins: int = 0
    worklist_payments: int = 0
    ward_boards: int = 0
    # Night shifts worked (22:00-06:00 local) and staff who joined mid-month (accounts opened by
    # an administrator, approved by a second one, on probation for their first days).
    night_shifts: int = 0
    joiners: list[str] = field(default_factory=list)

    @property
    def step_ups_per_clinician_week(self) -> float:
        """Step-ups per staff-week over everyone simulated (clinicians, front desk, billing)."""
        days = sum(self.staff_days.values())
        return 7 * self.step_ups / days if days else 0.0

    def step_ups_per_week(self, role: str) -> float:
        days = self.staff_days.get(role, 0)
        return 7 * self.role_step_ups.get(role, 0) / days if days else 0.0


def _role_of(roles: frozenset[Role]) -> Role:
    for role in WORKERS:
        if role in roles:
            return role
    raise ValueError("not a worker")


def staff(runtime: Runtime, *, limit: int | None = None, roles: tuple[Role, ...] = WORKERS) -> list[Actor]:
    """Active staff holding one of `roles`; `limit` keeps the first N clinicians only."""
    actors: list[Actor] = []
    clinicians_seen = 0
    with runtime.session_factory() as session:
        accounts = session.scalars(
            select(Account)
            .where(Account.kind == "staff", Account.status == "active")
            .order_by(Account.username)
        ).all()
        for account in accounts:
            held = roles_of(session, account=account)
            if not held & set(roles):
                continue
            if held & set(CLINICAL):
                if account.practitioner_id is None:
                    continue
                if limit is not None and clinicians_seen >= limit:
                    continue
                clinicians_seen += 1
            actors.append(
                Actor(
                    kind=ActorKind.STAFF,
                    username=account.username,
                    roles=held,
                    account_id=account.id,
                    facility_id=account.facility_id,
                    practitioner_id=account.practitioner_id,
                    session_id=uuid.uuid4(),
                    address=f"10.20.{len(actors) // 250}.{len(actors) % 250 + 1}",
                )
            )
    return actors


def clinicians(runtime: Runtime, *, limit: int | None = None) -> list[Actor]:
    return staff(runtime, limit=limit, roles=CLINICAL)


class _Worker:
    """One staff member's simulated day: calls through the gate, step-ups answered."""

    def __init__(
        self,
        runtime: Runtime,
        actor: Actor,
        result: BenignResult,
        movable: clock.MovableClock,
        rng: random.Random,
    ) -> None:
        self.runtime = runtime
        self.actor = actor
        self.result = result
        self.movable = movable
        self.rng = rng
        self.role = _role_of(actor.roles).value

    def wait(self, low: int, high: int) -> None:
        self.movable.advance(dt.timedelta(minutes=self.rng.randrange(low, high)))

    def call(self, op: str, **kwargs: object) -> object:
        """One gate call; a step-up is answered with a fresh second factor."""
        for _ in range(2):
            self.result.requests += 1
            try:
                return getattr(Gate(self.runtime, self.actor), op)(**kwargs)
            except StepUpRequired:
                self.result.step_ups += 1
                self.result.role_step_ups[self.role] += 1
                self.result.account_step_ups[self.actor.username] += 1
                self.actor = dataclasses.replace(self.actor, second_factor_at=clock.now())
            except Throttled:
                self.result.throttles += 1
                return None
            except AccountContained:
                raise
            except CarnetError:  # refused, not found, a slot already taken: staff move on
                return None
        return None

    # -- clinicians ---------------------------------------------------------------------------
    def clinician_day(self, day: dt.date) -> int:
        if self.role == Role.NURSE.value and self.call("ward_board") is not None:
            self.result.ward_boards += 1
        listed = self.call("day_list", day=day)
        patients: list[str] = []
        if listed is not None:
            patients = [a.patient.id for a in listed.appointments] + [i.patient.id for i in listed.inpatients]  # type: ignore[attr-defined]
        opened = 0
        for patient_id in dict.fromkeys(patients):
            self.wait(4, 15)
            self.call("read_patient", patient_id=patient_id)
            self.call("list_allergies", patient_id=patient_id)
            if self.rng.random() < 0.5:
                self.call("list_notes", patient_id=patient_id)
            opened += 1
        return opened

    # -- front desk ---------------------------------------------------------------------------
    def _find(self, visit: Visit) -> str | None:
        try:
            birth = dt.date.fromisoformat(visit.birth_date)
        except ValueError:
            return None
        page = self.call("search_patients", family=visit.family, birth_date=birth)
        found = [p.id for p in getattr(page, "items", [])] if page is not None else []
        return str(visit.patient_id) if str(visit.patient_id) in found else (found[0] if found else None)

    def _book(self, patient_id: str, fday: FacilityDay) -> bool:
        """Open the chosen practitioner's week in the calendar, then book a slot in it."""
        if not fday.practitioners:
            return False
        practitioner = self.rng.choice(fday.practitioners)
        first = clock.now().date() + dt.timedelta(days=self.rng.randrange(1, 15))
        self.call(
            "practitioner_schedule",
            practitioner_id=str(practitioner),
            day_from=first,
            day_to=first + dt.timedelta(days=6),
        )
        for _ in range(3):
            when = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
                days=self.rng.randrange(0, 7)
            )
            start = when.replace(
                hour=self.rng.randrange(7, 16), minute=15 * self.rng.randrange(4), second=0, microsecond=0
            )
            booked = self.call(
                "book_appointment",
                data=AppointmentInput(
                    patient_id=patient_id,
                    practitioner_id=str(practitioner),
                    start_at=start,
                    end_at=start + dt.timedelta(minutes=15),
                ),
            )
            if booked is not None:
                self.result.bookings += 1
                return True
        return False

    def front_desk_day(self, arrivals: list[Visit], callers: list[Visit], fday: FacilityDay) -> int:
        handled = 0
        tasks: list[tuple[str, Visit | None]] = [("arrival", v) for v in arrivals]
        tasks += [("caller", v) for v in callers]
        tasks += [("new", None)] * REGISTRATIONS_PER_AGENT
        self.rng.shuffle(tasks)
        # The morning: the facility's calendar grid of the week (slots only), the day's calendar
        # of two practitioners the agent books for, and who the first two slots of each are for
        # ("Who is this?": one patient each).
        today = clock.now().date()
        self.call("calendar_grid", day_from=today, day_to=today + dt.timedelta(days=4))
        for practitioner in self.rng.sample(fday.practitioners, min(2, len(fday.practitioners))):
            today = clock.now().date()
            schedule = self.call(
                "practitioner_schedule", practitioner_id=str(practitioner), day_from=today, day_to=today
            )
            for slot in getattr(schedule, "entries", [])[:WHO_PER_CALENDAR]:
                self.wait(0, 2)
                self.call("reveal_appointment_patient", appointment_id=slot.id)
        for kind, visit in tasks:
            self.wait(2, 9)
            if kind == "new":
                patient = self.call(
                    "register_patient",
                    data=PatientInput(
                        facility_id=str(fday.facility_id),
                        family=self.rng.choice(_FAMILIES),
                        given=self.rng.choice(_GIVENS),
                        birth_date=dt.date(1940, 1, 1) + dt.timedelta(days=self.rng.randrange(0, 30000)),
                        gender=self.rng.choice(("female", "male")),
                    ),
                )
                if patient is not None:
                    self.result.registrations += 1
                    self._book(str(patient.id), fday)  # type: ignore[attr-defined]
                    handled += 1
                continue
            assert visit is not None
            patient_id = self._find(visit)
            if patient_id is None:
                continue
            handled += 1
            if kind == "arrival":
                self._check_in(patient_id)
                self.call("list_coverage", patient_id=patient_id)
            else:
                self.call("list_appointments", patient_id=patient_id)
                self._book(patient_id, fday)
        return handled

    def _check_in(self, patient_id: str) -> None:
        """The patient at the desk: today's arrivals list (refreshed), their appointment checked
        in; named only near its time, so otherwise from the patient's own appointments."""
        listing = self.call("arrivals")
        for entry in getattr(listing, "entries", []):
            appointment, who = entry.appointment, entry.patient
            if who is not None and who.id == patient_id and appointment.status == "booked":
                if self.call(
                    "check_in", appointment_id=appointment.id, expected_version=appointment.version_id
                ):
                    self.result.check_ins += 1
                return
        today = localtime.local_day(clock.now())
        for appointment in self.call("list_appointments", patient_id=patient_id) or []:  # type: ignore[attr-defined]
            start = appointment.start_at
            if appointment.status == "booked" and start is not None and localtime.local_day(start) == today:
                if self.call(
                    "check_in", appointment_id=appointment.id, expected_version=appointment.version_id
                ):
                    self.result.check_ins += 1
                return

    # -- billing ------------------------------------------------------------------------------
    def billing_day(self, to_invoice: list[Visit], counter: list[Visit]) -> int:
        handled = 0
        # The morning: the worklist of unpaid invoices, a payment taken for the oldest ones.
        worklist = self.call("billing_worklist", page=1)
        items = list(getattr(worklist, "items", []))
        if getattr(worklist, "more", False) and self.rng.random() < 0.3:
            later = self.call("billing_worklist", page=2)  # some mornings, the next page too
            items += list(getattr(later, "items", []))
        for item in items[:WORKLIST_PAYMENTS]:
            invoice = item.invoice
            self.wait(2, 6)
            due = (invoice.total_cents or 0) - (invoice.paid_cents or 0)
            paid = self.call(
                "record_payment",
                data=PaymentInput(
                    invoice_id=invoice.id,
                    expected_version=invoice.version_id or 1,
                    amount_cents=due,
                    method="card",
                ),
            )
            self.result.worklist_payments += paid is not None
        for visit in dict.fromkeys(to_invoice):
            self.wait(4, 12)
            self.call("list_invoices", patient_id=str(visit.patient_id))
            self.call("list_coverage", patient_id=str(visit.patient_id))
            handled += 1
        for visit in counter:
            if not visit.ins:
                continue
            self.wait(4, 12)
            page = self.call("search_patients", identifier=visit.ins)
            found = [p.id for p in getattr(page, "items", [])] if page is not None else []
            for patient_id in found[:1]:
                self.call("list_invoices", patient_id=patient_id)
                handled += 1
        return handled


# Night rotation: one clinician in NIGHT_EVERY works nights (22:00 local) one week in three.
NIGHT_EVERY = 5
JOINERS = (Role.PHYSICIAN, Role.NURSE, Role.NURSE, Role.PHYSICIAN, Role.FRONT_DESK, Role.BILLING)


def on_nights(rank: int, offset: int) -> bool:
    """Whether the clinician of this rank works the night of simulated day `offset`."""
    return rank % NIGHT_EVERY == 0 and (offset // 7 + rank // NIGHT_EVERY) % 3 == 0


def _administrators(runtime: Runtime) -> list[Actor]:
    with runtime.session_factory() as session:
        found = []
        for account in session.scalars(
            select(Account)
            .where(Account.kind == "staff", Account.status == "active")
            .order_by(Account.username)
        ):
            roles = roles_of(session, account=account)
            if Role.SYSTEM_ADMINISTRATOR in roles:
                found.append(
                    Actor(
                        kind=ActorKind.STAFF,
                        username=account.username,
                        roles=roles,
                        account_id=account.id,
                        session_id=uuid.uuid4(),
                        address="10.30.0.1",
                        second_factor_at=clock.now(),
                    )
                )
        return found[:2]


def onboard(
    runtime: Runtime, everyone: list[Actor], *, result: BenignResult, movable: clock.MovableClock
) -> None:
    """Mid-month: staff leave and their replacements join. An administrator opens each account
    (taking over the leaver's practitioner record for clinicians), a second approves its role,
    three quarters of an hour apart, through the audited (and watched) administration services."""
    from carnet.access.accounts import create_staff_account
    from carnet.access.grants import approve_role_grant

    admins = _administrators(runtime)
    if len(admins) < 2:
        return
    maker, approver = admins
    for wanted in JOINERS:
        leaver_at = next(
            (i for i in range(len(everyone) - 1, -1, -1) if _role_of(everyone[i].roles) is wanted), None
        )
        if leaver_at is None:
            continue
        leaver = everyone[leaver_at]
        with runtime.session_factory.begin() as session:  # the leaver's account closes
            account = session.get(Account, leaver.account_id)
            assert account is not None
            account.status = "disabled"
            account.practitioner_id = None
        movable.advance(dt.timedelta(minutes=45))
        try:
            created = create_staff_account(
                runtime,
                actor=dataclasses.replace(maker, second_factor_at=clock.now()),
                username=f"joiner.{wanted.value}.{uuid.uuid4().hex[:6]}",
                display_name=f"Nouvelle recrue ({wanted.value})",
                role=wanted,
                facility_id=str(leaver.facility_id),
                reason="prise de poste en milieu de mois",
                practitioner_id=str(leaver.practitioner_id) if leaver.practitioner_id else None,
            )
            approve_role_grant(
                runtime,
                actor=dataclasses.replace(approver, second_factor_at=clock.now()),
                grant_id=created.grant.id,
            )
        except AccountContained as exc:  # a false containment of an administrator: counted
            result.containments.append(f"administrators opening accounts on {clock.now().date()}: {exc}")
            return
        everyone[leaver_at] = dataclasses.replace(
            leaver,
            username=created.username,
            account_id=uuid.UUID(created.account_id),
            session_id=uuid.uuid4(),
        )
        result.joiners.append(f"{created.username} replaces {leaver.username}")


def _shares(items: list[Visit], n: int) -> Iterator[list[Visit]]:
    for i in range(n):
        yield items[i::n]


def run_benign(
    runtime: Runtime,
    *,
    days: int,
    first_day: dt.date,
    limit: int | None = None,
    seed: int = 6,
    movable: clock.MovableClock | None = None,
    roles: tuple[Role, ...] = WORKERS,
    shard: tuple[int, int] = (0, 1),
) -> BenignResult:
    """`limit`: only the first N clinicians (front desk and billing all work). `movable`: the clock
    to move (a test's); by default one is installed (refused in production). `shard` (i, n):
    simulate only every n-th staff member from the i-th, the day's work still shared out among
    everyone, so n processes on n copies of the database together run the whole hospital."""
    index, shards = shard
    if not 0 <= index < shards:
        raise InvalidInput("a shard is i/n with 0 <= i < n")
    movable = movable or install_movable_clock(runtime.settings)
    rng = random.Random(seed)
    zone = zoneinfo.ZoneInfo(get_detection_config().timezone)
    everyone = staff(runtime, limit=limit, roles=roles)
    result = BenignResult()
    contained: set[str] = set()
    # Each clinician's rank among clinicians: the night rota is drawn on it.
    clinical = [i for i, a in enumerate(everyone) if _role_of(a.roles) in CLINICAL]
    rank = {position: n for n, position in enumerate(clinical)}
    for offset in range(days):
        day = first_day + dt.timedelta(days=offset)
        if offset == days // 2 and days > 1:
            movable.set(dt.datetime.combine(day, dt.time(7, 0), tzinfo=zone))
            onboard(runtime, everyone, result=result, movable=movable)
        desks = [a for a in everyone if Role.FRONT_DESK in a.roles or Role.BILLING in a.roles]
        fdays = facility_days(runtime, day=day, seed=seed) if desks else {}
        by_facility: dict[tuple[uuid.UUID | None, Role], list[Actor]] = {}
        for actor in desks:
            role = Role.FRONT_DESK if Role.FRONT_DESK in actor.roles else Role.BILLING
            by_facility.setdefault((actor.facility_id, role), []).append(actor)
        work: dict[str, tuple[list[Visit], list[Visit]]] = {}
        for (facility_id, role), team in by_facility.items():
            fday = fdays.get(facility_id) if facility_id is not None else None
            if fday is None:
                continue
            if role is Role.FRONT_DESK:
                callers = iter(fday.callers)
                for member, arrivals in zip(team, _shares(fday.arrivals, len(team)), strict=True):
                    mine = [c for _, c in zip(range(CALLERS_PER_AGENT), callers, strict=False)]
                    work[member.actor_ref] = (arrivals, mine)
            else:
                counter = iter(reversed(fday.callers))
                for member, visits in zip(team, _shares(fday.to_invoice, len(team)), strict=True):
                    mine = [c for _, c in zip(range(COUNTER_VISITS_PER_CLERK), counter, strict=False)]
                    work[member.actor_ref] = (visits, mine)
        for position, actor in enumerate(everyone):
            if actor.actor_ref in contained or position % shards != index:
                continue
            night = position in rank and on_nights(rank[position], offset)
            start = dt.datetime.combine(day, dt.time(22 if night else 8, rng.randrange(0, 30)), tzinfo=zone)
            result.night_shifts += night
            movable.set(start)
            # A session opened at the start of the day, with its login's second factor.
            actor = dataclasses.replace(actor, session_id=uuid.uuid4(), second_factor_at=clock.now())
            worker = _Worker(runtime, actor, result, movable, rng)
            result.staff_days[worker.role] += 1
            try:
                if worker.role in (Role.PHYSICIAN.value, Role.NURSE.value):
                    result.clinician_days += 1
                    result.patients_opened += worker.clinician_day(day)
                elif actor.actor_ref in work:
                    first, second = work[actor.actor_ref]
                    fday = fdays[actor.facility_id]  # type: ignore[index]
                    if worker.role == Role.FRONT_DESK.value:
                        result.patients_opened += worker.front_desk_day(first, second, fday)
                    else:
                        result.patients_opened += worker.billing_day(first, second)
            except AccountContained as exc:
                contained.add(actor.actor_ref)
                result.containments.append(f"{actor.username} ({worker.role}) on {day}: {exc}")
    return result
