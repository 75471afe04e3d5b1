"""The care filter built once with bound values (`care.bound_patient_filter`, used by the
Patient search: carnet/patients/search_sql.py), with the care list computed once or each
relationship asked per candidate, selects exactly the patients the filter built with the
actor's values (`care.patient_filter`) selects, for every relationship and every kind of actor
context, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from itertools import combinations
from typing import Any

import sqlalchemy as sa

from carnet.access.context import AccessContext, resolve
from carnet.access.policy import Relationship
from carnet.kernel import clock
from carnet.patients.models import Patient
from carnet.phi import care
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f

R = Relationship


def _selected(runtime: Runtime, condition: Any, params: dict[str, Any] | None = None) -> set[uuid.UUID]:
    with runtime.session_factory() as session:
        return set(session.scalars(sa.select(Patient.id).where(condition), params or {}))


def _agree(runtime: Runtime, ctx: AccessContext, rels: frozenset[Relationship]) -> set[uuid.UUID]:
    expected = care.patient_filter(ctx, rels)
    array = runtime.engine.dialect.name == "postgresql"
    want = _selected(runtime, expected) if expected is not None else set()
    for correlated in (False, True):  # the care list once, or asked per candidate
        shape = care.filter_shape(ctx, rels, array=array, correlated=correlated)
        bound = care.bound_patient_filter(shape)
        assert (expected is None) == (bound is None), rels
        if bound is not None:
            assert _selected(runtime, bound, care.filter_params(ctx)) == want, (rels, ctx, correlated)
    return want


def test_the_bound_care_filter_selects_what_the_built_one_selects(runtime: Runtime) -> None:
    facility, elsewhere = f.make_facility(runtime), f.make_facility(runtime, "Clinique Ailleurs")
    actor = f.make_physician(runtime, facility)
    me = actor.practitioner_id
    assert me is not None
    ward = f.make_location(runtime, facility)
    f.assign_ward(runtime, practitioner_id=me, location_id=ward, facility_id=facility)

    def patient(at: uuid.UUID = facility, **extra: Any) -> uuid.UUID:
        return uuid.UUID(f.register_patient(runtime, at, **extra).id)

    cared, referred, ended, attended, on_ward, designated, stranger = (patient() for _ in range(7))
    restricted = patient(elsewhere, opposes_other_facilities=True)
    open_elsewhere = patient(elsewhere)
    f.link_care(runtime, patient_id=cared, practitioner_id=me, facility_id=facility)
    f.link_care(runtime, patient_id=referred, practitioner_id=me, facility_id=facility, kind="referral")
    f.link_care(
        runtime,
        patient_id=ended,
        practitioner_id=me,
        facility_id=facility,
        end=clock.now() - dt.timedelta(hours=1),
    )
    f.admit(runtime, patient_id=attended, facility_id=facility, location_id=None, attending_id=me)
    f.admit(runtime, patient_id=on_ward, facility_id=facility, location_id=ward)
    with runtime.session_factory.begin() as session:
        session.execute(sa.update(Patient).where(Patient.id == designated).values(designated_physician_id=me))
    glass = dataclasses.replace(actor, second_factor_at=clock.now())
    Gate(runtime, glass).break_glass(
        patient_id=str(stranger), reason="emergency", justification="arrêt cardiaque aux urgences"
    )

    with runtime.session_factory() as session:
        ctx = resolve(session, actor, now=clock.now())
    # Acting at the other facility: its restricted patient shows there, and only there.
    both = dataclasses.replace(ctx, facility_ids=ctx.facility_ids | {elsewhere}, acting_facility_id=elsewhere)
    contexts = {
        "physician": ctx,
        "two facilities": both,
        "two facilities, no acting facility": dataclasses.replace(both, acting_facility_id=None),
        "a launch patient": dataclasses.replace(ctx, compartment=cared),
        "no practitioner": dataclasses.replace(ctx, practitioner_id=None),
        "no account": dataclasses.replace(ctx, account_id=None),
        "a patient": dataclasses.replace(ctx, patient_id=referred, practitioner_id=None),
        "no facility": dataclasses.replace(ctx, facility_ids=frozenset()),
    }
    kinds = [R.CARE_TEAM, R.REFERRAL, R.APPOINTMENT, R.ATTENDING, R.WARD, R.DESIGNATED, R.BREAK_GLASS, R.SELF]
    rel_sets = [frozenset(), frozenset({R.FACILITY}), frozenset({R.LOCATED}), care.CARE]
    rel_sets += [frozenset(c) for c in combinations(kinds, 1)]
    rel_sets += [frozenset(kinds), care.CARE | {R.BREAK_GLASS}, frozenset({R.CARE_TEAM, R.WARD})]
    seen: dict[str, set[uuid.UUID]] = {}
    for label, context in contexts.items():
        for rels in rel_sets:
            seen[f"{label} {sorted(rels)}"] = _agree(runtime, context, rels)

    # The cases are what they say (not all equal by being all empty).
    assert seen[f"physician {sorted(care.CARE)}"] == {cared, referred, attended, on_ward, designated}
    assert seen[f"physician {sorted({R.BREAK_GLASS})}"] == {stranger}
    assert restricted in seen[f"two facilities {sorted({R.FACILITY})}"]
    assert restricted not in seen[f"two facilities, no acting facility {sorted({R.FACILITY})}"]
    assert restricted not in seen[f"physician {sorted({R.FACILITY})}"]
    assert open_elsewhere in seen[f"two facilities, no acting facility {sorted({R.FACILITY})}"]
    assert seen[f"a launch patient {sorted(care.CARE)}"] == {cared}
    assert seen[f"a patient {sorted({R.SELF})}"] == {referred}
    assert seen[f"no practitioner {sorted(care.CARE)}"] == set()
    assert seen[f"no facility {sorted({R.FACILITY})}"] == set()
