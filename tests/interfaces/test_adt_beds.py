"""ADT over a real MLLP connection with beds: PV1-3 point of care^room^bed takes the bed when
the facility keeps that ward's beds (A01, A02), a bed unknown or already taken is refused
(NAK, the reason said, nothing changed), A03 frees it; a ward whose beds carnet does not keep
takes the stay without a bed."""

from __future__ import annotations

from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from tests.factories import make_beds
from tests.interfaces.conftest import Hospital
from tests.interfaces.helpers import Person, adt, err, msa, send
from tests.interfaces.records import counts, rows


def test_adt_takes_moves_and_frees_beds(runtime: Runtime, hospital: Hospital, listener: int) -> None:
    cardio = make_beds(runtime, hospital.facility_id, hospital.cardio, {"101": ["1", "2"]})
    neuro = make_beds(runtime, hospital.facility_id, hospital.neuro, {"201": ["1"]})
    first, second = Person(ipp="IPPB1", family="LEROY"), Person(ipp="IPPB2", family="PETIT")

    [admitted] = send(listener, adt("A01", "B-1", first, attending=hospital.rpps, room_bed="101^1"))
    assert msa(admitted)[1] == "AA", msa(admitted)
    [stay] = rows(runtime, Encounter)
    assert (stay.location_id, stay.bed_id) == (hospital.cardio, cardio["101/1"])
    before = counts(runtime, hospital.facility_id)

    # The bed is taken: refused, the reason said, nothing written (not even the new patient).
    [taken] = send(listener, adt("A01", "B-2", second, visit="VN2", room_bed="101^1"))
    assert msa(taken)[1] == "AE" and "taken by another stay" in msa(taken)[3]
    assert counts(runtime, hospital.facility_id) == before
    # A bed the ward does not have: refused, naming PV1-3.
    [unknown] = send(listener, adt("A01", "B-3", second, visit="VN2", room_bed="101^9"))
    assert msa(unknown)[1] == "AE" and err(unknown)[2].startswith("PV1^1^3")
    assert "unknown bed" in msa(unknown)[3]
    assert counts(runtime, hospital.facility_id) == before

    # A02 to a bed of another ward; the bed before is kept in the stay's history, and freed.
    [moved] = send(listener, adt("A02", "B-4", first, location="NEURO", room_bed="201^1"))
    assert msa(moved)[1] == "AA", msa(moved)
    [stay] = rows(runtime, Encounter)
    assert (stay.location_id, stay.bed_id) == (hospital.neuro, neuro["201/1"])
    assert stay.bed_history is not None and str(cardio["101/1"]) in stay.bed_history
    [second_in] = send(listener, adt("A01", "B-5", second, visit="VN2", room_bed="101^1"))
    assert msa(second_in)[1] == "AA", msa(second_in)

    # A03 frees the bed: another admission takes it.
    [done] = send(listener, adt("A03", "B-6", first))
    assert msa(done)[1] == "AA", msa(done)
    third = Person(ipp="IPPB3", family="ROUX")
    [third_in] = send(listener, adt("A01", "B-7", third, visit="VN3", location="NEURO", room_bed="201^1"))
    assert msa(third_in)[1] == "AA", msa(third_in)
    held = sorted((e.status, e.bed_id == neuro["201/1"]) for e in rows(runtime, Encounter))
    assert held == [("finished", True), ("in-progress", False), ("in-progress", True)]
