"""HL7 v2.5 messages for the interface tests, built with hl7apy (a second, independent HL7
library: the listener parses with python-hl7), and a plain-socket MLLP sender."""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

STRUCTURES = {
    "A01": "ADT_A01",
    "A04": "ADT_A01",
    "A08": "ADT_A01",
    "A13": "ADT_A01",
    "A02": "ADT_A02",
    "A03": "ADT_A03",
    "A11": "ADT_A09",
    "A12": "ADT_A12",
}
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def stamp(moment: dt.datetime | None = None) -> str:
    moment = moment or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _msh(message: Message, *, sending: str, facility: str, kind: str, control: str) -> None:
    message.msh.msh_3 = sending
    message.msh.msh_4 = facility
    message.msh.msh_5 = "CARNET"
    message.msh.msh_6 = "CARNET"
    message.msh.msh_7 = stamp()
    message.msh.msh_9 = kind
    message.msh.msh_10 = control
    message.msh.msh_11 = "P"
    message.msh.msh_12 = "2.5"


@dataclass
class Person:
    ipp: str  # the sender's local patient number (PI)
    ins: str | None = None
    family: str = "MARTIN"
    given: str = "JEANNE"
    birth: str = "19700517"
    sex: str = "F"

    def ids(self) -> list[str]:
        """PID-3's repetitions (CX): the local number (PI), then the INS when known."""
        ids = [f"{self.ipp}^^^HOSP&1.2.250.1.999.1&ISO^PI"]
        if self.ins:
            ids.append(f"{self.ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS")
        return ids


def _repeat(segment: Any, name: str, values: list[str]) -> None:
    for value in values:
        segment.add_field(name).value = value


def adt(
    event: str,
    control: str,
    person: Person,
    *,
    visit: str | None = "VN1",
    location: str | None = "CARDIO",
    attending: str | None = None,
    klass: str = "I",
    sending: str = "ADT",
    when: str | None = None,
    room_bed: str = "101^1",
) -> str:
    """An ADT^<event> in its v2.5 structure (A01, A02, A03, A04, A08, A11, A12, A13); PV1-3 is
    the point of care (`location`), then `room_bed` (room^bed)."""
    structure = STRUCTURES[event]
    message = Message(structure, version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message, sending=sending, facility="HOSP", kind=f"ADT^{event}^{structure}", control=control)
    message.evn.evn_2 = stamp()
    pid = message.pid
    pid.pid_1 = "1"
    _repeat(pid, "PID_3", person.ids())
    pid.pid_5 = f"{person.family}^{person.given}^^^^^L"
    pid.pid_7 = person.birth
    pid.pid_8 = person.sex
    pv1 = message.pv1
    pv1.pv1_1 = "1"
    pv1.pv1_2 = klass
    if location:
        pv1.pv1_3 = f"{location}^{room_bed}"
    if attending:
        pv1.pv1_7 = f"{attending}^DUPONT^JEAN"
    if visit:
        pv1.pv1_19 = f"{visit}^^^HOSP^VN"
    if when:
        pv1.pv1_44 = when
    return str(message.to_er7())


def merge(control: str, kept: Person, duplicate: Person) -> str:
    """ADT^A40 (ADT_A39): the duplicate's identifiers in MRG-1, merged into the kept record."""
    message = Message("ADT_A39", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message, sending="ADT", facility="HOSP", kind="ADT^A40^ADT_A39", control=control)
    message.evn.evn_2 = stamp()
    group = message.add_group("ADT_A39_PATIENT")
    pid = group.add_segment("PID")
    _repeat(pid, "PID_3", kept.ids())
    pid.pid_5 = f"{kept.family}^{kept.given}"
    mrg = group.add_segment("MRG")
    _repeat(mrg, "MRG_1", duplicate.ids())
    return str(message.to_er7())


@dataclass
class Obx:
    code: str
    value: str
    unit: str = "g/dL"
    kind: str = "NM"
    reference: str = "12-16"
    flags: str = "N"
    status: str = "F"
    display: str = "Hemoglobin"


def oru(
    control: str,
    person: Person,
    results: list[Obx],
    *,
    filler: str = "F1",
    status: str = "F",
    observed: str | None = None,
    sending: str = "LAB",
    placer: str | None = None,
    placer_in: str = "OBR",
) -> str:
    """ORU^R01 (v2.5): one patient, one order (OBR) and its results (OBX). `placer`: carnet's
    order number, in OBR-2, or in an ORC-2 before the OBR (`placer_in="ORC"`)."""
    message = Message("ORU_R01", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message, sending=sending, facility="LABO", kind="ORU^R01^ORU_R01", control=control)
    group = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = group.add_group("ORU_R01_PATIENT")
    _repeat(patient.pid, "PID_3", person.ids())
    patient.pid.pid_5 = f"{person.family}^{person.given}"
    order = group.add_group("ORU_R01_ORDER_OBSERVATION")
    if placer and placer_in == "ORC":
        order.orc.orc_1 = "RE"
        order.orc.orc_2 = f"{placer}^CARNET"
    elif placer:
        order.obr.obr_2 = f"{placer}^CARNET"
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{filler}^LABO"
    order.obr.obr_4 = "58410-2^CBC panel^LN"
    order.obr.obr_7 = observed or stamp()
    order.obr.obr_25 = status
    for number, result in enumerate(results, start=1):
        obs = order.add_group("ORU_R01_OBSERVATION")
        obx = obs.obx
        obx.obx_1 = str(number)
        obx.obx_2 = result.kind
        obx.obx_3 = f"{result.code}^{result.display}^LN"
        obx.obx_5 = result.value
        if result.unit:
            obx.obx_6 = result.unit
        if result.reference:
            obx.obx_7 = result.reference
        if result.flags:
            obx.obx_8 = result.flags
        obx.obx_11 = result.status
    return str(message.to_er7())


def valid_v25(text: str) -> bool:
    """hl7apy's strict v2.5 validation of a message (structure, segment order, data types)."""
    try:
        return bool(
            parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
        )
    except Exception:
        return False


def send(port: int, *messages: str) -> list[str]:
    """Send over one real TCP connection with MLLP framing, each after the ACK before it."""
    answers: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for message in messages:
            sock.sendall(VT + message.encode("utf-8") + FS + CR)
            data = b""
            while not data.endswith(FS + CR):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the listener closed the connection")
                data += chunk
            answers.append(data[1:-2].decode("utf-8"))
    return answers


def msa(ack: str) -> list[str]:
    for segment in ack.split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")
    raise AssertionError("no MSA segment in the answer")


def err(ack: str) -> list[str]:
    for segment in ack.split("\r"):
        if segment.startswith("ERR|"):
            return segment.split("|")
    raise AssertionError("no ERR segment in the answer")
