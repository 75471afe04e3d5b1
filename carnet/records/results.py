"""Results as a clinician reads them: each value against its reference range (low, high or
normal), the values of one test over time, and the trend drawn as an SVG the server renders
(no script, so the strict CSP holds). Pure functions over the gate's redacted views.

The ranges are adult reference intervals as French laboratories commonly print them; a value
whose unit is not the range's is not flagged (a wrong flag is worse than none)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Literal

from carnet.phi.schemas import DiagnosticReportView, ObservationView

Flag = Literal["low", "high", "normal"]


@dataclasses.dataclass(frozen=True)
class ReferenceRange:
    low: float | None
    high: float | None
    unit: str

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{_number(self.low)}–{_number(self.high)}"
        if self.high is not None:
            return f"< {_number(self.high)}"
        return f"≥ {_number(self.low or 0)}"


# LOINC code -> adult reference interval, in the unit the value must carry to be flagged.
REFERENCE_RANGES: dict[str, ReferenceRange] = {
    "8480-6": ReferenceRange(90, 140, "mm[Hg]"),  # systolic blood pressure
    "8462-4": ReferenceRange(60, 90, "mm[Hg]"),  # diastolic blood pressure
    "8867-4": ReferenceRange(60, 100, "/min"),  # heart rate
    "8310-5": ReferenceRange(36.1, 37.8, "Cel"),  # body temperature
    "59408-5": ReferenceRange(95, 100, "%"),  # oxygen saturation
    "718-7": ReferenceRange(12.0, 17.5, "g/dL"),  # haemoglobin
    "6690-2": ReferenceRange(4.0, 10.0, "10*9/L"),  # leucocytes
    "777-3": ReferenceRange(150, 400, "10*9/L"),  # platelets
    "2951-2": ReferenceRange(135, 145, "mmol/L"),  # sodium
    "2823-3": ReferenceRange(3.5, 5.0, "mmol/L"),  # potassium
    "2160-0": ReferenceRange(45, 110, "µmol/L"),  # creatinine
    "2345-7": ReferenceRange(3.9, 6.1, "mmol/L"),  # fasting glucose
    "2093-3": ReferenceRange(None, 2.0, "g/L"),  # total cholesterol
    "2085-9": ReferenceRange(0.4, None, "g/L"),  # HDL cholesterol
    "2571-8": ReferenceRange(None, 1.5, "g/L"),  # triglycerides
    "4548-4": ReferenceRange(4.0, 6.0, "%"),  # HbA1c
}

# Spellings of one unit (UCUM writes "u" for micro where a keyboard has no "µ").
_UNIT_ALIASES = {"umol/L": "µmol/L", "mmHg": "mm[Hg]", "°C": "Cel", "bpm": "/min"}


def _number(value: float) -> str:
    return f"{value:g}"


def same_unit(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return _UNIT_ALIASES.get(a, a) == _UNIT_ALIASES.get(b, b)


def reference_range(code: str | None, unit: str | None) -> ReferenceRange | None:
    """The range a value of this test in this unit is read against, or None."""
    found = REFERENCE_RANGES.get(code or "")
    return found if found is not None and same_unit(found.unit, unit) else None


def flag(code: str | None, value: float | None, unit: str | None) -> Flag | None:
    """Low, high or normal against the reference range; None when there is nothing to compare."""
    found = reference_range(code, unit)
    if found is None or value is None:
        return None
    if found.low is not None and value < found.low:
        return "low"
    if found.high is not None and value > found.high:
        return "high"
    return "normal"


@dataclasses.dataclass(frozen=True)
class ResultRow:
    id: str
    code: str
    display: str
    value: str
    unit: str
    when: dt.datetime | None
    flag: Flag | None
    range_text: str


# The laboratory's own abnormal flags (HL7 table 0078) as the chart words them.
_LAB_FLAGS: dict[str, Flag] = {"L": "low", "LL": "low", "<": "low", "H": "high", "HH": "high", ">": "high"}
_LAB_FLAGS["N"] = "normal"


def result_row(o: ObservationView) -> ResultRow:
    """A result as the chart shows it: the laboratory's range and flag when it sent them
    (HL7 OBX-7, OBX-8), else carnet's adult reference interval for the test."""
    value = _number(o.value_number) if o.value_number is not None else (o.value_text or "")
    found = reference_range(o.code, o.unit)
    lab_flag = _LAB_FLAGS.get(o.interpretation or "")
    return ResultRow(
        id=o.id or "",
        code=o.code or "",
        display=o.display or o.code or "",
        value=value,
        unit=o.unit or "",
        when=o.effective_at,
        flag=lab_flag or flag(o.code, o.value_number, o.unit),
        range_text=o.reference_range or (found.text() if found is not None else ""),
    )


# -- the trend ------------------------------------------------------------------------------
WIDTH, HEIGHT, PAD = 320, 120, 8


@dataclasses.dataclass(frozen=True)
class Dot:
    x: float
    y: float
    flag: Flag | None
    label: str  # what a screen reader and the tooltip say: value and time
    value: float = 0.0  # the same two, for a page that writes them in its reader's locale
    at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Trend:
    """Coordinates of a small line chart (viewBox 0 0 WIDTH HEIGHT); the template draws it."""

    points: str  # the polyline's "x,y x,y ..."
    dots: tuple[Dot, ...]
    band: tuple[float, float] | None  # y of the range's top and bottom, when there is one
    top: str  # the value at the top of the chart
    bottom: str
    first: dt.datetime
    last: dt.datetime
    width: int = WIDTH
    height: int = HEIGHT


def trend(
    values: Sequence[tuple[dt.datetime, float]], found: ReferenceRange | None, code: str = ""
) -> Trend | None:
    """The values of one test in time order as a chart, scaled to hold the values and the
    range; None under two values (a line needs two points)."""
    ordered = sorted(values, key=lambda pair: pair[0])
    if len(ordered) < 2:
        return None
    numbers = [v for _, v in ordered]
    bounds = [*numbers]
    if found is not None:
        bounds += [b for b in (found.low, found.high) if b is not None]
    lo, hi = min(bounds), max(bounds)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    start, end = ordered[0][0], ordered[-1][0]
    span = (end - start).total_seconds() or 1.0

    def x(at: dt.datetime) -> float:
        return round(PAD + (WIDTH - 2 * PAD) * (at - start).total_seconds() / span, 1)

    def y(value: float) -> float:
        return round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - lo) / (hi - lo), 1)

    dots = tuple(
        Dot(
            x(at),
            y(v),
            flag(code, v, found.unit) if found is not None else None,
            f"{_number(v)} ({at:%Y-%m-%d %H:%M})",
            v,
            at,
        )
        for at, v in ordered
    )
    band = None
    if found is not None:
        band = (
            y(found.high if found.high is not None else hi),
            y(found.low if found.low is not None else lo),
        )
    return Trend(
        points=" ".join(f"{d.x},{d.y}" for d in dots),
        dots=dots,
        band=band,
        top=_number(hi),
        bottom=_number(lo),
        first=start,
        last=end,
    )


# -- the results of one patient -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Series:
    """One test's values over time, newest first, with its trend."""

    code: str
    display: str
    unit: str
    range_text: str
    rows: tuple[ResultRow, ...]
    trend: Trend | None

    @property
    def latest(self) -> ResultRow:
        return self.rows[0]


@dataclasses.dataclass(frozen=True)
class ReportBlock:
    display: str
    status: str
    issued_at: dt.datetime | None
    conclusion: str
    rows: tuple[ResultRow, ...]


@dataclasses.dataclass(frozen=True)
class Results:
    vitals: tuple[Series, ...]
    labs: tuple[Series, ...]
    reports: tuple[ReportBlock, ...]

    @property
    def abnormal(self) -> int:
        """How many tests' latest value is out of range (the section's heading says so)."""
        return sum(1 for s in (*self.vitals, *self.labs) if s.latest.flag in ("low", "high"))


def _series(observations: Iterable[ObservationView]) -> tuple[Series, ...]:
    by_code: dict[tuple[str, str], list[ObservationView]] = {}
    for o in observations:
        if o.status == "entered-in-error" or o.code is None:
            continue
        by_code.setdefault((o.code, o.unit or ""), []).append(o)
    series = []
    for (code, unit), found in by_code.items():
        newest_first = sorted(found, key=lambda o: o.effective_at or dt.datetime.min.replace(tzinfo=dt.UTC))
        newest_first.reverse()
        rows = tuple(result_row(o) for o in newest_first)
        rng = reference_range(code, unit)
        numeric = [(o.effective_at, o.value_number) for o in newest_first]
        points = [(at, v) for at, v in numeric if at is not None and v is not None]
        series.append(
            Series(
                code=code,
                display=rows[0].display,
                unit=unit,
                range_text=rng.text() if rng is not None else "",
                rows=rows,
                trend=trend(points, rng, code),
            )
        )
    return tuple(sorted(series, key=lambda s: s.display))


def results(observations: Sequence[ObservationView], reports: Sequence[DiagnosticReportView]) -> Results:
    """The chart's results: vital signs and lab tests as series, and the lab reports with their
    results (newest first)."""
    by_id = {o.id: o for o in observations if o.id}
    blocks = []
    for report in sorted(
        reports, key=lambda r: r.issued_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True
    ):
        rows = tuple(result_row(by_id[i]) for i in report.result_ids or () if i in by_id)
        blocks.append(
            ReportBlock(
                display=report.display or report.code or "",
                status=report.status or "",
                issued_at=report.issued_at,
                conclusion=report.conclusion or "",
                rows=rows,
            )
        )
    return Results(
        vitals=_series(o for o in observations if o.category == "vital-signs"),
        labs=_series(o for o in observations if o.category == "laboratory"),
        reports=tuple(blocks),
    )
