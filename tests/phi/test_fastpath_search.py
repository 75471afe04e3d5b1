"""The gate's fast read of a patient's chart sections (carnet/phi/fastpath_search.py: the FHIR
searches by patient, `$everything`'s reads) and the kernel's general path decide, redact,
audit and count identically.

As in test_fastpath.py: each case is built twice (two worlds in one database), this time with a
record of every section's type filed under the patient; every section is read, in
`$everything`'s order, on the general path in one world and as served (the fast path on
PostgreSQL) in the other. The answers (views or errors), the audit events, the exposure rows and
detection's window counts must be the same once each world's ids are named alike. On
PostgreSQL the test also checks that every section took the fast path and that each body was
served the rows the first pipeline read (not read a second time).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from carnet.coverage.models import Coverage
from carnet.interventions.models import Intervention
from carnet.kernel import clock
from carnet.patients.models import Consent
from carnet.phi import fastpath, fastpath_search
from carnet.phi.gate import Gate
from carnet.phi.system import system_access
from carnet.prescriptions.models import Prescription
from carnet.records.models import Allergy, ClinicalNote, Condition, NoteVersion, ServiceRequest
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from tests import factories as f
from tests.phi.test_fastpath import (
    CASES,
    RELATIONSHIP_CASES,
    World,
    _last_seq,
    _named,
    _trail,
    _world,
)

# The relationship cases that open the chart (the others are relationships no longer).
OPENING = [case for case in RELATIONSHIP_CASES if case not in ("care-ended", "appointment-cancelled")]

_MINUTE = re.compile(r"\b\d{2}:\d{2}\b")

# Every section the fast variant covers, in `$everything`'s order (then the others).
SECTIONS = [
    "list_encounters",
    "list_appointments",
    "list_allergies",
    "list_conditions",
    "list_observations",
    "list_prescriptions",
    "list_notes",
    "list_invoices",
    "list_care_team",
    "list_diagnostic_reports",
    "list_consents",
    "list_coverage",
    "list_orders",
    "list_immunizations",
    "list_procedures",
    "list_medication_administrations",
    "list_medication_statements",
]


def _chart(runtime: Runtime, world: World) -> None:
    """One record (or two) of every section's type under the world's patient, encrypted fields
    included, written through the audited system door as seeding writes them."""
    if world.names.get(world.patient_id) != "patient":
        return  # the "missing" case: no such patient
    pid = uuid.UUID(world.patient_id)
    facility = next(uuid.UUID(k) for k, v in world.names.items() if v == "facility")
    practitioner = f.make_practitioner(runtime, facility)
    world.names[str(practitioner)] = "author"
    now = clock.now()
    stamp = {"version_id": 1, "created_at": now, "updated_at": now}
    f.admit(runtime, patient_id=pid, facility_id=facility, location_id=None, status="finished")
    f.make_invoice(runtime, patient_id=pid, facility_id=facility)
    f.make_lab_report(runtime, patient_id=pid, facility_id=facility)
    with system_access(runtime, reason="test fixture: a chart of every section") as door:

        def enc(value: str, table: str, column: str, row_id: uuid.UUID) -> bytes:
            return door.keyring.encrypt(
                value, facility_id=facility, table=table, column=column, row_id=row_id
            )

        ids = {name: uuid.uuid4() for name in ("allergy", "note", "version", "order", "appt", "coverage")}
        door.session.add_all(
            [
                Condition(
                    facility_id=facility,
                    patient_id=pid,
                    code="I10",
                    display="Hypertension essentielle",
                    clinical_status="active",
                    verification_status="confirmed",
                    onset_at=now - dt.timedelta(days=400),
                    recorded_by=practitioner,
                    **stamp,
                ),
                Allergy(
                    id=ids["allergy"],
                    facility_id=facility,
                    patient_id=pid,
                    substance_code="J01CA",
                    substance_display="Pénicillines",
                    criticality="high",
                    reaction_ct=enc("urticaire géante", "allergies", "reaction", ids["allergy"]),
                    clinical_status="active",
                    recorded_by=practitioner,
                    **stamp,
                ),
                Prescription(
                    facility_id=facility,
                    patient_id=pid,
                    prescriber_id=practitioner,
                    medication_code="3400930000001",
                    medication_display="Amlodipine 5 mg",
                    substance_code="C08CA01",
                    dosage_text="1 comprimé le matin",
                    status="active",
                    authored_at=now - dt.timedelta(days=3),
                    **stamp,
                ),
                ClinicalNote(
                    id=ids["note"],
                    facility_id=facility,
                    patient_id=pid,
                    author_id=practitioner,
                    kind="11506-3",
                    title="Note d'évolution",
                    status="current",
                    **stamp,
                ),
                ServiceRequest(
                    id=ids["order"],
                    facility_id=facility,
                    patient_id=pid,
                    requester_id=practitioner,
                    placer_number="20261207-0000ABCD",  # unique per facility: one world, one facility
                    code="24323-8",
                    display="Bilan métabolique",
                    authored_at=now - dt.timedelta(days=1),
                    note_ct=enc("contrôle de la kaliémie", "service_requests", "note", ids["order"]),
                    **stamp,
                ),
                Consent(
                    facility_id=facility,
                    patient_id=pid,
                    kind="oppose_other_facilities",
                    status="inactive",
                    recorded_at=now - dt.timedelta(days=10),
                    withdrawn_at=now - dt.timedelta(days=5),
                    **stamp,
                ),
                Appointment(
                    id=ids["appt"],
                    facility_id=facility,
                    patient_id=pid,
                    practitioner_id=practitioner,
                    start_at=now + dt.timedelta(days=2),
                    end_at=now + dt.timedelta(days=2, minutes=20),
                    status="booked",
                    reason_ct=enc("suivi tensionnel", "appointments", "reason", ids["appt"]),
                    **stamp,
                ),
                Coverage(
                    id=ids["coverage"],
                    facility_id=facility,
                    patient_id=pid,
                    kind="AMO",
                    payer="CPAM Paris",
                    member_id_ct=enc("1700512345678", "coverages", "member_id", ids["coverage"]),
                    status="active",
                    period_start=now - dt.timedelta(days=365),
                    **stamp,
                ),
            ]
        )
        door.session.flush()
        door.session.add(
            NoteVersion(
                id=ids["version"],
                note_id=ids["note"],
                version=1,
                text_ct=enc("Patient stable, TA 135/85.", "note_versions", "text", ids["version"]),
                author_id=practitioner,
                recorded_at=now,
            )
        )
        for kind, code in (
            ("Immunization", "J07BB"),
            ("Procedure", "DEQP003"),
            ("MedicationAdministration", "C08CA01"),
            ("MedicationStatement", "C09AA05"),
        ):
            row_id = uuid.uuid4()
            received = {"resourceType": kind, "id": str(row_id), "status": "completed"}
            door.session.add(
                Intervention(
                    id=row_id,
                    facility_id=facility,
                    patient_id=pid,
                    resource_type=kind,
                    code=code,
                    display=kind,
                    status="completed",
                    occurred_at=now - dt.timedelta(days=20),
                    recorded_by=practitioner,
                    received_ct=enc(json.dumps(received), "interventions", "received", row_id),
                    **stamp,
                )
            )


def _outcome(read: Callable[[], Any], names: dict[str, str]) -> Any:
    try:
        views = read()
    except Exception as exc:
        # A step-up names the minute it was asked: the two worlds may straddle a minute.
        return (type(exc).__name__, _named(_MINUTE.sub("<hh:mm>", str(exc)), names))
    dumped = [v.model_dump() for v in views] if isinstance(views, list) else views.model_dump()
    return ("ok", _named(dumped, names))


def _read_all(runtime: Runtime, world: World) -> list[Any]:
    gate = Gate(runtime, world.actor)
    return [
        (name, _outcome(lambda name=name: getattr(gate, name)(patient_id=world.patient_id), world.names))
        for name in SECTIONS
    ]


@pytest.mark.parametrize("case", CASES)
def test_fast_and_general_section_reads_agree(runtime: Runtime, case: str) -> None:
    on_postgres = runtime.engine.dialect.name == "postgresql"
    general, fast = _world(runtime, case), _world(runtime, case)
    _chart(runtime, general)
    _chart(runtime, fast)

    since = _last_seq(runtime)
    with fastpath.general_only():
        before = fastpath_search.taken
        expected = _read_all(runtime, general)
        assert fastpath_search.taken == before
    expected_trail = _trail(runtime, general, since)

    since = _last_seq(runtime)
    before, served = fastpath_search.taken, fastpath_search.served
    got = _read_all(runtime, fast)
    got_trail = _trail(runtime, fast, since)
    if on_postgres:
        assert fastpath_search.taken == before + len(SECTIONS)
        opened = sum(1 for _name, (kind, _view) in got if kind == "ok")
        # Each body that reached its rows had them from the pipeline (a containment or a
        # step-up found by detection, after the body, refuses what was served).
        assert fastpath_search.served - served >= opened
        if case in ("allowed", "redacted", "break-glass"):
            assert fastpath_search.served - served == opened
    else:
        assert fastpath_search.taken == before

    assert got == expected
    assert got_trail == expected_trail
    outcomes = {kind for _name, (kind, _view) in got}
    assert expected_trail["audit"], "every read is audited"
    assert len(expected_trail["audit"]) >= len(SECTIONS)  # one per read, and any containment
    answered = dict(got)
    if case in ("allowed", "break-glass"):  # a physician: every section, with its records
        shown = {name for name in SECTIONS if answered[name][0] == "ok"}
        assert shown == set(SECTIONS) - {"list_invoices"}, shown  # billing is not a physician's
        empty = {"list_coverage"} | ({"list_care_team"} if case == "break-glass" else set())
        assert all(answered[name][1] for name in shown - empty)
        assert answered["list_coverage"][1]["coverages"]
        note = answered["list_notes"][1][0]
        assert note["versions"][0]["text"] == "Patient stable, TA 135/85."
        assert answered["list_allergies"][1][0]["reaction"] == "urticaire géante"
        assert expected_trail["exposures"]
    elif case in ("redacted", "kept", "kept-redacted", *OPENING):
        # A nurse in the care team (some sections, some fields), or the patient kept as
        # another system sent it, read by a physician or a nurse of its care; or read by one
        # relationship of another kind.
        assert "ok" in outcomes
    else:
        refusal = {
            "refused": "NotFound",
            "missing": "NotFound",
            "no-grant": "NotFound",
            "contained": "AccountContained",
            "suspended": "AccountContained",
            "stepped-up": "StepUpRequired",
            "care-ended": "NotFound",
            "appointment-cancelled": "NotFound",
        }[case]
        # Refused again and again, the account is contained (alike on both paths); a section its
        # role never opens (invoices) is refused by the policy first, as a missing one.
        assert answered[SECTIONS[0]][0] == refusal
        assert outcomes <= {refusal, "AccountContained", "NotFound"}


def test_only_the_declared_statement_of_the_patient_asked_is_served_ahead() -> None:
    """The prefetched rows serve the body only when it asks the declared statement for the
    patient asked (same SQL shape, same values); anything else is read from the database."""
    from carnet.phi.steps import SECTION_LIMIT
    from carnet.records.models import Observation
    from carnet.records.operations import conditions_section, observations_section

    declared = fastpath_search._declare(lambda pid: observations_section(pid).limit(SECTION_LIMIT))
    patient, other = uuid.uuid4(), uuid.uuid4()
    assert fastpath_search._same(declared, observations_section(patient).limit(SECTION_LIMIT), patient)
    assert not fastpath_search._same(declared, observations_section(other).limit(SECTION_LIMIT), patient)
    assert not fastpath_search._same(declared, observations_section(patient).limit(10), patient)
    assert not fastpath_search._same(declared, observations_section(patient), patient)
    narrowed = observations_section(patient).where(Observation.category == "laboratory")
    assert not fastpath_search._same(declared, narrowed.limit(SECTION_LIMIT), patient)
    assert not fastpath_search._same(declared, conditions_section(patient).limit(SECTION_LIMIT), patient)
