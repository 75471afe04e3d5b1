"""The key file and the keyring as other workers see them while a rotation runs elsewhere."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from carnet.crypto.keyring import DecryptionError, Keyring
from carnet.crypto.keys import FileKeyProvider, RotatableKeyProvider
from carnet.kernel.errors import ConfigurationError
from carnet.phi.rekey import renew_data_keys
from carnet.runtime import Runtime
from tests.crypto.helpers import create_facility


def test_the_file_provider_is_the_rotatable_kind(tmp_path: Path) -> None:
    assert isinstance(FileKeyProvider.create(tmp_path / "keys.json"), RotatableKeyProvider)


def test_a_worker_opens_keys_wrapped_under_a_kek_added_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    worker = FileKeyProvider.create(path)
    rotator = FileKeyProvider(path)
    assert rotator.add_kek() == "kek-2"
    kek_id, wrapped = rotator.wrap(b"k" * 32, context="carnet/dek/x")
    assert kek_id == "kek-2"
    # The worker has never seen kek-2: it re-reads the file instead of failing.
    assert worker.unwrap(kek_id, wrapped, context="carnet/dek/x") == b"k" * 32
    # And it wraps new keys under the new KEK, not under one about to be retired.
    assert worker.wrap(b"k" * 32, context="c")[0] == "kek-2"


def test_the_key_file_stays_private_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    provider = FileKeyProvider.create(path)
    provider.add_kek()
    assert provider.retire_keks(keep=set()) == ["kek-1"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and provider.mode == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]
    assert json.loads(path.read_text())["active_kek"] == "kek-2"


def test_the_active_kek_is_never_retired(tmp_path: Path) -> None:
    provider = FileKeyProvider.create(tmp_path / "keys.json")
    assert provider.retire_keks(keep=set()) == []
    assert provider.kek_ids == ["kek-1"]


def test_a_key_file_whose_blind_index_key_changed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    provider = FileKeyProvider.create(path)
    doc = json.loads(path.read_text())
    doc["blind_index_key"] = base64.b64encode(b"x" * 32).decode()
    doc["keks"]["kek-9"] = base64.b64encode(b"y" * 32).decode()
    path.write_text(json.dumps(doc))
    # Searches would silently miss every stored index: stop instead.
    with pytest.raises(ConfigurationError, match="blind-index key"):
        provider.unwrap("kek-9", b"\0" * 60, context="c")


def test_a_worker_moves_to_a_new_data_key_within_its_refresh_interval(sqlite_runtime: Runtime) -> None:
    facility_id = create_facility(sqlite_runtime)
    worker = Keyring(sqlite_runtime.keys, sqlite_runtime.session_factory, refresh_seconds=0)
    worker.load()
    old = worker.active_key_id(facility_id)
    renew_data_keys(sqlite_runtime, operator="test")  # `keys rotate --reencrypt` elsewhere
    new = sqlite_runtime.keyring.active_key_id(facility_id)
    assert new != old
    blob = worker.encrypt(
        "x", facility_id=facility_id, table="patients", column="family", row_id=uuid.uuid4()
    )
    assert blob is not None and worker.key_id_of(blob) == new


def test_a_stale_worker_still_reads_values_under_a_key_created_after_it_started(
    sqlite_runtime: Runtime,
) -> None:
    facility_id = create_facility(sqlite_runtime)
    worker = Keyring(sqlite_runtime.keys, sqlite_runtime.session_factory)  # 30 s refresh
    worker.load()
    renew_data_keys(sqlite_runtime, operator="test")
    row = uuid.uuid4()
    blob = sqlite_runtime.keyring.encrypt(
        "Lefèvre", facility_id=facility_id, table="patients", column="family", row_id=row
    )
    assert worker.decrypt(blob, table="patients", column="family", row_id=row) == "Lefèvre"


def test_a_data_key_whose_transaction_rolls_back_is_never_used(sqlite_runtime: Runtime) -> None:
    facility_id = create_facility(sqlite_runtime)
    keyring = sqlite_runtime.keyring
    before = keyring.active_key_id(facility_id)
    with pytest.raises(RuntimeError), sqlite_runtime.session_factory.begin() as session:
        keyring.create_data_key(session, facility_id)
        raise RuntimeError("the transaction fails after the key was made")
    assert keyring.active_key_id(facility_id) == before
    blob = keyring.encrypt(
        "x", facility_id=facility_id, table="patients", column="family", row_id=uuid.uuid4()
    )
    assert blob is not None and keyring.key_id_of(blob) == before


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        FileKeyProvider(tmp_path)  # a directory where the file should be


def test_a_key_file_that_cannot_be_replaced_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    provider = FileKeyProvider.create(path)
    before = path.read_bytes()
    # A directory squatting on the temporary name makes the write fail, as a full disk would.
    (tmp_path / f".keys.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(ConfigurationError, match="cannot write key file"):
        provider.add_kek()
    assert path.read_bytes() == before and provider.kek_ids == ["kek-1"]


def test_a_value_opens_only_for_its_own_row_and_column_whatever_was_decrypted_just_before(
    sqlite_runtime: Runtime,
) -> None:
    """The keyring keeps the text of the last row id it decrypted for (a record's fields are
    decrypted one after the other) and finds keys by a ciphertext's header bytes: neither may
    let a value open for another row or column."""
    facility_id = create_facility(sqlite_runtime)
    keyring = sqlite_runtime.keyring
    row, other = uuid.uuid4(), uuid.uuid4()
    blob = keyring.encrypt("Lefèvre", facility_id=facility_id, table="patients", column="family", row_id=row)
    mine = keyring.encrypt("Marie", facility_id=facility_id, table="patients", column="given", row_id=other)
    assert keyring.decrypt(blob, table="patients", column="family", row_id=row) == "Lefèvre"
    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, table="patients", column="family", row_id=other)
    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, table="patients", column="given", row_id=row)
    assert keyring.decrypt(mine, table="patients", column="given", row_id=other) == "Marie"
    with pytest.raises(DecryptionError):  # right after `other` was decrypted for
        keyring.decrypt(blob, table="patients", column="family", row_id=other)
    same = uuid.UUID(str(row))  # an equal id, another object
    assert keyring.decrypt(blob, table="patients", column="family", row_id=same) == "Lefèvre"
    unknown = bytes([blob[0]]) + uuid.uuid4().bytes + blob[17:]  # names no data key
    with pytest.raises(DecryptionError, match="data key that does not exist"):
        keyring.decrypt(unknown, table="patients", column="family", row_id=row)


def test_a_row_decrypted_at_once_opens_as_each_field_does_alone(sqlite_runtime: Runtime) -> None:
    """`decrypt_row` answers what `decrypt` answers field by field, and refuses what it refuses:
    a value of another row or column, a value that is no ciphertext, an unknown data key."""
    facility_id = create_facility(sqlite_runtime)
    keyring = sqlite_runtime.keyring
    row, other = uuid.uuid4(), uuid.uuid4()

    def enc(value: str, column: str, row_id: uuid.UUID) -> bytes | None:
        return keyring.encrypt(value, facility_id=facility_id, table="patients", column=column, row_id=row_id)

    family, given = enc("Lefèvre", "family", row), enc("Marie", "given", row)
    assert keyring.decrypt_row("patients", row, [("family", family), ("phone", None), ("given", given)]) == [
        "Lefèvre",
        None,
        "Marie",
    ]
    assert keyring.decrypt_row("patients", row, []) == []
    for blobs in (
        [("family", family), ("given", enc("Marie", "given", other))],  # another row's value
        [("given", family)],  # another column's value
        [("family", family), ("given", b"\x01short")],  # no ciphertext
        [("family", bytes([family[0]]) + uuid.uuid4().bytes + family[17:])],  # names no data key
    ):
        with pytest.raises(DecryptionError):
            keyring.decrypt_row("patients", row, blobs)
        with pytest.raises(DecryptionError):
            for column, blob in blobs:
                keyring.decrypt(blob, table="patients", column=column, row_id=row)
    assert keyring.decrypt(family, table="patients", column="family", row_id=uuid.UUID(str(row))) == "Lefèvre"
