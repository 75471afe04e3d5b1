"""Attacker playbooks over HTTP against a live carnet on a seeded hospital: every one is
contained, with few patients exposed, and a canary contains on the first request."""

from __future__ import annotations

import pytest

from carnet.phi.exercise import exercise_targets
from carnet.redteam.playbooks import (
    API_PLAYBOOKS,
    exposure_table,
    patient_ids_in,
    playbook_names,
    run_playbooks,
)
from carnet.runtime import Runtime
from carnet.synth.seed import seed_hospital
from tests.fhir.conftest import serve


def test_patient_ids_are_read_from_bundles_and_resources() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}},
            {"resource": {"resourceType": "Invoice", "subject": {"reference": "Patient/p2"}}},
            {"resource": {"resourceType": "OperationOutcome"}},
        ],
    }
    assert patient_ids_in(bundle) == {"p1", "p2"}
    assert patient_ids_in({"resourceType": "Appointment", "patient": {"reference": "Patient/p3"}}) == {"p3"}
    appointment = {
        "resourceType": "Appointment",
        "participant": [{"actor": {"reference": "Practitioner/d1"}}, {"actor": {"reference": "Patient/p4"}}],
    }
    assert patient_ids_in(appointment) == {"p4"}
    assert patient_ids_in(["not", "fhir"]) == set()


@pytest.mark.slow
def test_every_playbook_is_contained(sqlite_runtime: Runtime) -> None:
    seed_hospital(sqlite_runtime, patients=2500, seed=6, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=300)
    assert targets.canaries, "the seeded hospital has canary patients"
    for url in serve(sqlite_runtime):
        results = run_playbooks(sqlite_runtime, base_url=url, targets=targets, max_requests=120)
    print(exposure_table(results))  # the table for docs/SECURITY.md
    by_name = {r.playbook: r for r in results}
    assert set(by_name) == set(playbook_names()) - {p.name for p in API_PLAYBOOKS}
    ran = [r for r in results if r.username != "-"]
    assert ran and all(r.contained for r in ran), exposure_table(results)
    # Issue 6 asks for a median of at most 5 and a maximum of 25 on a 20,000-patient hospital;
    # this small clinic (2,500 patients) guards the current tuning against regressions.
    exposed = sorted(r.exposed_count for r in ran)
    assert exposed[len(exposed) // 2] <= 10 and exposed[-1] <= 40, exposure_table(results)
    canary = by_name["canary-touch"]
    assert canary.requests_to_containment == 1 and canary.exposed_count == 0


@pytest.mark.slow
def test_the_interoperability_surface_gives_an_attacker_nothing_more(sqlite_runtime: Runtime) -> None:
    """_include/_revinclude, whole-system _history and Bulk Data kick-offs from stolen sessions:
    each brings no more patients than the reads it stands for, and is contained or empty."""
    seed_hospital(sqlite_runtime, patients=1500, seed=8, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=200)
    names = [p.name for p in API_PLAYBOOKS]
    for url in serve(sqlite_runtime):
        results = run_playbooks(sqlite_runtime, base_url=url, targets=targets, names=names, max_requests=120)
    print(exposure_table(results))
    by_name = {r.playbook: r for r in results}
    assert set(by_name) == set(names), exposure_table(results)
    for result in results:
        assert result.username != "-", exposure_table(results)
        # Contained, or it ran out of requests having been given nothing.
        assert result.contained or result.exposed_count == 0, exposure_table(results)
        assert result.exposed_count <= 10, exposure_table(results)
    # The administrator's history sweep reads no patient data at all.
    assert by_name["history-sweep"].exposed_count == 0, exposure_table(results)
