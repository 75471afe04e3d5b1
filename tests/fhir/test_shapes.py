"""The cheap shape check of answers (carnet/fhir/core/shapes.py) agrees with fhir.resources:
on every Patient of a seeded hospital, mapped as each of the reading roles sees it, both accept;
on broken ones, the shape check never accepts what the R4B model refuses."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError

from carnet.access.policy import PATIENT_CONTACT, PATIENT_IDENTITY
from carnet.fhir.core import shapes
from carnet.fhir.resources.patient import patient_to_fhir
from carnet.patients.models import Patient
from carnet.patients.views import patient_view, with_replaces
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from carnet.synth.seed import seed_hospital


@dataclasses.dataclass
class _Reader:
    """What `patient_view` needs of a guarded transaction: decryption (a field, a row's fields),
    and the session."""

    runtime: Runtime
    session: Any

    def dec(self, blob: bytes | None, table: str, column: str, row_id: Any) -> str | None:
        return self.runtime.keyring.decrypt(blob, table=table, column=column, row_id=row_id)

    def dec_row(self, table: str, row_id: Any, blobs: Any) -> list[str | None]:
        return self.runtime.keyring.decrypt_row(table, row_id, blobs)


def _r4b_ok(resource: dict[str, Any]) -> bool:
    try:
        FhirPatient.model_validate(resource)
    except ValidationError:
        return False
    return True


@pytest.fixture
def mapped(sqlite_runtime: Runtime) -> Iterator[list[dict[str, Any]]]:
    """Every seeded patient mapped to FHIR as a reader of each field set sees it."""
    runtime = sqlite_runtime
    seed_hospital(runtime, patients=150, seed=11)
    views = (PATIENT_IDENTITY | PATIENT_CONTACT, PATIENT_IDENTITY, frozenset({"id"}))
    with system_access(runtime, reason="test: map every seeded patient") as door:
        reader: Any = _Reader(runtime, door.session)
        patients = door.session.scalars(sa.select(Patient)).all()
        out = []
        for patient in patients:
            for fields in views:
                view = patient_view(reader, patient, frozenset(fields))
                if fields is views[0]:
                    view = with_replaces(reader, patient, view)
                out.append(patient_to_fhir(view.model_dump()))
    assert len(out) >= 150 * len(views)
    yield out


# Refused by the R4B model: the shape check must refuse them too.
_INVALID = [
    ("birthDate", "1970-13-01"),
    ("birthDate", "17/05/1970"),
    ("id", "not a valid id!"),
    ("name", [{"family": ""}]),
    ("name", [{"family": 42}]),
    ("meta", {"versionId": "1", "lastUpdated": "2026-01-01"}),
    ("unknownElement", 1),
    ("resourceType", "Practitioner"),
]
# Accepted by the R4B model (it coerces or does not bind the value set) though carnet's mapper
# never writes them: the shape check refuses them, and the full validation then decides.
_UNUSUAL = [
    ("gender", "femme"),
    ("active", "yes"),
    ("telecom", [{"system": "phone"}]),
    ("telecom", [{"system": "fax", "value": "01 02"}]),
    ("managingOrganization", {"reference": "Organization/"}),
    ("identifier", []),
    ("extension", [{"url": "x"}]),
]


def test_shape_check_and_r4b_agree_on_the_seeded_hospital(mapped: list[dict[str, Any]]) -> None:
    for resource in mapped:
        assert shapes.patient_ok(resource), sorted(resource)
        assert _r4b_ok(resource)
    for cases, model_accepts in ((_INVALID, False), (_UNUSUAL, True)):
        for element, value in cases:
            resource = copy.deepcopy(mapped[0])
            resource[element] = value
            assert _r4b_ok(resource) is model_accepts, element
            assert not shapes.patient_ok(resource), element


def test_a_view_of_an_expired_record_reads_it_again_as_the_orm_would(sqlite_runtime: Runtime) -> None:
    """`patient_data` reads the values the ORM holds in the instance's `__dict__` (no descriptor
    call per column); a record whose values were expired (after a commit, a refresh) is loaded
    again, and the view is the same as that of the record freshly read."""
    runtime = sqlite_runtime
    seed_hospital(runtime, patients=5, seed=3)
    every = PATIENT_IDENTITY | PATIENT_CONTACT
    with system_access(runtime, reason="test: a view of an expired record") as door:
        reader: Any = _Reader(runtime, door.session)
        patients = door.session.scalars(sa.select(Patient)).all()
        fresh = [patient_view(reader, p, frozenset(every)) for p in patients]
        for patient in patients:
            door.session.expire(patient)
            assert "family_ct" not in patient.__dict__
        assert [patient_view(reader, p, frozenset(every)) for p in patients] == fresh
        assert all(v.family for v in fresh)
