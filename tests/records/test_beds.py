"""The bed rules as a table of cases (pure), then through the gate on SQLite and PostgreSQL:
admit to a free bed, transfer (keeping the bed before in the stay's history), discharge frees
it, a taken bed or a bed of another ward is refused and changes nothing, the database refuses
a second stay in a bed even past the domain, and the nurse's bed board."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.kernel import clock
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import EncounterInput
from carnet.records import beds
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from tests import factories as f

WARD, OTHER_WARD = uuid.uuid4(), uuid.uuid4()
ROOM = uuid.uuid4()
BED = beds.Place(uuid.uuid4(), "bed", WARD, True, "A", ROOM)
CLOSED_BED = beds.Place(uuid.uuid4(), "bed", WARD, False, "B", ROOM)
LOOSE_BED = beds.Place(uuid.uuid4(), "bed", None, True, "C", None)
A_ROOM = beds.Place(ROOM, "room", WARD, True, "Room 1", WARD)
A_WARD = beds.Place(WARD, "ward", WARD, True, "Cardiologie")
ANOTHER_WARD = beds.Place(OTHER_WARD, "ward", OTHER_WARD, True, "Pneumologie")
STAY, OTHER_STAY = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("ward", "bed", "refused"),
    [
        (A_WARD, None, None),  # a stay waiting for a bed
        (A_WARD, BED, None),  # a bed of its ward
        (None, BED, None),  # a bed alone: its ward is the stay's
        (ANOTHER_WARD, BED, "this bed is not in the stay's ward: choose a bed of that ward"),
        (A_WARD, A_ROOM, "this location is not a bed"),
        (A_WARD, CLOSED_BED, "this bed is closed"),
        (None, LOOSE_BED, "this bed belongs to no ward"),
    ],
)
def test_placement_rule(ward: beds.Place | None, bed: beds.Place | None, refused: str | None) -> None:
    assert beds.placement_refusal(ward, bed) == refused


@pytest.mark.parametrize(
    ("occupant", "stay", "refused"),
    [
        (None, None, None),  # a free bed, a new stay
        (None, STAY, None),  # a free bed, a transfer
        (STAY, STAY, None),  # the stay's own bed
        (OTHER_STAY, None, "this bed is taken by another stay in progress: choose a free bed"),
        (OTHER_STAY, STAY, "this bed is taken by another stay in progress: choose a free bed"),
    ],
)
def test_occupancy_rule(occupant: uuid.UUID | None, stay: uuid.UUID | None, refused: str | None) -> None:
    assert beds.occupancy_refusal(occupant, stay) == refused


T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
T1, T2 = T0 + dt.timedelta(hours=5), T0 + dt.timedelta(days=2)


def test_a_stays_beds_over_time() -> None:
    b1, b2 = uuid.uuid4(), uuid.uuid4()
    admitted = beds.moved([], b1, WARD, T0)
    assert admitted == [beds.BedPeriod(str(b1), str(WARD), T0)]
    assert beds.moved(admitted, b1, WARD, T1) == admitted  # the bed it holds: nothing moves
    transferred = beds.moved(admitted, b2, OTHER_WARD, T1)
    assert transferred == [
        beds.BedPeriod(str(b1), str(WARD), T0, T1),  # the bed before is kept, ended
        beds.BedPeriod(str(b2), str(OTHER_WARD), T1),
    ]
    assert beds.bed_since(transferred) == T1
    waiting = beds.moved(transferred, None, WARD, T2)  # to a ward with no bed yet
    assert [p.end for p in waiting] == [T1, T2] and beds.bed_since(waiting) is None
    discharged = beds.closed(transferred, T2)
    assert discharged[-1].end == T2
    assert beds.history_of(beds.history_text(discharged)) == discharged
    assert beds.history_text([]) is None and beds.history_of(None) == []


def test_a_wards_layout_in_order_free_and_occupied() -> None:
    r2, r10 = uuid.uuid4(), uuid.uuid4()
    a2, b2, a10, loose = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    places = [
        beds.Place(r10, "room", WARD, True, "Room 10", WARD),
        beds.Place(r2, "room", WARD, True, "Room 2", WARD),
        beds.Place(b2, "bed", WARD, True, "B", r2),
        beds.Place(a2, "bed", WARD, True, "A", r2),
        beds.Place(a10, "bed", WARD, True, "A", r10),
        beds.Place(loose, "bed", WARD, True, "Couloir", WARD),
        beds.Place(uuid.uuid4(), "bed", WARD, False, "Z", r2),  # closed: not on the board
    ]
    layout = beds.ward_layout(WARD, places, {a2: "Martin"}, occupied=[a10])
    assert [
        (r.room.name if r.room else None, [(s.bed.name, s.occupant, s.occupied) for s in r.beds])
        for r in layout
    ] == [
        ("Room 2", [("A", "Martin", True), ("B", None, False)]),
        ("Room 10", [("A", None, True)]),  # occupied by a stay not shown: never "free"
        (None, [("Couloir", None, False)]),
    ]


# == through the gate =========================================================================
def _hospital(runtime: Runtime) -> dict[str, object]:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    nurse = f.make_nurse(runtime, facility)
    ward, other = f.make_location(runtime, facility), f.make_location(runtime, facility)
    placed = f.make_beds(runtime, facility, ward, {"Room 2": ["A", "B"], "Room 10": ["A"]})
    elsewhere = f.make_beds(runtime, facility, other, {"Room 1": ["A"]})
    assert doctor.practitioner_id is not None and nurse.practitioner_id is not None
    f.assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    patients = []
    for family in ("Premier", "Second"):
        p = f.register_patient(runtime, facility, family=family)
        f.link_care(runtime, patient_id=p.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
        patients.append(p.id)
    return {
        "facility": facility,
        "doctor": doctor,
        "nurse": nurse,
        "ward": ward,
        "other": other,
        "bed": placed,
        "elsewhere": elsewhere,
        "patients": patients,
    }


def _stays(runtime: Runtime) -> list[tuple[str, uuid.UUID | None]]:
    with runtime.session_factory() as session:
        return [(e.status, e.bed_id) for e in session.scalars(select(Encounter).order_by(Encounter.start_at))]


def test_admit_transfer_discharge_with_beds(runtime: Runtime) -> None:
    h = _hospital(runtime)
    gate = Gate(runtime, h["doctor"])  # type: ignore[arg-type]
    first, second = h["patients"]  # type: ignore[misc]
    bed: dict[str, uuid.UUID] = h["bed"]  # type: ignore[assignment]
    elsewhere: dict[str, uuid.UUID] = h["elsewhere"]  # type: ignore[assignment]
    ward, other = str(h["ward"]), str(h["other"])
    a2, b2, a10 = str(bed["Room 2/A"]), str(bed["Room 2/B"]), str(bed["Room 10/A"])

    free = {b.id for b in gate.free_beds()}
    assert free == {a2, b2, a10, str(elsewhere["Room 1/A"])}

    # A bed of another ward is refused; so is a room as a bed; nothing is written.
    with pytest.raises(InvalidInput, match="not in the stay's ward"):
        gate.admit_patient(
            data=EncounterInput(patient_id=first, kind="inpatient", location_id=other, bed_id=a2)
        )
    with pytest.raises(InvalidInput, match="not a bed"):
        gate.admit_patient(
            data=EncounterInput(
                patient_id=first, kind="inpatient", location_id=ward, bed_id=str(bed["Room 2"])
            )
        )
    assert _stays(runtime) == []

    stay = gate.admit_patient(
        data=EncounterInput(patient_id=first, kind="inpatient", location_id=ward, bed_id=a2)
    )
    assert (stay.location_id, stay.bed_id) == (ward, a2)
    assert stay.beds is not None and [b.bed_id for b in stay.beds] == [a2]
    assert a2 not in {b.id for b in gate.free_beds()}

    # The bed is taken: refused with the reason, nothing changed.
    with pytest.raises(Conflict, match="taken by another stay"):
        gate.admit_patient(data=EncounterInput(patient_id=second, kind="inpatient", bed_id=a2))
    assert _stays(runtime) == [("in-progress", bed["Room 2/A"])]
    # A bed alone names its ward.
    waiting = gate.admit_patient(data=EncounterInput(patient_id=second, kind="inpatient", location_id=ward))
    assert waiting.bed_id is None

    # Transfer to a taken bed: refused; to a free bed of the same ward, then of another ward.
    with pytest.raises(Conflict, match="taken"):
        gate.transfer_encounter(encounter_id=waiting.id, expected_version=1, location_id=None, bed_id=a2)
    moved = gate.transfer_encounter(encounter_id=stay.id, expected_version=1, location_id=None, bed_id=b2)
    assert (moved.location_id, moved.bed_id, moved.version_id) == (ward, b2, 2)
    away = str(elsewhere["Room 1/A"])
    moved = gate.transfer_encounter(encounter_id=stay.id, expected_version=2, location_id=None, bed_id=away)
    assert (moved.location_id, moved.bed_id) == (other, away)
    assert moved.beds is not None
    assert [(b.bed_id, b.end is None) for b in moved.beds] == [(a2, False), (b2, False), (away, True)]
    # The freed bed is free again: the waiting stay takes it.
    took = gate.transfer_encounter(encounter_id=waiting.id, expected_version=1, location_id=None, bed_id=a2)
    assert took.bed_id == a2
    with pytest.raises(InvalidInput, match="new location or bed"):
        gate.transfer_encounter(encounter_id=waiting.id, expected_version=2, location_id=ward, bed_id=a2)

    # Discharge frees the bed; the stay keeps its last bed, its period ended.
    done = gate.discharge_encounter(encounter_id=stay.id, expected_version=3)
    assert done.status == "finished" and done.bed_id == away
    assert done.beds is not None and all(b.end is not None for b in done.beds)
    assert away in {b.id for b in gate.free_beds()}
    third = f.register_patient(runtime, h["facility"], family="Troisieme")  # type: ignore[arg-type]
    doctor = h["doctor"]
    f.link_care(
        runtime, patient_id=third.id, practitioner_id=doctor.practitioner_id, facility_id=h["facility"]
    )  # type: ignore[attr-defined,arg-type]
    again = gate.admit_patient(data=EncounterInput(patient_id=third.id, kind="inpatient", bed_id=away))
    assert again.bed_id == away


def test_the_database_refuses_a_second_stay_in_a_bed(runtime: Runtime) -> None:
    """Past the domain (two desks racing), the partial unique index is the last word; a
    finished stay in the same bed is allowed (only a stay in progress holds a bed)."""
    h = _hospital(runtime)
    bed = h["bed"]["Room 2/A"]  # type: ignore[index]
    facility, ward = h["facility"], h["ward"]
    first, second = h["patients"]  # type: ignore[misc]

    def row(patient: str, status: str) -> Encounter:
        now = clock.now()
        return Encounter(
            facility_id=facility,
            patient_id=uuid.UUID(patient),
            kind="inpatient",
            status=status,
            start_at=now,
            location_id=ward,
            bed_id=bed,
            created_at=now,
            updated_at=now,
        )

    with runtime.session_factory.begin() as session:
        session.add_all([row(first, "in-progress"), row(second, "finished")])
    with pytest.raises(IntegrityError), runtime.session_factory.begin() as session:
        session.add(row(second, "in-progress"))


def test_the_bed_board_is_the_nurses_wards_only(runtime: Runtime) -> None:
    h = _hospital(runtime)
    gate = Gate(runtime, h["doctor"])  # type: ignore[arg-type]
    first, second = h["patients"]  # type: ignore[misc]
    bed: dict[str, uuid.UUID] = h["bed"]  # type: ignore[assignment]
    gate.admit_patient(data=EncounterInput(patient_id=first, kind="inpatient", bed_id=str(bed["Room 10/A"])))
    gate.admit_patient(data=EncounterInput(patient_id=second, kind="inpatient", location_id=str(h["ward"])))
    outsider = f.register_patient(runtime, h["facility"], family="Ailleurs")  # type: ignore[arg-type]
    f.link_care(
        runtime,
        patient_id=outsider.id,
        practitioner_id=h["doctor"].practitioner_id,
        facility_id=h["facility"],
    )  # type: ignore[attr-defined,arg-type]
    gate.admit_patient(
        data=EncounterInput(patient_id=outsider.id, kind="inpatient", bed_id=str(h["elsewhere"]["Room 1/A"]))  # type: ignore[index]
    )

    board = Gate(runtime, h["nurse"]).ward_board()  # type: ignore[arg-type]
    (ward,) = board.wards
    assert ward.id == str(h["ward"])
    assert [
        (r.name, [(b.name, b.stay.patient.family if b.stay else None, b.occupied) for b in r.beds])
        for r in ward.rooms
    ] == [
        ("Room 2", [("A", None, False), ("B", None, False)]),
        ("Room 10", [("A", "Premier", True)]),
    ]
    assert [s.patient.family for s in ward.waiting] == ["Second"]
    assert sorted(s.patient.family for s in ward.stays) == ["Premier", "Second"]  # not "Ailleurs"
    assert (ward.free_beds, ward.bed_count) == (2, 3)
    with pytest.raises((Forbidden, NotFound)):
        Gate(runtime, h["doctor"]).ward_board()  # type: ignore[arg-type]
