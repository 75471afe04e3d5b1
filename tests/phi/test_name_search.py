"""Name-only search through the keyed name prefixes: the same answers as the rule, only the
candidates decrypted, names kept in step by registration and identity changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from faker import Faker

from carnet.access.actor import Actor
from carnet.crypto.blind import name_matches
from carnet.crypto.keyring import Keyring
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientChanges
from carnet.runtime import Runtime
from tests import factories as f


@contextmanager
def _counting_family_decryptions(keyring: Keyring) -> Iterator[list[int]]:
    """How many family names the keyring opened meanwhile."""
    calls = [0]
    original = keyring.decrypt

    def decrypt(blob: bytes | None, *, table: str, column: str, row_id: object) -> str | None:
        if table == "patients" and column == "family":
            calls[0] += 1
        return original(blob, table=table, column=column, row_id=row_id)  # type: ignore[arg-type]

    keyring.decrypt = decrypt  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del keyring.decrypt  # type: ignore[method-assign]


def _ward(runtime: Runtime, families: list[str]) -> tuple[Actor, list[str]]:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    ids = []
    for n, family in enumerate(families):
        patient = f.register_patient(runtime, facility, family=family, ins=f"1700575{n:06d}")
        f.link_care(
            runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility
        )
        ids.append(patient.id)
    return doctor, ids


def test_a_name_search_decrypts_the_candidates_not_the_care_list(runtime: Runtime) -> None:
    fake = Faker("fr_FR")
    fake.seed_instance(3)
    unrelated = [
        n
        for n in sorted({fake.last_name() for _ in range(200)})
        if not any(name_matches(n, t) for t in ("du", "mar", "pont"))
    ]
    others = unrelated[:30]
    doctor, ids = _ward(runtime, ["Dupont-Martin", "Dupond", *others])
    gate = Gate(runtime, doctor)
    with _counting_family_decryptions(runtime.keyring) as opened:
        found = gate.search_patients(family="dupont")
    assert [p.id for p in found.items] == [ids[0]]
    # "Dupont-Martin" and "Dupond" share "dupo": two candidates, then the one shown; not 32.
    assert opened[0] <= 3
    assert [p.id for p in gate.search_patients(family="mart").items] == [ids[0]]
    assert [p.id for p in gate.search_patients(family="dupont m").items] == [ids[0]]
    assert gate.search_patients(family="pont").items == []  # a search starts a word
    # Two letters cannot be looked up: matched over the care list (a partial sweep).
    assert {p.id for p in gate.search_patients(family="du").items} == {ids[0], ids[1]}


def test_a_renamed_patient_is_found_by_the_new_name_only(runtime: Runtime) -> None:
    doctor, ids = _ward(runtime, ["Martin"])
    gate = Gate(runtime, doctor)
    assert [p.id for p in gate.search_patients(family="martin").items] == ids
    gate.update_patient(patient_id=ids[0], expected_version=1, changes=PatientChanges(family="Durand"))
    assert [p.id for p in gate.search_patients(family="durand").items] == ids
    assert gate.search_patients(family="martin").items == []


@pytest.mark.parametrize("given", ["Anne-Sophie", "Zoé"])
def test_given_names_are_searched_the_same_way(sqlite_runtime: Runtime, given: str) -> None:
    runtime = sqlite_runtime
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    mine = f.register_patient(runtime, facility, family="Lefèvre", given=given)
    f.link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    assert [p.id for p in gate.search_patients(given=given.upper()).items] == [mine.id]
    assert [p.id for p in gate.search_patients(family="lefe", given=given[:3]).items] == [mine.id]
    assert gate.search_patients(family="lefe", given="Paul").items == []
