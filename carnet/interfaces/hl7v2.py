"""HL7 v2.5 messages: parsed by python-hl7, their segment order checked against the v2.5
abstract message structures, fields read with a location for every error, ACKs built.

An error names where (segment, sequence, field) and what (an HL7 table 0357 code and carnet's
words), never the value: the value may be patient data, and errors are logged and sent back.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import hl7
import hl7.parser

SUPPORTED_VERSIONS = frozenset({"2.5", "2.5.1"})


class AckCode(StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"  # the message was understood and refused (content, state): fix and resend
    REJECT = "AR"  # not processed at all (sender, type, volume): do not resend as is


class ErrorCode(StrEnum):
    """HL7 table 0357, message error condition codes."""

    SEGMENT_SEQUENCE = "100"
    REQUIRED_FIELD = "101"
    DATA_TYPE = "102"
    TABLE_VALUE = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT = "201"
    UNSUPPORTED_VERSION = "203"
    UNKNOWN_KEY = "204"
    DUPLICATE_KEY = "205"
    RECORD_LOCKED = "206"
    INTERNAL = "207"


_ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.TABLE_VALUE: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT: "Unsupported event code",
    ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY: "Duplicate key identifier",
    ErrorCode.RECORD_LOCKED: "Application record locked",
    ErrorCode.INTERNAL: "Application internal error",
}


class MessageError(Exception):
    """A message carnet refuses: the ACK code, the table 0357 code, where, and why."""

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.DATA_TYPE,
        ack: AckCode = AckCode.ERROR,
        segment: str | None = None,
        sequence: int = 1,
        field: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.ack = ack
        self.segment = segment
        self.sequence = sequence
        self.field = field

    @property
    def location(self) -> str:
        if self.segment is None:
            return ""
        where = f"{self.segment}-{self.field}" if self.field is not None else self.segment
        return where if self.sequence == 1 else f"{where} (segment {self.sequence})"

    def text(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason


# -- v2.5 abstract message structures (HL7 v2.5 chapters 3 and 7), as segment-order grammars --
# Z segments (site-defined, e.g. IHE PAM France's ZBE) may appear anywhere and are skipped.
_INSURANCE = r"(IN1,(IN2,)?(IN3,)*(ROL,)*)*"
_STRUCTURES = {
    "ADT_A01": r"MSH,(SFT,)*EVN,PID,(PD1,)?(ROL,)*(NK1,)*PV1,(PV2,)?(ROL,)*(DB1,)*(OBX,)*(AL1,)*"
    r"(DG1,)*(DRG,)?(PR1,(ROL,)*)*(GT1,)*" + _INSURANCE + r"(ACC,)?(UB1,)?(UB2,)?(PDA,)?",
    "ADT_A02": r"MSH,(SFT,)*EVN,PID,(PD1,)?(ROL,)*PV1,(PV2,)?(ROL,)*(DB1,)*(OBX,)*(PDA,)?",
    "ADT_A03": r"MSH,(SFT,)*EVN,PID,(PD1,)?(ROL,)*(NK1,)*PV1,(PV2,)?(ROL,)*(DB1,)*(AL1,)*(DG1,)*"
    r"(DRG,)?(PR1,(ROL,)*)*(OBX,)*(GT1,)*" + _INSURANCE + r"(ACC,)?(PDA,)?",
    "ADT_A09": r"MSH,(SFT,)*EVN,PID,(PD1,)?PV1,(PV2,)?(DB1,)*(OBX,)*(DG1,)*",
    "ADT_A12": r"MSH,(SFT,)*EVN,PID,(PD1,)?PV1,(PV2,)?(DB1,)*(OBX,)*(DG1,)?",
    "ADT_A39": r"MSH,(SFT,)*EVN,(PID,(PD1,)?MRG,(PV1,)?)+",
    "ORU_R01": r"MSH,(SFT,)*((PID,(PD1,)?(NTE,)*(NK1,)*(PV1,(PV2,)?)?)?"
    r"((ORC,)?OBR,(NTE,)*(TQ1,(TQ2,)*)*(CTD,)?(OBX,(NTE,)*)*(FT1,)*(CTI,)*(SPM,(OBX,)*)*)+)+(DSC,)?",
}
_GRAMMARS = {name: re.compile(pattern) for name, pattern in _STRUCTURES.items()}
# HL7 v2.5 table 0354: the structure of each supported trigger event.
STRUCTURE_OF = {
    "ADT^A01": "ADT_A01",
    "ADT^A04": "ADT_A01",
    "ADT^A08": "ADT_A01",
    "ADT^A13": "ADT_A01",
    "ADT^A02": "ADT_A02",
    "ADT^A03": "ADT_A03",
    "ADT^A11": "ADT_A09",
    "ADT^A12": "ADT_A12",
    "ADT^A40": "ADT_A39",
    "ORU^R01": "ORU_R01",
}
SUPPORTED_TYPES = frozenset(STRUCTURE_OF)


@dataclass(frozen=True)
class Header:
    """What carnet needs of MSH, readable even from a message it then refuses."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    message_type: str  # e.g. ADT^A01
    processing_id: str
    version: str


# -- parsing: python-hl7's own parser, built with cheaper containers and a plan made once ---------
# `hl7.parse` is `_split(text, create_parse_plan(text, factory))`: it splits the message by each
# separator in turn, making a container of the factory's for every segment, field, repetition
# and component. Two of its costs are not the parsing itself, and go here, the parser unchanged:
# - each container's constructor runs the library's chain of two `__init__` with an assert
#   each; the factory below makes the same classes (subclasses of hl7.Segment, Field...:
#   same data, same `str()`, same accessors) through one `__init__` (the library documents a
#   custom Factory for this);
# - `_split` asks its plan for the next level's plan once per element (a new `_ParsePlan`
#   each time, about 150 for an ORU^R01 with 5 OBX); the plan below makes each level once, and
#   the separators its `applies` looks for once.
# Together about 0.48x of `hl7.parse`'s time (tests/interfaces/test_messages.py checks the
# result is hl7.parse's, class for class, on every sample, and reads every field alike).


def _lean(base: type, level: int) -> type:
    def __init__(
        self: Any,
        separator: str | None = None,
        sequence: Any = (),
        esc: str = "\\",
        separators: str = "\r|~^&",
        factory: Any = None,
    ) -> None:
        list.__init__(self, sequence)
        self.separator = separators[level]
        self.esc = esc
        self.separators = separators
        self.factory = factory

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


class _Factory(hl7.Factory):  # type: ignore[misc]
    create_segment = _lean(hl7.Segment, 1)
    create_field = _lean(hl7.Field, 2)
    create_repetition = _lean(hl7.Repetition, 3)
    create_component = _lean(hl7.Component, 4)


class _Plan(hl7.parser._ParsePlan):  # type: ignore[misc]
    """python-hl7's parse plan, each next level made once (`next` is a function of the plan),
    and the separators `applies` looks for computed once (the same ones as the library's)."""

    _following: Any = None

    def __init__(self, separator: str, separators: str, containers: Any, esc: str, factory: Any) -> None:
        super().__init__(separator, separators, containers, esc, factory)
        self._below = tuple(separators[separators.find(separator) :])

    def applies(self, text: str) -> bool:
        for separator in self._below:  # noqa: SIM110  # a loop: any() of a generator costs more
            if separator in text:
                return True
        return False

    def next(self) -> Any:
        following = self._following
        if following is None:
            following = self._following = super().next() or False
        return following or None


def _parse(text: str) -> hl7.Message:
    strmsg = text.strip()
    base = hl7.parser.create_parse_plan(strmsg, _Factory)
    plan = _Plan(base.separator, base.separators, base.containers, base.esc, base.factory)
    return hl7.parser._split(strmsg, plan)


def parse(raw: str) -> hl7.Message:
    """The message, or a MessageError (AR) when it is not an HL7 v2 message at all."""
    text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH"):
        raise MessageError(
            "the message does not start with MSH",
            code=ErrorCode.SEGMENT_SEQUENCE,
            ack=AckCode.REJECT,
            segment="MSH",
        )
    try:
        return _parse(text)
    except Exception:  # the library's error may quote the message
        raise MessageError(
            "the message cannot be parsed as HL7 v2",
            code=ErrorCode.DATA_TYPE,
            ack=AckCode.REJECT,
            segment="MSH",
        ) from None


def header(message: hl7.Message) -> Header:
    msh = message[0]  # `parse` refuses a message that does not start with MSH
    # python-hl7 counts MSH-1 (the field separator) as field 1: MSH-n is msh[n].
    kind = _component(msh, 9, 1)
    event = _component(msh, 9, 2)
    control = _text(msh, 10)
    if not control:
        raise MessageError(
            "the message control id is missing",
            code=ErrorCode.REQUIRED_FIELD,
            ack=AckCode.REJECT,
            segment="MSH",
            field=10,
        )
    if len(control) > 40:
        raise MessageError(
            "the message control id is longer than 40 characters",
            code=ErrorCode.DATA_TYPE,
            ack=AckCode.REJECT,
            segment="MSH",
            field=10,
        )
    return Header(
        sending_application=_component(msh, 3, 1),
        sending_facility=_component(msh, 4, 1),
        receiving_application=_component(msh, 5, 1),
        receiving_facility=_component(msh, 6, 1),
        control_id=control,
        message_type=f"{kind}^{event}" if event else kind,
        processing_id=_component(msh, 11, 1),
        version=_component(msh, 12, 1),
    )


def check_structure(message: hl7.Message, head: Header) -> None:
    """Supported type and version, segments in the order of the v2.5 structure."""
    if head.version not in SUPPORTED_VERSIONS:
        raise MessageError(
            "carnet accepts HL7 version 2.5",
            code=ErrorCode.UNSUPPORTED_VERSION,
            ack=AckCode.REJECT,
            segment="MSH",
            field=12,
        )
    structure = STRUCTURE_OF.get(head.message_type)
    if structure is None:
        code = (
            ErrorCode.UNSUPPORTED_EVENT
            if head.message_type.startswith("ADT^")
            else (ErrorCode.UNSUPPORTED_MESSAGE_TYPE)
        )
        raise MessageError(
            f"message type {head.message_type[:20]} is not supported",
            code=code,
            ack=AckCode.REJECT,
            segment="MSH",
            field=9,
        )
    names = [str(segment[0]) for segment in message]
    sequence = "".join(f"{n}," for n in names if not n.startswith("Z"))
    if not _GRAMMARS[structure].fullmatch(sequence):
        received = " ".join(n for n in names if not n.startswith("Z"))[:120]
        raise MessageError(
            f"segments are not in the order of the HL7 v2.5 {structure} structure (received {received})",
            code=ErrorCode.SEGMENT_SEQUENCE,
        )


# -- reading fields --------------------------------------------------------------------------------
# python-hl7's containers are lists: an element is read with list's own indexing (its
# Container.__getitem__ adds a Python call to every read, for slices), and a field of one plain
# value is its text without the library's join.
_item = list.__getitem__


def _field(segment: Any, index: int) -> Any:
    if isinstance(segment, list):
        return _item(segment, index) if 0 <= index < len(segment) else None
    try:
        return segment[index]
    except (IndexError, KeyError):
        return None


def _text(segment: Any, index: int) -> str:
    value = _field(segment, index)
    if value is None:
        return ""
    if isinstance(value, list) and len(value) == 1:
        only = _item(value, 0)
        if type(only) is str:
            return only.strip()  # str(value) is this one value
    return str(value).strip()


def _component(segment: Any, index: int, component: int, repetition: int = 0) -> str:
    """Component `component` (1-based) of repetition `repetition` of field `index`."""
    value = _field(segment, index)
    if value is None:
        return ""
    # No str() of the whole field first (python-hl7 joins it again at every call): an empty
    # field reads as "" through the same steps.
    if isinstance(value, hl7.Field):
        if repetition >= len(value):
            return ""
        value = _item(value, repetition)
    if isinstance(value, hl7.Repetition):
        if 0 <= component - 1 < len(value):
            part = _item(value, component - 1)
            return (part if type(part) is str else str(part)).strip()
        return ""
    return str(value).strip() if component == 1 else ""


def repetitions(segment: Any, index: int) -> list[list[str]]:
    """Each repetition of a field as its list of components (subcomponents joined by '&')."""
    value = _field(segment, index)
    if value is None or str(value) == "":
        return []
    out: list[list[str]] = []
    reps = list(value) if isinstance(value, hl7.Field) else [value]
    for rep in reps:
        if isinstance(rep, hl7.Repetition):
            out.append([str(c).strip() for c in rep])
        else:
            out.append([str(rep).strip()])
    return out


def component(segment: Any, index: int, component_: int = 1, repetition: int = 0) -> str:
    return _component(segment, index, component_, repetition)


def text(segment: Any, index: int) -> str:
    return _text(segment, index)


_DTM = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$"
)


def date_time(value: str, *, zone: str, where: tuple[str, int, int]) -> dt.datetime | None:
    """An HL7 DTM as an aware datetime (the interface's time zone when it has no offset), or
    None when empty; MessageError naming `where` (segment, field, segment number) when invalid."""
    if not value:
        return None
    segment, field, sequence = where
    match = _DTM.match(value)
    try:
        if match is None or match["h"] is None:
            raise ValueError
        offset = match["tz"]
        tzinfo: dt.tzinfo
        if offset:
            sign = 1 if offset[0] == "+" else -1
            tzinfo = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        else:
            tzinfo = zoneinfo.ZoneInfo(zone)
        micro = int((match["f"] or "0").ljust(6, "0")[:6])
        return dt.datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            int(match["h"]),
            int(match["mi"] or 0),
            int(match["s"] or 0),
            micro,
            tzinfo=tzinfo,
        )
    except (ValueError, TypeError):
        raise MessageError(
            "invalid date and time (YYYYMMDDHHMM[SS][+ZZZZ])",
            code=ErrorCode.DATA_TYPE,
            segment=segment,
            field=field,
            sequence=sequence,
        ) from None


def date(value: str, *, where: tuple[str, int, int]) -> dt.date | None:
    """An HL7 date (YYYYMMDD, a longer DTM is cut to its date), None when empty."""
    if not value:
        return None
    segment, field, sequence = where
    match = _DTM.match(value)
    try:
        if match is None or match["d"] is None:
            raise ValueError
        return dt.date(int(match["y"]), int(match["mo"]), int(match["d"]))
    except (ValueError, TypeError):
        raise MessageError(
            "invalid date (YYYYMMDD)",
            code=ErrorCode.DATA_TYPE,
            segment=segment,
            field=field,
            sequence=sequence,
        ) from None


# -- acknowledgements ------------------------------------------------------------------------------
def _escape(value: str) -> str:
    """HL7 escape sequences for the delimiters (v2.5 2.7.4), so a reason cannot break the ACK."""
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return " ".join(out.split())


def ack(
    head: Header | None,
    code: AckCode,
    *,
    error: MessageError | None = None,
    control_id: str,
    now: dt.datetime,
) -> str:
    """The ACK (original mode) to a message: MSH, MSA, and ERR when refused (v2.5 2.15.5)."""
    sending_app = _escape(head.receiving_application) if head else "CARNET"
    sending_fac = _escape(head.receiving_facility) if head else ""
    receiving_app = _escape(head.sending_application) if head else ""
    receiving_fac = _escape(head.sending_facility) if head else ""
    event = head.message_type.split("^")[1] if head and "^" in head.message_type else ""
    processing = _escape(head.processing_id) if head and head.processing_id else "P"
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    segments = [
        f"MSH|^~\\&|{sending_app or 'CARNET'}|{sending_fac}|{receiving_app}|{receiving_fac}|{stamp}||"
        f"ACK^{_escape(event)}^ACK|{_escape(control_id)}|{processing}|2.5",
    ]
    original = _escape(head.control_id) if head else ""
    if error is None:
        segments.append(f"MSA|{code.value}|{original}")
    else:
        reason = _escape(error.text())[:400]
        segments.append(f"MSA|{code.value}|{original}|{reason}")
        location = ""
        if error.segment:
            location = f"{error.segment}^{error.sequence}" + (f"^{error.field}" if error.field else "")
        text_ = _ERROR_TEXT[error.code]
        # ERR-2 location, ERR-3 HL7 error code (table 0357), ERR-4 severity, ERR-8 user message.
        segments.append(f"ERR||{location}|{error.code.value}^{text_}^HL70357|E||||{reason}")
    return "\r".join(segments) + "\r"
