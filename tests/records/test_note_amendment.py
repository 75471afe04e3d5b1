"""A note is amended by its author or a physician of the patient's care team; a nurse (or a
physician who only broke the glass or sees the facility) is refused, audited, and adds an
addendum (a note of their own) instead. The rule is a table of cases, then through the gate."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from carnet.access.policy import Relationship
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel.errors import Forbidden
from carnet.phi.gate import Gate
from carnet.records import rules
from carnet.runtime import Runtime
from tests import factories

AUTHOR = uuid.uuid4()
OTHER = uuid.uuid4()
R = Relationship


@pytest.mark.parametrize(
    ("practitioner", "roles", "relationships", "expected"),
    [
        (AUTHOR, {Role.PHYSICIAN}, {R.CARE_TEAM}, True),  # the author
        (AUTHOR, {Role.NURSE}, {R.WARD}, True),  # a nurse amends her own note
        (OTHER, {Role.PHYSICIAN}, {R.CARE_TEAM}, True),  # a physician of the care team
        (OTHER, {Role.PHYSICIAN}, {R.ATTENDING}, True),
        (OTHER, {Role.PHYSICIAN}, {R.DESIGNATED}, True),
        (OTHER, {Role.PHYSICIAN}, {R.REFERRAL}, True),
        (OTHER, {Role.NURSE}, {R.CARE_TEAM}, False),  # a nurse, even in the care team
        (OTHER, {Role.NURSE}, {R.WARD}, False),
        (OTHER, {Role.PHYSICIAN}, {R.BREAK_GLASS}, False),  # broke the glass: not the team
        (OTHER, {Role.PHYSICIAN}, {R.APPOINTMENT}, False),
        (OTHER, {Role.PHYSICIAN}, {R.FACILITY}, False),
        (OTHER, {Role.PHYSICIAN}, set(), False),
        (None, {Role.PHYSICIAN}, {R.CARE_TEAM}, True),  # no practitioner: the role and team decide
        (None, {Role.FRONT_DESK}, {R.FACILITY}, False),
    ],
)
def test_may_amend_note(
    practitioner: uuid.UUID | None, roles: set[Role], relationships: set[Relationship], expected: bool
) -> None:
    assert (
        rules.may_amend_note(
            author_id=AUTHOR, practitioner_id=practitioner, roles=roles, relationships=relationships
        )
        is expected
    )


def _denied(runtime: Runtime, account: uuid.UUID) -> int:
    with runtime.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.account_id == account,
                    AuditEvent.kind == "phi:resource:update",
                    AuditEvent.outcome == "denied",
                )
            )
            or 0
        )


def test_through_the_gate(sqlite_runtime: Runtime) -> None:
    runtime = sqlite_runtime
    facility = factories.make_facility(runtime)
    author = factories.make_physician(runtime, facility)
    colleague = factories.make_physician(runtime, facility)
    nurse = factories.make_nurse(runtime, facility)
    patient = factories.register_patient(runtime, facility)
    for actor in (author, colleague, nurse):
        assert actor.practitioner_id is not None
        factories.link_care(
            runtime, patient_id=patient.id, practitioner_id=actor.practitioner_id, facility_id=facility
        )
    note = Gate(runtime, author).write_note(
        patient_id=patient.id, kind="11506-3", title="Consultation", text="Toux.\nPas de fièvre."
    )
    # The nurse in the care team: refused, audited, nothing changed; she adds an addendum.
    with pytest.raises(Forbidden, match="add an addendum"):
        Gate(runtime, nurse).amend_note(note_id=note.id, expected_version=1, text="Fièvre.", reason="erreur")
    assert _denied(runtime, nurse.account_id) == 1
    addendum = Gate(runtime, nurse).write_note(
        patient_id=patient.id, kind="11506-3", title="Addendum: Consultation", text="T 38,2 à 22 h."
    )
    assert addendum.id != note.id
    # The author, then a physician of the care team, amend it.
    first = Gate(runtime, author).amend_note(
        note_id=note.id, expected_version=1, text="Toux.", reason="précision"
    )
    second = Gate(runtime, colleague).amend_note(
        note_id=note.id, expected_version=first.version_id or 0, text="Toux sèche.", reason="précision"
    )
    assert second.version_id == 3
    assert _denied(runtime, author.account_id) == 0 and _denied(runtime, colleague.account_id) == 0
