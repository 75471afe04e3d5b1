"""The front-desk appointment scrape, export abuse and several accounts at once, over HTTP on a
seeded clinic."""

from __future__ import annotations

import pytest

from carnet.phi.exercise import exercise_targets
from carnet.redteam.playbooks import exposure_table, run_playbooks
from carnet.runtime import Runtime
from carnet.synth.seed import seed_hospital
from tests.fhir.conftest import serve


@pytest.mark.slow
def test_appointment_scrape_export_abuse_and_several_accounts(sqlite_runtime: Runtime) -> None:
    seed_hospital(sqlite_runtime, patients=2500, seed=6, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=300)
    assert targets.practitioners
    for url in serve(sqlite_runtime):
        results = run_playbooks(
            sqlite_runtime,
            base_url=url,
            targets=targets,
            names=["appointment-scrape", "export-abuse", "several-accounts"],
            max_requests=120,
        )
    print(exposure_table(results))
    by_name = {r.playbook: r for r in results}
    scrape, team = by_name["appointment-scrape"], by_name["several-accounts"]
    # No list across patients: another practitioner's appointments by day answer the calendar's
    # busy slots, naming no patient (tests/fhir/test_search.py checks the Bundles); the patients
    # counted below come from the per-patient searches that follow.
    assert scrape.answers.get("ok", 0) >= 12, scrape.answers
    assert scrape.contained, exposure_table(results)
    # Front desk serves the whole facility, but most of the register has no business with it
    # now: the outside-work step-up, which a stolen session cannot answer, stops it.
    assert 0 < scrape.exposed_count <= 25 and scrape.exposed, exposure_table(results)
    # Export abuse: the request is taken (pending), self-approval and unapproved use are refused,
    # and two refused exports in an hour contain the account before anything leaves.
    abuse = by_name["export-abuse"]
    assert abuse.contained and abuse.exposed_count == 0, exposure_table(results)
    assert abuse.answers.get("ok") == 1 and abuse.answers.get("403 forbidden", 0) >= 2, abuse.answers
    assert team.contained, exposure_table(results)
    assert len(team.username.split("+")) == 3
    # The union of three accounts: more than one alone would get, still bounded.
    assert team.exposed_count <= 25, exposure_table(results)


@pytest.mark.slow
def test_calendar_scrape_must_ask_who_slot_by_slot_and_is_contained(sqlite_runtime: Runtime) -> None:
    seed_hospital(sqlite_runtime, patients=2500, seed=6, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=300)
    assert targets.practitioners
    for url in serve(sqlite_runtime):
        results = run_playbooks(
            sqlite_runtime, base_url=url, targets=targets, names=["calendar-scrape"], max_requests=200
        )
    print(exposure_table(results))
    (scrape,) = results
    assert scrape.contained, exposure_table(results)
    # Calendars name nobody: every patient the attacker read came from one "Who is this?" each,
    # and the server's ledger agrees with what the attacker parsed.
    reveals = scrape.answers.get("ok", 0) - 1  # the first calendar page, then one per slot
    assert reveals >= 1 and len(scrape.exposed) == scrape.exposed_ledger, scrape
    assert len(scrape.exposed) <= reveals
    # Slot after slot is a lookup sweep: asked for a second factor, then contained.
    assert 0 < scrape.exposed_count <= 10, exposure_table(results)
