"""What each message does: ADT events onto patients and stays, ORU^R01 onto results and lab
reports, through the gate's write operations (carnet.interfaces.operation.MessageWork).

Every refusal is a MessageError naming the segment and field, never the value sent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hl7
from pydantic import BaseModel, ValidationError

from carnet.interfaces import hl7v2
from carnet.interfaces.hl7v2 import ErrorCode, Header, MessageError
from carnet.interfaces.operation import MessageWork
from carnet.phi.schemas import (
    DiagnosticReportInput,
    EncounterInput,
    ObservationInput,
    PatientChanges,
    PatientInput,
)

# The INS (France's national health identifier) in PID-3: its identifier type code, or the
# OIDs of its assigning authorities (INS-NIR, INS-NIA, and their test authorities).
INS_TYPE = "INS"
INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
# PV1-2 patient class (table 0004) -> the kind of stay.
PATIENT_CLASS = {"I": "inpatient", "O": "outpatient", "E": "emergency"}
# OBX-11 observation result status (table 0085) -> the FHIR status of a new result.
RESULT_STATUS = {"F": "final", "P": "preliminary", "R": "preliminary", "C": "corrected"}
REPORT_STATUS = {"F": "final", "P": "preliminary", "R": "preliminary", "C": "corrected", "": "final"}
_PATIENT_FIELDS = {
    "family": 5,
    "given": 5,
    "birth_date": 7,
    "gender": 8,
    "ins": 3,
    "address": 11,
    "phone": 13,
    "email": 13,
}
_RESULT_FIELDS = {
    "code": 3,
    "display": 3,
    "unit": 6,
    "value_text": 5,
    "value_number": 5,
    "effective_at": 14,
    "reference_range": 7,
    "interpretation": 8,
}


@dataclass(frozen=True)
class Context:
    """One message as the handlers see it."""

    message: hl7.Message
    head: Header
    zone: str  # the interface's time zone, for HL7 times without an offset
    interface_name: str
    now: dt.datetime
    # An ORU^R01's patient groups, once parsed (`result_keys`): the handler reads them again.
    result_groups: list[PatientResults] | None = None


def _build(model: type[BaseModel], where: tuple[str, int], fields: dict[str, int], **values: Any) -> Any:
    """A gate input; its validation error as a MessageError naming the field, not the value."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise MessageError(
            f"{name.replace('_', ' ')}: {first['msg']}",
            code=ErrorCode.DATA_TYPE,
            segment=where[0],
            sequence=where[1],
            field=fields.get(name),
        ) from None


# == patients ======================================================================================
@dataclass
class PatientIds:
    ins: str | None
    local_keys: list[str] = field(default_factory=list)


def identifiers(segment: Any, index: int, where: tuple[str, int]) -> PatientIds:
    """The INS and the sender's local identifiers of a CX field (PID-3, MRG-1)."""
    ins: str | None = None
    local: list[str] = []
    for rep in hl7v2.repetitions(segment, index):
        value = rep[0] if rep else ""
        if not value:
            continue
        authority = rep[3] if len(rep) > 3 else ""
        kind = rep[4] if len(rep) > 4 else ""
        universal = authority.split("&")[1] if "&" in authority else ""
        if kind == INS_TYPE or universal in INS_OIDS:
            if not value.isdigit() or len(value) not in (13, 15):
                raise MessageError(
                    "the INS has 13 or 15 digits",
                    code=ErrorCode.DATA_TYPE,
                    segment=where[0],
                    sequence=where[1],
                    field=index,
                )
            ins = value
        else:
            namespace = authority.split("&")[0]
            local.append(f"{namespace}|{universal}|{value}")
    if ins is None and not local:
        raise MessageError(
            "no patient identifier",
            code=ErrorCode.REQUIRED_FIELD,
            segment=where[0],
            sequence=where[1],
            field=index,
        )
    return PatientIds(ins=ins, local_keys=local)


def demographics(segment: Any, *, sequence: int) -> dict[str, Any]:
    """PID-5, 7, 8, 11 and 13 as carnet's patient fields (only those sent)."""
    where = ("PID", 7, sequence)
    values: dict[str, Any] = {}
    family = hl7v2.component(segment, 5, 1).split("&")[0]
    given = hl7v2.component(segment, 5, 2)
    if family:
        values["family"] = family
    if given:
        values["given"] = given
    birth = hl7v2.date(hl7v2.text(segment, 7), where=where)
    if birth is not None:
        values["birth_date"] = birth
    sex = hl7v2.text(segment, 8)
    if sex:
        if sex not in SEX:
            raise MessageError(
                "administrative sex is not in HL7 table 0001",
                code=ErrorCode.TABLE_VALUE,
                segment="PID",
                sequence=sequence,
                field=8,
            )
        values["gender"] = SEX[sex]
    addresses = hl7v2.repetitions(segment, 11)
    if addresses:
        parts = addresses[0] + [""] * 6
        address = {
            "line": " ".join(p for p in (parts[0].replace("&", " "), parts[1]) if p),
            "city": parts[2],
            "state": parts[3],
            "postalCode": parts[4],
            "country": parts[5],
        }
        address = {k: v for k, v in address.items() if v}
        if address:
            values["address"] = address
    for rep in hl7v2.repetitions(segment, 13):
        parts = rep + [""] * 12
        if parts[1] == "NET" and parts[3]:
            values.setdefault("email", parts[3])
        elif parts[0] or parts[11]:
            values.setdefault("phone", parts[0] or parts[11])
    return values


def _unknown_patient(sequence: int, why: str) -> MessageError:
    return MessageError(
        f"no patient with these identifiers at this facility ({why})",
        code=ErrorCode.UNKNOWN_KEY,
        segment="PID",
        sequence=sequence,
        field=3,
    )


def _link_patient(
    work: MessageWork, ids: PatientIds, patient_id: uuid.UUID, *, merged: bool = False, sequence: int = 1
) -> None:
    """Remember the sender's numbers for this patient. A number already naming another patient
    (not one merged into this one) is an identity conflict for a person to resolve: refused,
    unless this message is the merge that makes them one (`merged`)."""
    for key in ids.local_keys:
        link = work.link("patient", key)
        if link is not None and link.target_id == patient_id:
            continue
        if link is not None and not merged and work.find_patient(ins=None, local_keys=[key]) != patient_id:
            raise MessageError(
                "the sender's patient number and the INS name two different patients: identity to check",
                code=ErrorCode.DUPLICATE_KEY,
                segment="PID",
                sequence=sequence,
                field=3,
            )
        work.set_link("patient", key, patient_id)


def known_patient(work: MessageWork, pid: Any, *, sequence: int, why: str) -> uuid.UUID:
    ids = identifiers(pid, 3, ("PID", sequence))
    found = work.find_patient(ins=ids.ins, local_keys=ids.local_keys)
    if found is None:
        raise _unknown_patient(sequence, why)
    _link_patient(work, ids, found, sequence=sequence)
    return found


def patient_or_register(work: MessageWork, pid: Any) -> uuid.UUID:
    """The patient of an admission or a registration; registered when the facility has none
    with these identifiers (the gate refuses a duplicate as it does for the front desk)."""
    ids = identifiers(pid, 3, ("PID", 1))
    found = work.find_patient(ins=ids.ins, local_keys=ids.local_keys)
    if found is None:
        values = demographics(pid, sequence=1)
        for name, index in (("family", 5), ("given", 5), ("birth_date", 7), ("gender", 8)):
            if name not in values:
                raise MessageError(
                    f"a new patient needs a {name.replace('_', ' ')}",
                    code=ErrorCode.REQUIRED_FIELD,
                    segment="PID",
                    field=index,
                )
        data = _build(
            PatientInput,
            ("PID", 1),
            _PATIENT_FIELDS,
            facility_id=str(work.facility_id),
            ins=ids.ins,
            **values,
        )
        view = work.call("register_patient", ("PID", 1), data=data)
        found = uuid.UUID(view.id)
    _link_patient(work, ids, found)
    return found


# == stays =========================================================================================
def _visit_key(pv1: Any) -> str:
    number = hl7v2.component(pv1, 19, 1)
    if not number:
        raise MessageError(
            "the visit number is required", code=ErrorCode.REQUIRED_FIELD, segment="PV1", field=19
        )
    authority = hl7v2.component(pv1, 19, 4)
    return f"{authority}|{number}"


def _stay_of(work: MessageWork, pv1: Any, *, patient_id: uuid.UUID) -> tuple[uuid.UUID, Any]:
    link = work.link("visit", _visit_key(pv1))
    state = work.stay(link.target_id) if link is not None else None
    if link is None or state is None:
        raise MessageError(
            "no stay with this visit number", code=ErrorCode.UNKNOWN_KEY, segment="PV1", field=19
        )
    if state.patient_id != patient_id:
        raise MessageError(
            "this visit number is another patient's stay", code=ErrorCode.UNKNOWN_KEY, segment="PV1", field=19
        )
    return link.target_id, state


def _location(work: MessageWork, pv1: Any, *, required: bool) -> str | None:
    name = hl7v2.component(pv1, 3, 1)
    if not name:
        if required:
            raise MessageError(
                "the new location is required", code=ErrorCode.REQUIRED_FIELD, segment="PV1", field=3
            )
        return None
    found = work.location(name)
    if found is None:
        raise MessageError(
            "unknown location (point of care)", code=ErrorCode.UNKNOWN_KEY, segment="PV1", field=3
        )
    return found


def _bed(work: MessageWork, pv1: Any, ward: str | None) -> str | None:
    """PV1-3.3 (in room PV1-3.2) as the facility's bed of the point of care; none sent, the stay
    waits for a bed; a bed the facility does not have is refused (NAK), nothing changed. A
    point of care whose rooms and beds carnet does not keep takes the stay without a bed."""
    bed = hl7v2.component(pv1, 3, 3)
    if not bed:
        return None
    if ward is None:
        raise MessageError(
            "a bed needs its point of care (PV1-3.1)", code=ErrorCode.REQUIRED_FIELD, segment="PV1", field=3
        )
    if not work.keeps_beds(ward):
        return None
    found = work.bed(ward, hl7v2.component(pv1, 3, 2), bed)
    if found is None:
        raise MessageError(
            "unknown bed (room and bed of this point of care)",
            code=ErrorCode.UNKNOWN_KEY,
            segment="PV1",
            field=3,
        )
    return found


def _attending(work: MessageWork, pv1: Any) -> str | None:
    rpps = hl7v2.component(pv1, 7, 1)
    if not rpps:
        return None
    found = work.practitioner(rpps)
    if found is None:
        raise MessageError(
            "unknown attending doctor (an RPPS number of this facility)",
            code=ErrorCode.UNKNOWN_KEY,
            segment="PV1",
            field=7,
        )
    return found


def _event_time(ctx: Context, pv1: Any, pv1_field: int) -> dt.datetime | None:
    evn = ctx.message.segment("EVN")
    when = hl7v2.date_time(hl7v2.text(pv1, pv1_field), zone=ctx.zone, where=("PV1", pv1_field, 1))
    if when is None:
        when = hl7v2.date_time(hl7v2.text(evn, 6), zone=ctx.zone, where=("EVN", 6, 1))
    return when


def admit(ctx: Context, work: MessageWork) -> None:
    """A01 admit (or A04 register an outpatient): the patient (registered if new), a stay."""
    pid, pv1 = ctx.message.segment("PID"), ctx.message.segment("PV1")
    hl7v2.date_time(hl7v2.text(ctx.message.segment("EVN"), 2), zone=ctx.zone, where=("EVN", 2, 1))
    patient_id = patient_or_register(work, pid)
    key = _visit_key(pv1)
    if work.link("visit", key) is not None:
        raise MessageError(
            "a stay with this visit number was already admitted",
            code=ErrorCode.DUPLICATE_KEY,
            segment="PV1",
            field=19,
        )
    klass = hl7v2.text(pv1, 2)
    default = "inpatient" if ctx.head.message_type == "ADT^A01" else "outpatient"
    kind = PATIENT_CLASS.get(klass) if klass else default
    if kind is None:
        raise MessageError(
            "patient class must be I, O or E (table 0004)", code=ErrorCode.TABLE_VALUE, segment="PV1", field=2
        )
    ward = _location(work, pv1, required=False)
    data = _build(
        EncounterInput,
        ("PV1", 1),
        {"start_at": 44, "location_id": 3, "attending_id": 7, "bed_id": 3},
        patient_id=str(patient_id),
        kind=kind,
        start_at=_event_time(ctx, pv1, 44),
        location_id=ward,
        attending_id=_attending(work, pv1),
        bed_id=_bed(work, pv1, ward),
    )
    stay = work.call("admit_patient", ("PV1", 1), data=data)
    work.set_link("visit", key, stay.id)


def update_patient(ctx: Context, work: MessageWork) -> None:
    """A08: the identity and contact of a known patient (only the fields sent)."""
    pid = ctx.message.segment("PID")
    patient_id = known_patient(work, pid, sequence=1, why="A08 updates a known patient")
    values = demographics(pid, sequence=1)
    ids = identifiers(pid, 3, ("PID", 1))
    if ids.ins:
        values["ins"] = ids.ins
    changes = _build(PatientChanges, ("PID", 1), _PATIENT_FIELDS, **values)
    work.call(
        "update_patient",
        ("PID", 1),
        patient_id=str(patient_id),
        expected_version=work.patient_version(patient_id),
        changes=changes,
    )


def transfer(ctx: Context, work: MessageWork) -> None:
    """A02 transfer (and A12, cancel transfer: back to the location in PV1-3)."""
    pid, pv1 = ctx.message.segment("PID"), ctx.message.segment("PV1")
    patient_id = known_patient(work, pid, sequence=1, why="a transfer moves a known patient")
    stay_id, state = _stay_of(work, pv1, patient_id=patient_id)
    ward = _location(work, pv1, required=True)
    work.call(
        "transfer_encounter",
        ("PV1", 1),
        encounter_id=str(stay_id),
        expected_version=state.version_id,
        location_id=ward,
        attending_id=_attending(work, pv1),
        bed_id=_bed(work, pv1, ward),
    )


def discharge(ctx: Context, work: MessageWork) -> None:
    """A03: the stay ends (PV1-45, else EVN-6, else now)."""
    pid, pv1 = ctx.message.segment("PID"), ctx.message.segment("PV1")
    patient_id = known_patient(work, pid, sequence=1, why="a discharge ends a known patient's stay")
    stay_id, state = _stay_of(work, pv1, patient_id=patient_id)
    work.call(
        "discharge_encounter",
        ("PV1", 1),
        encounter_id=str(stay_id),
        expected_version=state.version_id,
        end_at=_event_time(ctx, pv1, 45),
    )


def cancel_admit(ctx: Context, work: MessageWork) -> None:
    """A11: the admission was a mistake: the stay is marked entered-in-error (kept)."""
    pid, pv1 = ctx.message.segment("PID"), ctx.message.segment("PV1")
    patient_id = known_patient(work, pid, sequence=1, why="a cancelled admission names a known patient")
    stay_id, state = _stay_of(work, pv1, patient_id=patient_id)
    work.call(
        "mark_encounter_entered_in_error",
        ("PV1", 1),
        encounter_id=str(stay_id),
        expected_version=state.version_id,
    )


def cancel_discharge(ctx: Context, work: MessageWork) -> None:
    """A13: the discharge was a mistake. carnet never reopens a finished stay (nothing is
    overwritten): the discharged stay is marked entered-in-error, kept with every version, and
    the same stay (kind, start, location, attending) is admitted again under the visit number."""
    pid, pv1 = ctx.message.segment("PID"), ctx.message.segment("PV1")
    patient_id = known_patient(work, pid, sequence=1, why="a cancelled discharge names a known patient")
    stay_id, state = _stay_of(work, pv1, patient_id=patient_id)
    if state.status != "finished":
        raise MessageError(
            "this visit's stay is not discharged: there is no discharge to cancel",
            code=ErrorCode.INTERNAL,
            segment="PV1",
            field=19,
        )
    work.call(
        "mark_encounter_entered_in_error",
        ("PV1", 1),
        encounter_id=str(stay_id),
        expected_version=state.version_id,
    )
    data = EncounterInput(
        patient_id=str(patient_id),
        kind=state.kind,
        start_at=state.start_at,
        location_id=_location(work, pv1, required=False) or state.location_id,
        attending_id=_attending(work, pv1) or state.attending_id,
    )
    stay = work.call("admit_patient", ("PV1", 1), data=data)
    work.set_link("visit", _visit_key(pv1), stay.id)


def merge(ctx: Context, work: MessageWork) -> None:
    """A40: each PID/MRG pair: the record in MRG-1 (the duplicate) merged into the PID's."""
    reason = f"HL7 A40 from interface {ctx.interface_name}"
    pids = ctx.message.segments("PID")
    mrgs = ctx.message.segments("MRG")
    for number, (pid, mrg) in enumerate(zip(pids, mrgs, strict=True), start=1):
        target = known_patient(work, pid, sequence=number, why="a merge keeps a known patient")
        old = identifiers(mrg, 1, ("MRG", number))
        source = work.find_patient(ins=old.ins, local_keys=old.local_keys)
        if source is None:
            raise MessageError(
                "no patient with the prior identifiers at this facility",
                code=ErrorCode.UNKNOWN_KEY,
                segment="MRG",
                sequence=number,
                field=1,
            )
        if source == target:
            raise MessageError(
                "the prior identifiers already name the patient kept (merged before?)",
                code=ErrorCode.DUPLICATE_KEY,
                segment="MRG",
                sequence=number,
                field=1,
            )
        work.call(
            "merge_patients",
            ("MRG", number),
            source_id=str(source),
            target_id=str(target),
            source_version=work.patient_version(source),
            target_version=work.patient_version(target),
            reason=reason,
        )
        _link_patient(work, old, target, merged=True)


# == results =======================================================================================
@dataclass
class Result:
    number: int  # the OBX's number in the message
    segment: Any
    notes: list[str] = field(default_factory=list)


@dataclass
class Order:
    number: int  # the OBR's number in the message
    segment: Any
    notes: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    orc: Any | None = None  # the common order segment before the OBR, when sent


@dataclass
class PatientResults:
    pid: Any
    sequence: int
    pv1: Any | None = None
    orders: list[Order] = field(default_factory=list)


def _result_groups(message: hl7.Message) -> list[PatientResults]:
    groups: list[PatientResults] = []
    counts: dict[str, int] = {}
    in_specimen = False
    orc: Any | None = None
    for segment in message:
        name = str(segment[0])
        counts[name] = counts.get(name, 0) + 1
        number = counts[name]
        if name == "PID":
            groups.append(PatientResults(pid=segment, sequence=number))
        elif name == "PV1" and groups:
            groups[-1].pv1 = segment
        elif name == "OBR":
            if not groups:
                raise MessageError(
                    "results need a patient (PID) before them", code=ErrorCode.REQUIRED_FIELD, segment="PID"
                )
            groups[-1].orders.append(Order(number=number, segment=segment, orc=orc))
            orc = None
            in_specimen = False
        elif name == "ORC":
            orc = segment
        elif name == "SPM":
            in_specimen = True
        elif name == "OBX" and groups and groups[-1].orders:
            if in_specimen:
                raise MessageError(
                    "observations about a specimen (OBX after SPM) are not kept by carnet",
                    code=ErrorCode.SEGMENT_SEQUENCE,
                    segment="OBX",
                    sequence=number,
                )
            groups[-1].orders[-1].results.append(Result(number=number, segment=segment))
        elif name == "NTE" and groups and groups[-1].orders:
            order = groups[-1].orders[-1]
            note = hl7v2.text(segment, 3).replace("~", " ")
            if note:
                if order.results:
                    order.results[-1].notes.append(note)
                else:
                    order.notes.append(note)
    return groups


@dataclass(frozen=True)
class Value:
    number: float | None
    unit: str | None
    text: str | None


def _value(obx: Any, number: int) -> Value:
    kind = hl7v2.text(obx, 2)
    raw = hl7v2.text(obx, 5)
    where: dict[str, Any] = {"segment": "OBX", "sequence": number}
    if not raw:
        raise MessageError(
            "the observation value is required", code=ErrorCode.REQUIRED_FIELD, field=5, **where
        )
    if kind == "NM":
        try:
            value = float(raw)
        except ValueError:
            raise MessageError(
                "a numeric (NM) value is not a number", code=ErrorCode.DATA_TYPE, field=5, **where
            ) from None
        unit = hl7v2.component(obx, 6, 1) or None
        return Value(value, unit, None)
    if kind == "SN":
        parts = [p for p in hl7v2.repetitions(obx, 5)[0] if p]
        return Value(None, None, "".join(parts))
    if kind in ("ST", "TX", "FT"):
        return Value(None, None, raw.replace("~", " "))
    if kind in ("CE", "CWE", "CNE"):
        return Value(None, None, hl7v2.component(obx, 5, 2) or hl7v2.component(obx, 5, 1))
    raise MessageError(
        "value type must be NM, SN, ST, TX, FT, CE, CWE or CNE", code=ErrorCode.TABLE_VALUE, field=2, **where
    )


def _order_key(obr: Any, number: int) -> str:
    filler = hl7v2.component(obr, 3, 1)
    if not filler:
        raise MessageError(
            "the filler order number is required",
            code=ErrorCode.REQUIRED_FIELD,
            segment="OBR",
            sequence=number,
            field=3,
        )
    return f"{hl7v2.component(obr, 3, 2)}|{filler}"


def results(ctx: Context, work: MessageWork) -> None:
    """ORU^R01: each order's results (Observations, units and reference ranges kept) and its lab
    report; a correction (C) amends the results it changes, every earlier version kept."""
    msh_time = hl7v2.date_time(hl7v2.text(ctx.message[0], 7), zone=ctx.zone, where=("MSH", 7, 1))
    groups = ctx.result_groups if ctx.result_groups is not None else _result_groups(ctx.message)
    work.prefetch(_result_keys(groups))
    for group in groups:
        patient_id = known_patient(
            work, group.pid, sequence=group.sequence, why="results are filed under a registered patient"
        )
        encounter_id: str | None = None
        if group.pv1 is not None and hl7v2.component(group.pv1, 19, 1):
            link = work.link("visit", _visit_key(group.pv1))
            state = work.stay(link.target_id) if link is not None else None
            if state is not None and state.patient_id != patient_id:
                raise MessageError(
                    "this visit number is another patient's stay",
                    code=ErrorCode.UNKNOWN_KEY,
                    segment="PV1",
                    field=19,
                )
            if link is not None and state is not None and state.status != "entered-in-error":
                encounter_id = str(link.target_id)
        for order in group.orders:
            _file_order(ctx, work, order, patient_id, encounter_id, msh_time)


def _result_keys(groups: list[PatientResults]) -> list[tuple[str, str]]:
    """The sender's identifiers a results message looks up (its patients, visits and reports),
    read together. A malformed one is left out: it is refused in its turn, where it is met."""
    keys: list[tuple[str, str]] = []
    for group in groups:
        try:
            keys.extend(
                ("patient", key) for key in identifiers(group.pid, 3, ("PID", group.sequence)).local_keys
            )
            if group.pv1 is not None and hl7v2.component(group.pv1, 19, 1):
                keys.append(("visit", _visit_key(group.pv1)))
            keys.extend(("report", _order_key(order.segment, order.number)) for order in group.orders)
        except MessageError:
            continue
    return keys


def result_keys(message: hl7.Message) -> tuple[list[PatientResults], tuple[tuple[str, str], ...]] | None:
    """An ORU^R01's patient groups (`Context.result_groups`) and the identifiers it looks up
    first (`results`), read with its group's before it runs; None when its segments do not say
    (it is refused in its turn, as alone)."""
    try:
        groups = _result_groups(message)
    except MessageError:
        return None
    return groups, tuple(_result_keys(groups))


def _file_order(
    ctx: Context,
    work: MessageWork,
    order: Order,
    patient_id: uuid.UUID,
    encounter_id: str | None,
    msh_time: dt.datetime | None,
) -> None:
    obr, n = order.segment, order.number
    key = _order_key(obr, n)
    status_code = hl7v2.text(obr, 25)
    if status_code not in REPORT_STATUS:
        raise MessageError(
            "result status must be F, P, R or C (table 0123)",
            code=ErrorCode.TABLE_VALUE,
            segment="OBR",
            sequence=n,
            field=25,
        )
    observed = hl7v2.date_time(hl7v2.text(obr, 7), zone=ctx.zone, where=("OBR", 7, n))
    issued = hl7v2.date_time(hl7v2.text(obr, 22), zone=ctx.zone, where=("OBR", 22, n)) or msh_time or ctx.now
    code = hl7v2.component(obr, 4, 1)
    if not code:
        raise MessageError(
            "the universal service identifier is required",
            code=ErrorCode.REQUIRED_FIELD,
            segment="OBR",
            sequence=n,
            field=4,
        )
    if not order.results:
        raise MessageError(
            "an order without results (OBX)", code=ErrorCode.REQUIRED_FIELD, segment="OBR", sequence=n
        )
    notes = list(order.notes)
    for result in order.results:
        notes.extend(f"{hl7v2.component(result.segment, 3, 1)}: {note}" for note in result.notes)
    conclusion = "\n".join(notes) or None
    existing = work.link("report", key)
    correction = status_code == "C"
    order_id = _answered_order(work, order, patient_id)
    if existing is None:
        if correction or any(hl7v2.text(r.segment, 11) in ("C", "D") for r in order.results):
            raise MessageError(
                "a correction of results carnet never received (no report with this filler order number)",
                code=ErrorCode.UNKNOWN_KEY,
                segment="OBR",
                sequence=n,
                field=3,
            )
        inputs = [_result_input(ctx, r, patient_id, encounter_id, observed, order_id) for r in order.results]
        data = _build(
            DiagnosticReportInput,
            ("OBR", n),
            {"code": 4, "display": 4, "issued_at": 22, "conclusion": 13, "order_id": 2},
            patient_id=str(patient_id),
            code=code,
            display=hl7v2.component(obr, 4, 2) or code,
            status=REPORT_STATUS[status_code],
            issued_at=issued,
            conclusion=conclusion,
            order_id=order_id,
        )
        # The order's results and its report in one pass of the gate (one patient lock, rows
        # inserted together): the hot path of a laboratory feed.
        recorded = work.call("record_observations", ("OBR", n), results=inputs, report=data)
        for result, view in zip(order.results, recorded.observations, strict=True):
            # A report's result links are written with its own link: none exists without it.
            work.set_link(
                "result",
                _result_key(key, result),
                view.id,
                reference_range=hl7v2.text(result.segment, 7)[:60] or None,
                abnormal_flags=hl7v2.text(result.segment, 8)[:20] or None,
                new=True,
            )
        work.set_link("report", key, recorded.report.id)
        return
    state = work.report_state(existing.target_id, patient_id)
    if state is None:
        raise MessageError(
            "this filler order number is another patient's report",
            code=ErrorCode.DUPLICATE_KEY,
            segment="OBR",
            sequence=n,
            field=3,
        )
    version, report_status, current = state
    added: list[str] = []
    for result in order.results:
        link = work.link("result", _result_key(key, result))
        if link is None:
            added.append(_new_result(ctx, work, key, result, patient_id, encounter_id, observed, order_id))
        else:
            _amend_result(work, link.target_id, result, correction)
            work.set_link(
                "result",
                _result_key(key, result),
                link.target_id,
                reference_range=hl7v2.text(result.segment, 7)[:60] or None,
                abnormal_flags=hl7v2.text(result.segment, 8)[:20] or None,
            )
    # Final results of a report carnet holds as preliminary make it final (and its order done).
    becomes_final = status_code == "F" and report_status in ("registered", "partial", "preliminary")
    if added or becomes_final:
        work.call(
            "amend_diagnostic_report",
            ("OBR", n),
            report_id=str(existing.target_id),
            expected_version=version,
            status="final" if becomes_final else "corrected" if correction else "amended",
            conclusion=conclusion,
            result_ids=current + added,
        )


def _result_key(order_key: str, result: Result) -> str:
    obx = result.segment
    return f"{order_key}|{hl7v2.component(obx, 3, 1)}|{hl7v2.text(obx, 4)}"


def _answered_order(work: MessageWork, order: Order, patient_id: uuid.UUID) -> str | None:
    """The carnet order these results answer: the placer order number (OBR-2, else ORC-2) is
    the ServiceRequest's. An unknown number files the results unlinked (an order placed
    outside carnet); another patient's order is refused: results never attach to it."""
    placer = hl7v2.component(order.segment, 2, 1)
    where = 2
    if not placer and order.orc is not None:
        placer = hl7v2.component(order.orc, 2, 1)
    if not placer:
        return None
    state = work.order(placer)
    if state is None:
        return None
    if state.patient_id != patient_id:
        raise MessageError(
            "this placer order number is another patient's order",
            code=ErrorCode.UNKNOWN_KEY,
            segment="OBR",
            sequence=order.number,
            field=where,
        )
    return str(state.id)


# HL7 table 0078 (abnormal flags), as FHIR's v2-0078 code system takes them.
ABNORMAL_FLAGS = frozenset(
    {"L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "S", "R", "I", "MS", "VS"}
    | {"NEG", "POS", "IND", "DET", "ND", "AC", "RR", "QCF", "TOX", "NR", "WR", "HU", "LU", "EX"}
)


def _flag(obx: Any, number: int) -> str | None:
    """OBX-8: the first abnormal flag (table 0078), refused when it is not one."""
    flag = hl7v2.component(obx, 8, 1).strip()
    if not flag:
        return None
    if flag not in ABNORMAL_FLAGS:
        raise MessageError(
            "abnormal flag must be a code of HL7 table 0078 (L, H, LL, HH, N, A, AA...)",
            code=ErrorCode.TABLE_VALUE,
            segment="OBX",
            sequence=number,
            field=8,
        )
    return flag


def _result_input(
    ctx: Context,
    result: Result,
    patient_id: uuid.UUID,
    encounter_id: str | None,
    observed: dt.datetime | None,
    order_id: str | None,
) -> ObservationInput:
    obx, n = result.segment, result.number
    status = hl7v2.text(obx, 11) or "F"
    if status not in RESULT_STATUS:
        raise MessageError(
            "result status must be F, P, R or C (table 0085)",
            code=ErrorCode.TABLE_VALUE,
            segment="OBX",
            sequence=n,
            field=11,
        )
    value = _value(obx, n)
    effective = hl7v2.date_time(hl7v2.text(obx, 14), zone=ctx.zone, where=("OBX", 14, n)) or observed
    if effective is None:
        raise MessageError(
            "the time of the observation is required (OBX-14 or OBR-7)",
            code=ErrorCode.REQUIRED_FIELD,
            segment="OBX",
            sequence=n,
            field=14,
        )
    code = hl7v2.component(obx, 3, 1)
    data: ObservationInput = _build(
        ObservationInput,
        ("OBX", n),
        _RESULT_FIELDS,
        patient_id=str(patient_id),
        category="laboratory",
        code=code,
        display=hl7v2.component(obx, 3, 2) or code,
        value_number=value.number,
        unit=value.unit,
        value_text=value.text,
        effective_at=effective,
        status=RESULT_STATUS[status],
        encounter_id=encounter_id,
        order_id=order_id,
        reference_range=hl7v2.text(obx, 7)[:60] or None,
        interpretation=_flag(obx, n),
    )
    return data


def _new_result(
    ctx: Context,
    work: MessageWork,
    order_key: str,
    result: Result,
    patient_id: uuid.UUID,
    encounter_id: str | None,
    observed: dt.datetime | None,
    order_id: str | None,
) -> str:
    """One result added to a report carnet already holds (a later message of the order)."""
    data = _result_input(ctx, result, patient_id, encounter_id, observed, order_id)
    view = work.call("record_observation", ("OBX", result.number), data=data)
    work.set_link(
        "result",
        _result_key(order_key, result),
        view.id,
        reference_range=data.reference_range,
        abnormal_flags=hl7v2.text(result.segment, 8)[:20] or None,
    )
    return str(view.id)


def _amend_result(work: MessageWork, observation_id: uuid.UUID, result: Result, correction: bool) -> None:
    obx, n = result.segment, result.number
    state = work.result(observation_id)
    if state is None:
        raise MessageError(
            "this result is gone", code=ErrorCode.UNKNOWN_KEY, segment="OBX", sequence=n, field=3
        )
    status = hl7v2.text(obx, 11)
    if status == "D":
        if state.status != "entered-in-error":
            work.call(
                "amend_observation",
                ("OBX", n),
                observation_id=str(observation_id),
                expected_version=state.version_id,
                status="entered-in-error",
            )
        return
    value = _value(obx, n)
    if (value.number, value.unit if value.number is not None else None, value.text) == (
        state.value_number,
        state.unit,
        state.value_text,
    ):
        return  # the same value sent again (a final after its preliminary): nothing to amend
    work.call(
        "amend_observation",
        ("OBX", n),
        observation_id=str(observation_id),
        expected_version=state.version_id,
        status="corrected" if correction or status == "C" else "amended",
        value_number=value.number,
        unit=value.unit,
        value_text=value.text,
        reference_range=hl7v2.text(obx, 7)[:60] or None,
        interpretation=_flag(obx, n),
    )


HANDLERS: dict[str, Callable[[Context, MessageWork], None]] = {
    "ADT^A01": admit,
    "ADT^A04": admit,
    "ADT^A08": update_patient,
    "ADT^A02": transfer,
    "ADT^A12": transfer,
    "ADT^A03": discharge,
    "ADT^A11": cancel_admit,
    "ADT^A13": cancel_discharge,
    "ADT^A40": merge,
    "ORU^R01": results,
}
