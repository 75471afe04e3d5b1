"""Keyed prefix blind indexes of names: the look-up finds every name the search rule matches,
and every writer (loader, re-index, rotation) keeps them in step."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from faker import Faker
from sqlalchemy import func, select

from carnet.crypto.blind import BlindIndexer, IndexKind, name_matches
from carnet.patients.models import Patient, PatientNameKey
from carnet.patients.names import name_candidates, name_key_rows
from carnet.phi.loader import SeedBatch, load_batch
from carnet.phi.name_index import reindex_names
from carnet.phi.rekey import rotate_keys
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from tests.crypto.helpers import create_facility, insert_patients, make_patients

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("name", "term", "found"),
    [
        ("Dupont-Martin", "dup", True),
        ("Dupont-Martin", "Mart", True),
        ("Dupont-Martin", "dupont m", True),
        ("Dupont-Martin", "DUPONT-MARTIN", True),
        ("Lefèvre", "lefev", True),
        ("Le Gall", "le g", True),
        ("Le Gall", "legall", False),
        ("Dupont", "pont", False),  # inside a word is not a match: a search starts words
        ("Dupont", "dupontel", False),
        ("Dupont", "  ", False),
    ],
)
def test_a_name_matches_a_term_that_starts_one_of_its_words(name: str, term: str, found: bool) -> None:
    assert name_matches(name, term) is found


def test_each_word_has_one_prefix_key_under_its_field_kind() -> None:
    blind = BlindIndexer(KEY)
    keys = blind.name_prefix_keys(IndexKind.FAMILY, "Lefèvre-Dupont")
    assert keys == blind.name_prefix_keys(IndexKind.FAMILY, "lefevre dupont")
    assert len(keys) == 2
    assert blind.name_prefix_keys(IndexKind.FAMILY, "Lefebvre") & keys  # same first four letters
    # A given-name prefix, or a whole-value index, never equals a family prefix.
    assert not blind.name_prefix_keys(IndexKind.GIVEN, "Lefèvre-Dupont") & keys
    assert blind.index(IndexKind.FAMILY, "lefe") not in keys
    # Another key gives other values: nothing is a plain hash of the prefix.
    assert not BlindIndexer(bytes(32 * [7])).name_prefix_keys(IndexKind.FAMILY, "Lefèvre-Dupont") & keys


def test_a_single_short_word_cannot_be_looked_up() -> None:
    blind = BlindIndexer(KEY)
    assert blind.name_query_key(IndexKind.FAMILY, "le") is None
    assert blind.name_query_key(IndexKind.FAMILY, "") is None
    assert blind.name_query_key(IndexKind.FAMILY, "le g") in blind.name_prefix_keys(
        IndexKind.FAMILY, "Le Gall"
    )


def test_the_look_up_key_of_every_matching_term_is_among_the_name_keys() -> None:
    """No false negative: for real French names and every term that matches them (each word's
    prefixes of 4 letters or more, and runs into the next word), the term's key was stored."""
    blind = BlindIndexer(KEY)
    fake = Faker("fr_FR")
    fake.seed_instance(18)
    names = [fake.last_name() for _ in range(300)] + [
        "Le Gall",
        "De La Fontaine",
        "N'Diaye",
        "Lefèvre-Dupont",
    ]
    checked = 0
    for name in names:
        stored = blind.name_prefix_keys(IndexKind.FAMILY, name)
        normalized = " ".join(name.casefold().replace("-", " ").replace("'", " ").split())
        for start in range(len(normalized)):
            for end in range(start + 1, len(normalized) + 1):
                term = normalized[start:end]
                if not name_matches(name, term):
                    continue
                key = blind.name_query_key(IndexKind.FAMILY, term)
                if key is not None:
                    assert key in stored, (name, term)
                    checked += 1
    assert checked > 1000


def _patient_row(facility: uuid.UUID, n: int, family: str, given: str) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": uuid.uuid4(),
        "facility_id": facility,
        "ins": f"1{n:014d}",
        "family": family,
        "given": given,
        "birth_date": "1970-01-01",
        "address": None,
        "phone": None,
        "email": None,
        "gender": "female",
        "designated_physician_id": None,
        "opposes_other_facilities": False,
        "active": True,
        "merged_into_id": None,
        "version_id": 1,
        "created_at": now,
        "updated_at": now,
    }


def _found(runtime: Runtime, family: str | None, given: str | None) -> set[uuid.UUID]:
    criteria = name_candidates(runtime.keyring.blind, family=family, given=given)
    assert criteria is not None
    with system_access(runtime, reason="test: name look-up") as door:
        return set(door.session.scalars(select(Patient.id).where(*criteria)))


def test_the_loader_indexes_names_and_the_look_up_narrows_to_them(runtime: Runtime) -> None:
    facility = create_facility(runtime)
    names = [("Dupont-Martin", "Zoé"), ("Dupond", "Marc"), ("Martineau", "Zoëlle"), ("Durand", "Martin")]
    batch = SeedBatch()
    for n, (family, given) in enumerate(names):
        batch.add("patients", _patient_row(facility, n, family, given))
    with system_access(runtime, reason="test: seed named patients") as door:
        counts = load_batch(door, batch)
    ids = [r["id"] for r in batch.rows["patients"]]
    assert counts["patient_name_keys"] == sum(
        len(name_key_rows(runtime.keyring.blind, patient_id=i, facility_id=facility, family=f, given=g))
        for i, (f, g) in zip(ids, names, strict=True)
    )
    assert _found(runtime, "dupo", None) == {ids[0], ids[1]}
    assert _found(runtime, "mart", None) == {ids[0], ids[2]}  # candidates: "Martin" and "Martineau"
    assert _found(runtime, None, "Zoëll") == {ids[2]}
    assert _found(runtime, "dupont m", "Zoëlle") == set()  # both terms' keys must be there
    # Candidates only: "Dupond" shares "dupo"; the gate decrypts them and applies name_matches.
    assert _found(runtime, "dupont m", None) == {ids[0], ids[1]}
    # One short word may start longer names: no look-up, the caller's bounded scan answers.
    assert name_candidates(runtime.keyring.blind, family=None, given="Zoé") is None


def test_reindex_fills_patients_written_before_the_index_and_rotation_ends_with_it(
    runtime: Runtime,
) -> None:
    facility = create_facility(runtime)
    patients = make_patients(6, facility)
    insert_patients(runtime, patients)  # written without name keys, as before the migration

    def keyed() -> int:
        with system_access(runtime, reason="test: count name keys") as door:
            return door.session.scalar(select(func.count(func.distinct(PatientNameKey.patient_id)))) or 0

    assert keyed() == 0
    assert reindex_names(runtime, batch_size=4) == 6
    assert keyed() == 6
    assert reindex_names(runtime) == 0  # nothing left: idempotent
    for p in patients:
        assert p.id in _found(runtime, p.family, p.given)

    more = make_patients(9, facility, seed=11)[6:]
    insert_patients(runtime, more)
    rotate_keys(runtime, reencrypt=True)
    assert keyed() == 9
