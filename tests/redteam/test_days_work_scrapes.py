"""The day's work lists scraped from stolen sessions, at 10:00 in Paris on a seeded clinic:
the arrivals list (every window of the day, refreshed), the billing worklist (paged to its
end) and a nurse's ward board (then other days' lists). Each is bounded by design and counted
as the day list is: at most 25 patients before the session is contained, as for the calendar
and day-list scrapes (tests/redteam/test_more_playbooks.py, test_playbooks.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from carnet.kernel import clock
from carnet.phi.exercise import exercise_targets
from carnet.redteam.playbooks import exposure_table, run_playbooks
from carnet.runtime import Runtime
from carnet.scheduling.rules import ARRIVALS_NAMED
from carnet.synth.seed import seed_hospital
from tests.fhir.conftest import serve

SCRAPES = ["arrivals-scrape", "worklist-scrape", "ward-board-walk", "calendar-scrape", "day-list-walk"]


@pytest.mark.slow
def test_the_days_work_lists_give_a_stolen_session_at_most_25_patients(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    today = clock.now().astimezone(dt.UTC).date()
    movable_clock.set(dt.datetime.combine(today, dt.time(9, 0), tzinfo=dt.UTC))  # 10:00 in Paris
    seed_hospital(sqlite_runtime, patients=2500, seed=6, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=300)
    for url in serve(sqlite_runtime):
        results = run_playbooks(
            sqlite_runtime, base_url=url, targets=targets, names=SCRAPES, max_requests=120
        )
    print(exposure_table(results))
    by_name = {r.playbook: r for r in results}
    assert set(by_name) == set(SCRAPES), exposure_table(results)
    for result in results:
        assert result.username != "-", exposure_table(results)
        assert result.contained, exposure_table(results)
        assert result.exposed_count <= 25, exposure_table(results)
    # The arrivals list answered every window, naming only the patients expected nearest now.
    arrivals = by_name["arrivals-scrape"]
    assert arrivals.answers.get("ok", 0) >= 18, arrivals.answers
    # Paged past what a clerk works through, the worklist is browsing: stopped at page 3.
    worklist = by_name["worklist-scrape"]
    assert 0 < worklist.exposed_count <= 16 and worklist.answers.get("ok", 0) == 2, exposure_table(results)
    assert ARRIVALS_NAMED + 10 <= 25  # the list's names, then the calendar's reveals (≤ 10)
