"""Stays (encounters): admit, transfer, discharge, entered in error; run only by the gate kernel."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.exc import IntegrityError

from carnet.access.models import WardAssignment
from carnet.access.permissions import Permission
from carnet.access.policy import PATIENT_LOCATE, Relationship
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.kernel import localtime
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import Location, Practitioner
from carnet.patients.models import Patient
from carnet.patients.views import patient_view
from carnet.phi import care
from carnet.phi.kernel import RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import (
    BoardBed,
    BoardRoom,
    EncounterInput,
    EncounterView,
    FreeBed,
    ReceivedEncounterInput,
    Ward,
    WardBoard,
    WardStay,
)
from carnet.phi.steps import (
    SECTION_LIMIT,
    expose_worklist,
    facility_practitioner,
    first_version,
    own_worklist,
    read_one,
    received_json,
    received_of,
    received_shown,
    redact,
    section,
    writing_practitioner,
    written,
)
from carnet.records import beds
from carnet.records.views import encounter_data
from carnet.scheduling.models import Encounter


def _stay(tx: GuardedTx, encounter_id: str, expected_version: int) -> tuple[Encounter, Patient]:
    """A stay to change: in progress, written by a practitioner in the patient's care, at
    the version the client read (a stale one is refused before its content is judged)."""
    writing_practitioner(tx)
    encounter, patient = tx.record_to_change(Encounter, encounter_id)
    tx.authorize(patient, RT.ENCOUNTER, write=True)
    if encounter.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if encounter.status != "in-progress":
        raise Conflict(
            f"this stay is {encounter.status}: only a stay in progress is transferred or discharged"
        )
    first_version(tx, RT.ENCOUNTER, encounter, patient, encounter_data(encounter, received_of(tx, encounter)))
    return encounter, patient


@guarded(AuditKind.PHI_CREATE, RT.ENCOUNTER, targeted=True)
def admit(tx: GuardedTx, /, *, data: EncounterInput) -> EncounterView:
    """Admit a patient (or open a visit): a stay in progress, version 1. Its attending
    physician and its ward's nurses gain a care relationship, which is why only a
    practitioner already caring for the patient admits (a stay cannot open a chart)."""
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.ENCOUNTER, write=True)
    if not patient.active or patient.merged_into_id is not None:
        raise Conflict("this patient record is inactive: admit the active record")
    start = data.start_at or tx.now
    if start.tzinfo is None:
        raise InvalidInput("the admission time needs a time zone")
    if start > tx.now + dt.timedelta(minutes=5):
        raise InvalidInput("an admission starts now or in the past (book an appointment for later)")
    location, bed = _placement(tx, data.location_id, data.bed_id, patient.facility_id)
    attending = facility_practitioner(tx, data.attending_id, patient.facility_id)
    # One stay in progress per patient: concurrent admissions are ordered by a lock on the
    # patient's row (a lock on stays that do not exist yet would order nothing). A no-op
    # UPDATE locks it on both engines: PostgreSQL locks the row, SQLite (whose SELECTs run
    # outside any transaction and have no FOR UPDATE) takes its one write lock here.
    tx.session.execute(
        update(Patient)
        .where(Patient.id == patient.id)
        .values(version_id=Patient.version_id)
        .execution_options(synchronize_session=False)
    )
    current = tx.session.scalar(
        select(Encounter.id)
        .where(Encounter.patient_id == patient.id, Encounter.status == "in-progress")
        .limit(1)
    )
    if current is not None:
        raise Conflict("the patient already has a stay in progress: transfer or discharge it")
    if bed is not None:
        _take(tx, bed, None)
    encounter = Encounter(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        kind=data.kind,
        status="in-progress",
        start_at=start,
        end_at=None,
        location_id=location,
        attending_id=attending or author,
        bed_id=bed.id if bed else None,
        bed_history=beds.history_text(beds.moved([], bed.id, location, start)) if bed else None,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(encounter)
    _flush_bed(tx)
    return written(tx, patient, RT.ENCOUNTER, EncounterView, encounter_data(encounter), 1, "create")


@guarded(AuditKind.PHI_CREATE, RT.ENCOUNTER, targeted=True)
def record_encounter(tx: GuardedTx, /, *, data: ReceivedEncounterInput) -> EncounterView:
    """Another system's visit or stay that is not an admission here (finished, planned,
    cancelled...), kept whole as received. It names no attending and no ward of carnet's, so it
    makes no care relationship (an admission is a stay in progress: `admit`); it is written by a
    practitioner who may write the patient's stays, as an admission is."""
    writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.ENCOUNTER, write=True)
    if data.start_at.tzinfo is None or (data.end_at is not None and data.end_at.tzinfo is None):
        raise InvalidInput("Encounter.period: a time needs a time zone")
    if data.end_at is not None and data.end_at < data.start_at:
        raise InvalidInput("Encounter.period.end: before its start")
    encounter_id = new_id()
    received = received_json(tx, data.received, patient, {"subject": f"Patient/{patient.id}"})
    encounter = Encounter(
        id=encounter_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        kind=data.kind,
        status=data.status,
        start_at=data.start_at,
        end_at=data.end_at,
        location_id=None,
        attending_id=None,
        received_ct=tx.enc(received, patient.facility_id, "encounters", "received", encounter_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(encounter)
    tx.session.flush()
    data_out = encounter_data(encounter, dict(json.loads(received)))
    return written(tx, patient, RT.ENCOUNTER, EncounterView, data_out, 1, "create")


@guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
def transfer(
    tx: GuardedTx,
    /,
    *,
    encounter_id: str,
    expected_version: int,
    location_id: str | None,
    attending_id: str | None = None,
    bed_id: str | None = None,
) -> EncounterView:
    """Move a stay to another location or bed (and/or attending physician); If-Match on the
    version. A bed named is a free bed of the ward (the stay's, or the one it moves to); a new
    ward with no bed leaves the bed before (the stay waits for one there). The bed before is
    kept in the stay's history, its period ended."""
    encounter, patient = _stay(tx, encounter_id, expected_version)
    values: dict[str, Any] = {}
    location, bed = _placement(tx, location_id, bed_id, patient.facility_id)
    if location is not None and location != encounter.location_id:
        values["location_id"] = location
    new_bed = bed.id if bed is not None else (None if "location_id" in values else encounter.bed_id)
    if new_bed != encounter.bed_id:
        if bed is not None:
            _take(tx, bed, encounter.id)
        history = beds.moved(
            beds.history_of(encounter.bed_history), new_bed, location or encounter.location_id, tx.now
        )
        values["bed_id"] = new_bed
        values["bed_history"] = beds.history_text(history)
    attending = facility_practitioner(tx, attending_id, patient.facility_id)
    if attending is not None and attending != encounter.attending_id:
        values["attending_id"] = attending
    if not values:
        raise InvalidInput("a transfer names a new location or bed (or a new attending physician)")
    tx.bump(Encounter, encounter, expected_version, **values)
    _flush_bed(tx)
    data = encounter_data(encounter, _follow(tx, encounter, patient))
    return written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")


@guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
def discharge(
    tx: GuardedTx, /, *, encounter_id: str, expected_version: int, end_at: dt.datetime | None = None
) -> EncounterView:
    """End a stay: status finished, the period's end (now when not given)."""
    encounter, patient = _stay(tx, encounter_id, expected_version)
    end = end_at or tx.now
    if end.tzinfo is None:
        raise InvalidInput("the discharge time needs a time zone")
    if end > tx.now + dt.timedelta(minutes=5) or end < encounter.start_at:
        raise InvalidInput("a discharge happens after the admission and not in the future")
    # The bed is freed (only a stay in progress holds one); the stay keeps its last bed, ended.
    history = beds.history_text(beds.closed(beds.history_of(encounter.bed_history), end))
    tx.bump(Encounter, encounter, expected_version, status="finished", end_at=end, bed_history=history)
    data = encounter_data(encounter, _follow(tx, encounter, patient))
    return written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")


@guarded(AuditKind.PHI_UPDATE, RT.ENCOUNTER, targeted=True)
def mark_entered_in_error(tx: GuardedTx, /, *, encounter_id: str, expected_version: int) -> EncounterView:
    """A stay opened by mistake (wrong patient, duplicate admission): status
    entered-in-error, kept and readable with every earlier version. It is no longer in
    progress, so the patient can be admitted again, and the care relationships a stay
    makes (its attending, its ward's nurses: computed from stays in progress, see
    carnet.phi.care) end with it: a mistaken admission leaves no lasting access behind.
    Not under break-the-glass alone, as for admitting (WRITE_RULES)."""
    writing_practitioner(tx)
    encounter, patient = tx.record_to_change(Encounter, encounter_id)
    tx.authorize(patient, RT.ENCOUNTER, write=True)
    if encounter.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if encounter.status == "entered-in-error":
        raise Conflict("this stay is already marked entered-in-error")
    first_version(tx, RT.ENCOUNTER, encounter, patient, encounter_data(encounter, received_of(tx, encounter)))
    history = beds.history_text(beds.closed(beds.history_of(encounter.bed_history), tx.now))
    tx.bump(Encounter, encounter, expected_version, status="entered-in-error", bed_history=history)
    data = encounter_data(encounter, _follow(tx, encounter, patient))
    return written(tx, patient, RT.ENCOUNTER, EncounterView, data, encounter.version_id, "update")


def _location(tx: GuardedTx, value: str | None, facility_id: uuid.UUID) -> beds.Place | None:
    """A location of the facility as the bed rules see it, with the ward it is in."""
    if value is None:
        return None
    lid = parse_id(value)
    row = tx.session.get(Location, lid) if lid else None
    if row is None or row.facility_id != facility_id or (not row.active and row.kind != "bed"):
        raise InvalidInput("unknown location")
    ward, above = None, row
    for _level in range(3):  # bed -> room -> ward at most
        if above.kind == "ward":
            ward = above.id
            break
        parent = tx.session.get(Location, above.part_of_id) if above.part_of_id else None
        if parent is None or parent.facility_id != facility_id:
            break
        above = parent
    return beds.Place(row.id, row.kind, ward, row.active, row.name, row.part_of_id)


def _placement(
    tx: GuardedTx, location_id: str | None, bed_id: str | None, facility_id: uuid.UUID
) -> tuple[uuid.UUID | None, beds.Place | None]:
    """(the stay's location, its bed) from what was named: a bed named as the location is the
    bed (its ward the location); a bed must be in the ward named (carnet/records/beds.py)."""
    where = _location(tx, location_id, facility_id)
    bed = _location(tx, bed_id, facility_id)
    if where is not None and where.kind == "bed":
        if bed is not None and bed.kind == "bed" and bed.id != where.id:
            raise InvalidInput("name one bed for the stay")
        # A bed named as the location (FHIR Encounter.location[], in any order): it is the bed.
        where, bed = (bed if bed is not None and bed.kind != "bed" else None), where
    if (reason := beds.placement_refusal(where, bed)) is not None:
        raise InvalidInput(reason)
    if where is not None:
        return where.id, bed
    return (bed.ward_id if bed is not None else None), bed


def _take(tx: GuardedTx, bed: beds.Place, stay_id: uuid.UUID | None) -> None:
    """The bed must be free (or this stay's): two desks choosing it at once are ordered by a
    lock on the bed's row (a no-op UPDATE, as for the patient in `admit`), and the partial
    unique index refuses whatever slipped past."""
    tx.session.execute(
        update(Location)
        .where(Location.id == bed.id)
        .values(active=Location.active)
        .execution_options(synchronize_session=False)
    )
    occupant = tx.session.scalar(
        select(Encounter.id).where(Encounter.bed_id == bed.id, Encounter.status == "in-progress").limit(1)
    )
    if (reason := beds.occupancy_refusal(occupant, stay_id)) is not None:
        raise Conflict(reason)


def _flush_bed(tx: GuardedTx) -> None:
    try:
        tx.session.flush()
    except IntegrityError as exc:
        if "uq_encounters_bed_in_progress" in str(exc.orig) or "bed_id" in str(exc.orig):
            raise Conflict(beds.occupancy_refusal(uuid.uuid4(), None) or "") from None
        raise


def encounters_section(pid: uuid.UUID | None) -> Select[Encounter]:
    """The statement of a patient's stays section, newest first (the fast read sends it ahead)."""
    return select(Encounter).where(Encounter.patient_id == pid).order_by(Encounter.start_at.desc())


@guarded(AuditKind.PHI_READ, RT.ENCOUNTER, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[EncounterView]:
    rows, fields = section(tx, patient_id, RT.ENCOUNTER, encounters_section(parse_id(patient_id)))
    return [redact(EncounterView, encounter_data(r, received_shown(tx, r, fields)), fields) for r in rows]


@guarded(AuditKind.PHI_LIST, RT.ENCOUNTER, targeted=False)
def worklist(tx: GuardedTx, /, *, practitioner_id: str) -> list[EncounterView]:
    """A clinician's current inpatients (attending, or on their ward), as on their day list:
    their own only, bounded, counted as a list."""
    tx.require(Permission.DAY_LIST_READ)
    tx.check_scopes(RT.ENCOUNTER)
    own_worklist(tx, practitioner_id)
    mine = care.patient_filter(tx.ctx, {Relationship.ATTENDING, Relationship.WARD})
    rows: list[Any] = []
    if mine is not None:
        rows = list(
            tx.session.execute(
                select(Encounter, Patient)
                .join(Patient, Patient.id == Encounter.patient_id)
                .where(Encounter.status == "in-progress", mine)
                .order_by(Encounter.start_at)
                .limit(SECTION_LIMIT)
            ).all()
        )
    rels = tx.relationships_of([p for _e, p in rows])
    views: list[EncounterView] = []
    shown: list[Any] = []
    fields_shown: set[str] = set()
    for encounter, patient in rows:
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.ENCOUNTER)
        if not fields:
            continue
        views.append(redact(EncounterView, encounter_data(encounter), fields))
        shown.append(patient.id)
        fields_shown |= fields
        tx.resource_ids.append(str(encounter.id))
    expose_worklist(tx, shown, rels, fields_shown, "stays-worklist")
    return views


@guarded(AuditKind.PHI_READ, RT.ENCOUNTER, targeted=True)
def read(tx: GuardedTx, /, *, encounter_id: str) -> EncounterView:
    row, fields = read_one(tx, RT.ENCOUNTER, encounter_id)
    return redact(EncounterView, encounter_data(row, received_shown(tx, row, fields)), fields)


def _follow(tx: GuardedTx, encounter: Encounter, patient: Patient) -> dict[str, Any] | None:
    """A stay received from another system (kept whole) follows a change made in carnet: its
    status, its period's end, its current location; the version before keeps it as it was."""
    stored = received_of(tx, encounter)
    if stored is None:
        return None
    stored["status"] = encounter.status
    if encounter.end_at is not None:
        stored["period"] = {**(stored.get("period") or {}), "end": encounter.end_at.isoformat()}
    if encounter.location_id is not None:
        status = "active" if encounter.status == "in-progress" else "completed"
        current = [f"Location/{encounter.location_id}"]
        if encounter.bed_id is not None:
            current.append(f"Location/{encounter.bed_id}")
        here = [{"location": {"reference": c}, "status": status} for c in current]
        earlier = [
            {**e, "status": "completed"}
            for e in stored.get("location") or []
            if isinstance(e, dict) and (e.get("location") or {}).get("reference") not in current
        ]
        stored["location"] = [*earlier, *here]
    text = json.dumps(stored, ensure_ascii=False, sort_keys=True)
    encounter.received_ct = tx.enc(text, patient.facility_id, "encounters", "received", encounter.id)
    tx.session.flush()
    return stored


def _ward_places(tx: GuardedTx, ward_ids: list[uuid.UUID]) -> list[beds.Place]:
    """The rooms of these wards and the beds of those rooms (or of the wards themselves)."""
    children = list(tx.session.scalars(select(Location).where(Location.part_of_id.in_(ward_ids))))
    rooms = {r.id: r.part_of_id for r in children if r.kind == "room"}
    inner = (
        list(tx.session.scalars(select(Location).where(Location.part_of_id.in_(list(rooms)))))
        if rooms
        else []
    )

    def place(row: Location, ward: uuid.UUID | None) -> beds.Place:
        return beds.Place(row.id, row.kind, ward, row.active, row.name, row.part_of_id)

    return [place(c, c.part_of_id) for c in children] + [
        place(i, rooms.get(i.part_of_id)) for i in inner if i.part_of_id
    ]


def _board_rooms(tx: GuardedTx, ward_id: uuid.UUID, in_bed: dict[uuid.UUID, WardStay]) -> list[BoardRoom]:
    """The ward's rooms and beds in order, each bed free or occupied. Which beds are held is
    read without who holds them: a bed held by a stay this nurse does not see is occupied all
    the same (never shown free), and names no one."""
    places = _ward_places(tx, [ward_id])
    held = tx.session.scalars(
        select(Encounter.bed_id).where(
            Encounter.location_id == ward_id, Encounter.status == "in-progress", Encounter.bed_id.is_not(None)
        )
    )
    layout = beds.ward_layout(ward_id, places, in_bed, [b for b in held if b is not None])
    return [
        BoardRoom(
            id=str(r.room.id) if r.room else None,
            name=r.room.name if r.room else "",
            beds=[
                BoardBed(id=str(s.bed.id), name=s.bed.name, occupied=s.occupied, stay=s.occupant)
                for s in r.beds
            ],
        )
        for r in layout
    ]


@guarded(AuditKind.PHI_LIST, RT.ENCOUNTER, targeted=False)
def free_beds(tx: GuardedTx, /, *, ward_id: str | None = None) -> list[FreeBed]:
    """The free beds of the actor's facilities (or of one ward), ward by ward, to admit or
    transfer to: which beds no stay in progress holds, never who holds the others (no patient
    is exposed)."""
    tx.require(Permission.ENCOUNTER_WRITE)
    tx.check_scopes(RT.ENCOUNTER)
    chosen = select(Location).where(
        Location.facility_id.in_(tx.ctx.facility_ids), Location.kind == "ward", Location.active.is_(True)
    )
    if ward_id is not None:
        wanted = parse_id(ward_id)
        if wanted is None:
            raise InvalidInput("unknown ward")
        chosen = chosen.where(Location.id == wanted)
    wards = {w.id: w for w in tx.session.scalars(chosen)}
    if ward_id is not None and not wards:
        raise InvalidInput("unknown ward")
    places = _ward_places(tx, list(wards)) if wards else []
    held = set(
        tx.session.scalars(
            select(Encounter.bed_id).where(
                Encounter.facility_id.in_(tx.ctx.facility_ids),
                Encounter.status == "in-progress",
                Encounter.bed_id.is_not(None),
            )
        )
    )
    rooms = {p.id: p for p in places if p.kind == "room"}
    found: list[FreeBed] = []
    for place in places:
        if place.kind != "bed" or not place.active or place.id in held or place.ward_id not in wards:
            continue
        room = rooms.get(place.part_of_id) if place.part_of_id else None
        ward = wards[place.ward_id]
        found.append(
            FreeBed(
                id=str(place.id),
                name=place.name,
                room=room.name if room else "",
                ward_id=str(ward.id),
                ward_name=ward.name,
            )
        )
    found.sort(key=lambda b: (b.ward_name, beds.natural_key(b.room), beds.natural_key(b.name)))
    tx.query = f"free-beds;count={len(found)}"
    tx.reasons.append("free beds to admit or transfer to")
    return found


WARD_BOARD_LIMIT = 80  # stays shown per ward (a ward holds a few dozen beds)


@guarded(AuditKind.PHI_LIST, RT.ENCOUNTER, targeted=False)
def ward_board(tx: GuardedTx, /) -> WardBoard:
    """A nurse's ward board: the wards they work now (their ward assignments) and the stays in
    progress in each, with who is there (name, birth date, sex) and since when. Bounded to
    their wards: the same patients their ward relationship already opens, counted as one list
    of the day."""
    tx.require(Permission.ENCOUNTER_READ)
    for listed in (RT.PATIENT, RT.ENCOUNTER):
        tx.check_scopes(listed)
    me = tx.ctx.practitioner_id
    if me is None or Role.NURSE not in tx.ctx.roles:
        raise Refused("a ward board belongs to a nurse working a ward")
    wards = list(
        tx.session.scalars(
            select(Location)
            .join(WardAssignment, WardAssignment.location_id == Location.id)
            .where(
                WardAssignment.practitioner_id == me,
                WardAssignment.start_at <= tx.now,
                or_(WardAssignment.end_at.is_(None), WardAssignment.end_at > tx.now),
                Location.facility_id.in_(tx.ctx.facility_ids),
            )
            .order_by(Location.name)
        ).unique()
    )
    board: list[Ward] = []
    shown: list[Any] = []
    fields_shown: set[str] = set()
    rels: dict[Any, frozenset[Any]] = {}
    for ward in wards:
        rows = tx.session.execute(
            select(Encounter, Patient, Practitioner)
            .join(Patient, Patient.id == Encounter.patient_id)
            .outerjoin(Practitioner, Practitioner.id == Encounter.attending_id)
            .where(
                Encounter.location_id == ward.id,
                Encounter.status == "in-progress",
                care.visible_filter(tx.ctx),
            )
            .order_by(Encounter.start_at)
            .limit(WARD_BOARD_LIMIT)
        ).all()
        rels |= tx.relationships_of([p for _e, p, _pr in rows])
        stays: list[WardStay] = []
        in_bed: dict[uuid.UUID, WardStay] = {}
        for encounter, patient, attending in rows:
            rel = rels.get(patient.id, frozenset())
            p_fields = tx.read_fields(rel, RT.PATIENT) & PATIENT_LOCATE
            e_fields = tx.read_fields(rel, RT.ENCOUNTER)
            if not p_fields - {"id"} or not e_fields:
                continue
            stay = WardStay(
                encounter=redact(EncounterView, encounter_data(encounter), e_fields),
                patient=patient_view(tx, patient, p_fields),
                attending_name=f"{attending.given} {attending.family}" if attending else "",
                bed_since=beds.bed_since(beds.history_of(encounter.bed_history))
                if encounter.bed_id
                else None,
            )
            stays.append(stay)
            if encounter.bed_id is not None:
                in_bed[encounter.bed_id] = stay
            shown.append(patient.id)
            fields_shown |= p_fields
            tx.resource_ids.append(str(encounter.id))
        rooms = _board_rooms(tx, ward.id, in_bed)
        placed = {id(b.stay) for r in rooms for b in r.beds if b.stay is not None}
        waiting = [s for s in stays if id(s) not in placed]
        board.append(Ward(id=str(ward.id), name=ward.name, stays=stays, rooms=rooms, waiting=waiting))
    # One list, however many wards the nurse covers (a small clinic's nurse covers several).
    day = localtime.local_day(tx.now)
    event = SearchEvent(shape=SearchShape.LIST, term_digest=f"ward-board:{day.isoformat()}", page=1)
    tx.expose(shown, Channel.LIST, rels, fields_shown, shape=event)
    tx.query = f"ward-board;wards={len(wards)}"
    tx.reasons.append("own ward board")
    return WardBoard(wards=board)
