"""Results read against reference ranges (a table of cases), a test's values over time, and the
trend's geometry (values inside the chart, the range as a band, out-of-range dots marked)."""

from __future__ import annotations

import datetime as dt

import pytest

from carnet.phi.schemas import DiagnosticReportView, ObservationView
from carnet.records import results

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("2823-3", 3.4, "mmol/L", "low"),  # potassium below 3.5
        ("2823-3", 3.5, "mmol/L", "normal"),  # the bounds are inside the range
        ("2823-3", 5.0, "mmol/L", "normal"),
        ("2823-3", 5.1, "mmol/L", "high"),
        ("2160-0", 180.0, "µmol/L", "high"),  # creatinine
        ("2160-0", 80.0, "umol/L", "normal"),  # UCUM's "u" for micro is the same unit
        ("2160-0", 2.0, "mg/dL", None),  # another unit: not flagged rather than wrongly
        ("2093-3", 2.4, "g/L", "high"),  # total cholesterol: an upper limit only
        ("2093-3", 0.1, "g/L", "normal"),
        ("2085-9", 0.3, "g/L", "low"),  # HDL: a lower limit only
        ("8480-6", 165.0, "mm[Hg]", "high"),  # systolic pressure
        ("59408-5", 91.0, "%", "low"),  # oxygen saturation
        ("29463-7", 80.0, "kg", None),  # weight has no reference range
        ("2823-3", None, "mmol/L", None),  # a text result
        (None, 1.0, "mmol/L", None),
    ],
)
def test_flag(code: str | None, value: float | None, unit: str, expected: str | None) -> None:
    assert results.flag(code, value, unit) == expected


def test_range_text() -> None:
    assert results.reference_range("2823-3", "mmol/L") is not None
    assert results.REFERENCE_RANGES["2823-3"].text() == "3.5–5"
    assert results.REFERENCE_RANGES["2093-3"].text() == "< 2"
    assert results.REFERENCE_RANGES["2085-9"].text() == "≥ 0.4"


def test_trend_needs_two_values() -> None:
    rng = results.REFERENCE_RANGES["2823-3"]
    assert results.trend([], rng) is None
    assert results.trend([(T0, 4.0)], rng) is None


def test_trend_geometry() -> None:
    rng = results.REFERENCE_RANGES["2823-3"]
    values = [(T0 + dt.timedelta(days=2), 6.0), (T0, 3.0), (T0 + dt.timedelta(days=1), 4.0)]
    chart = results.trend(values, rng, "2823-3")
    assert chart is not None
    xs = [d.x for d in chart.dots]
    ys = [d.y for d in chart.dots]
    # Time order, left to right, within the padding.
    assert xs == sorted(xs) and xs[0] == results.PAD and xs[-1] == results.WIDTH - results.PAD
    assert all(results.PAD <= y <= results.HEIGHT - results.PAD for y in ys)
    # The highest value is highest on the chart (SVG's y grows downwards).
    assert ys[2] == min(ys) and ys[0] == max(ys)
    assert [d.flag for d in chart.dots] == ["low", "normal", "high"]
    assert chart.band is not None and ys[2] < chart.band[0] < chart.band[1] < ys[0]
    assert chart.top == "6" and chart.bottom == "3"
    assert chart.points.count(",") == 3 and chart.first == T0
    assert chart.dots[0].label == "3 (2026-11-01 08:00)"


def test_trend_of_equal_values_is_drawn() -> None:
    chart = results.trend([(T0, 80.0), (T0 + dt.timedelta(hours=1), 80.0)], None)
    assert chart is not None and chart.band is None
    assert chart.dots[0].y == chart.dots[1].y == results.HEIGHT / 2


def _obs(
    i: int, code: str, value: float, unit: str, at: dt.datetime, category: str = "laboratory"
) -> ObservationView:
    return ObservationView(
        id=f"o{i}",
        category=category,
        code=code,
        display={"2823-3": "Potassium", "8867-4": "Fréquence cardiaque"}.get(code, code),
        value_number=value,
        unit=unit,
        effective_at=at,
        status="final",
    )


def test_results_of_a_patient() -> None:
    observations = [
        _obs(1, "2823-3", 4.0, "mmol/L", T0),
        _obs(2, "2823-3", 5.9, "mmol/L", T0 + dt.timedelta(days=3)),
        _obs(3, "8867-4", 72.0, "/min", T0, "vital-signs"),
        _obs(4, "2160-0", 80.0, "µmol/L", T0),
    ]
    reports = [
        DiagnosticReportView(
            id="r1", display="Ionogramme", status="final", issued_at=T0, result_ids=["o1", "o4"]
        ),
        DiagnosticReportView(
            id="r2",
            display="Ionogramme",
            status="final",
            issued_at=T0 + dt.timedelta(days=3),
            result_ids=["o2", "gone"],
        ),
    ]
    found = results.results(observations, reports)
    assert [s.code for s in found.vitals] == ["8867-4"]
    assert found.vitals[0].trend is None  # one value
    potassium = next(s for s in found.labs if s.code == "2823-3")
    assert potassium.latest.value == "5.9" and potassium.latest.flag == "high"
    assert potassium.range_text == "3.5–5" and potassium.trend is not None
    assert found.abnormal == 1
    # Newest report first, each with the results attached to it (an unknown id is skipped).
    assert [len(r.rows) for r in found.reports] == [1, 2]
    assert found.reports[0].rows[0].flag == "high"


def test_entered_in_error_and_redacted_values_are_left_out() -> None:
    wrong = _obs(1, "2823-3", 9.0, "mmol/L", T0).model_copy(update={"status": "entered-in-error"})
    hidden = ObservationView(id="o2")  # nothing visible
    found = results.results([wrong, hidden], [])
    assert found.labs == () and found.vitals == () and found.abnormal == 0
