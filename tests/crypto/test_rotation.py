"""Key rotation: KEK rewrap, data-key renewal with re-encryption, crash safety, audit, load."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import threading
import time
import uuid

import pytest
from sqlalchemy import select, update

from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.crypto.keyring import DecryptionError
from carnet.crypto.keys import FileKeyProvider
from carnet.crypto.models import DataKey
from carnet.identity import totp
from carnet.identity.models import Account, TotpDevice
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError, InvalidInput
from carnet.patients.models import Patient
from carnet.phi.encrypted_columns import ENCRYPTED_TABLES, aad_field
from carnet.phi.rekey import (
    count_ciphertexts,
    key_status,
    prune_data_keys,
    reencrypt_all,
    renew_data_keys,
    rotate_keys,
)
from carnet.phi.system import system_access
from carnet.runtime import Runtime, build_runtime
from carnet.synth.seed import seed_hospital
from tests.crypto.helpers import (
    CARNET,
    cli_env,
    create_facility,
    decrypt_patient,
    insert_patients,
    make_patients,
    read_patients,
    run_cli,
)


def _seed(runtime: Runtime, count: int) -> dict[uuid.UUID, dict[str, str | None]]:
    first = create_facility(runtime)
    second = create_facility(runtime, name="Clinique Seconde", finess="750000002")
    patients = make_patients(count // 2, first, seed=1) + make_patients(count - count // 2, second, seed=2)
    insert_patients(runtime, patients)
    expected: dict[uuid.UUID, dict[str, str | None]] = {p.id: dict(p.fields()) for p in patients}
    return expected


def _kinds(runtime: Runtime) -> list[str]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent.kind).order_by(AuditEvent.seq)))


def _key_file(runtime: Runtime) -> dict[str, object]:
    doc: dict[str, object] = json.loads(runtime.settings.resolved_key_file.read_text())
    return doc


def _totp_device(runtime: Runtime, facility_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    secret = totp.new_secret()
    now = dt.datetime.now(dt.UTC)
    with runtime.session_factory.begin() as session:
        account = Account(
            username="dr.rotation",
            display_name="Dr Rotation",
            kind="staff",
            facility_id=facility_id,
            password_hash="x",
            created_at=now,
            password_changed_at=now,
        )
        session.add(account)
        session.flush()
        device_id = uuid.uuid4()
        kek_id, wrapped = totp.wrap_secret(runtime.keys, device_id, secret)
        session.add(
            TotpDevice(
                id=device_id,
                account_id=account.id,
                kek_id=kek_id,
                secret_wrapped=wrapped,
                created_at=now,
                confirmed_at=now,
            )
        )
    return device_id, secret


def test_kek_rotation_rewraps_everything_and_retires_the_old_kek(runtime: Runtime) -> None:
    expected = _seed(runtime, 40)
    with runtime.session_factory() as session:
        facility_id = session.scalars(select(DataKey.facility_id)).first()
    assert facility_id is not None
    device_id, secret = _totp_device(runtime, facility_id)

    report = rotate_keys(runtime, operator="test")

    assert report.previous_kek_ids == ["kek-1"] and report.kek_id == "kek-2"
    assert report.data_keys_rewrapped == 2 and report.secrets_rewrapped == 1
    assert report.retired_kek_ids == ["kek-1"]
    doc = _key_file(runtime)
    assert doc["active_kek"] == "kek-2" and set(doc["keks"]) == {"kek-2"}  # type: ignore[arg-type]
    with runtime.session_factory() as session:
        assert set(session.scalars(select(DataKey.kek_id))) == {"kek-2"}
        device = session.get_one(TotpDevice, device_id)
        assert device.kek_id == "kek-2"
    # A worker started now, with only the new key file, opens everything.
    fresh = build_runtime(runtime.settings)
    try:
        assert read_patients(fresh) == expected
        assert totp.unwrap_secret(fresh.keys, device_id, device.kek_id, device.secret_wrapped) == secret
    finally:
        fresh.close()
    kinds = _kinds(runtime)
    assert AuditKind.KEK_ROTATED.value in kinds and AuditKind.KEK_RETIRED.value in kinds
    assert AuditKind.PHI_SYSTEM_ACCESS.value in kinds


def test_a_crash_after_the_new_kek_is_written_loses_nothing(runtime: Runtime) -> None:
    expected = _seed(runtime, 10)
    keys = runtime.keys
    assert isinstance(keys, FileKeyProvider)
    keys.add_kek()  # the rotation died right after step 1: rows still name kek-1
    restarted = build_runtime(runtime.settings)
    try:
        assert read_patients(restarted) == expected
        report = rotate_keys(restarted, operator="test")  # running it again finishes the job
        assert report.kek_id == "kek-3" and report.retired_kek_ids == ["kek-1", "kek-2"]
        assert read_patients(restarted) == expected
    finally:
        restarted.close()


def test_reencryption_moves_every_value_to_new_data_keys(runtime: Runtime) -> None:
    expected = _seed(runtime, 60)
    with runtime.session_factory() as session:
        old_keys = set(session.scalars(select(DataKey.id)))

    report = rotate_keys(runtime, reencrypt=True, batch_size=7, operator="test")

    assert report.new_data_keys == 2
    assert report.reencrypted == 60 * 7  # seven identifying fields per patient
    assert report.remaining == 0
    counts = count_ciphertexts(runtime, operator="test")
    assert all(counts.get(k, 0) == 0 for k in old_keys)
    status = key_status(runtime, operator="test")
    active = [k for k in status.data_keys if k.active]
    assert len(active) == 2 and all(k.version == 2 for k in active)
    assert sum(k.ciphertexts for k in active) == 60 * 7
    assert status.orphan_ciphertexts == 0
    # Old data keys stay (inactive) so a reader holding an old value can still open it.
    assert {k.id for k in status.data_keys if not k.active} == old_keys
    assert read_patients(runtime) == expected
    fresh = build_runtime(runtime.settings)
    try:
        assert read_patients(fresh) == expected
    finally:
        fresh.close()
    kinds = _kinds(runtime)
    assert kinds.count(AuditKind.DATA_KEY_CREATED.value) == 2
    assert AuditKind.DATA_REENCRYPTED.value in kinds


def test_a_tampered_value_stops_reencryption_instead_of_being_laundered(runtime: Runtime) -> None:
    _seed(runtime, 6)
    with runtime.session_factory.begin() as session:
        victim, other = session.scalars(select(Patient).order_by(Patient.id).limit(2)).all()
        # Swap one patient's family name into another row: the AAD binding must catch it.
        session.execute(update(Patient).where(Patient.id == other.id).values(family_ct=victim.family_ct))
    with pytest.raises(DecryptionError):
        rotate_keys(runtime, reencrypt=True, operator="test")
    with runtime.session_factory() as session:
        moved = session.get_one(Patient, other.id)
        assert moved.family_ct == victim.family_ct  # left as it was, for the investigation


def test_bad_batch_sizes_are_refused_before_anything_changes(sqlite_runtime: Runtime) -> None:
    _seed(sqlite_runtime, 2)
    before = _key_file(sqlite_runtime)
    for size in (0, 100_000):
        with pytest.raises(InvalidInput, match="batch size"):
            rotate_keys(sqlite_runtime, reencrypt=True, batch_size=size)
    for pause in (-1.0, 60.0):
        with pytest.raises(InvalidInput, match="pause"):
            rotate_keys(sqlite_runtime, reencrypt=True, pause=pause)
    assert _key_file(sqlite_runtime) == before


def test_two_rotations_at_once_are_refused(sqlite_runtime: Runtime) -> None:
    keys = sqlite_runtime.keys
    assert isinstance(keys, FileKeyProvider)
    with keys.rotation_lock(), pytest.raises(ConfigurationError, match="another key rotation"):
        rotate_keys(sqlite_runtime)


def test_reads_keep_working_while_keys_rotate_with_reencryption(runtime: Runtime) -> None:
    """Another worker (its own runtime, its own copy of the key file) reads during the CLI run."""
    expected = _seed(runtime, 400)
    ids = list(expected)
    reader = build_runtime(runtime.settings)
    failures: list[str] = []
    reads = 0
    seen_keys: set[uuid.UUID] = set()
    stop = threading.Event()

    def read_loop() -> None:
        nonlocal reads
        rng = random.Random(3)
        while not stop.is_set():
            wanted = rng.sample(ids, 5)
            try:
                with reader.session_factory() as session:
                    rows = session.scalars(select(Patient).where(Patient.id.in_(wanted))).all()
                    for row in rows:
                        if decrypt_patient(reader, row) != expected[row.id]:
                            failures.append("a read returned the wrong content")
                        seen_keys.add(reader.keyring.key_id_of(row.family_ct))
                    if len(rows) != len(wanted):
                        failures.append("a patient went missing")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            reads += 1

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        time.sleep(0.2)
        reads_before = reads
        result = subprocess.run(
            [str(CARNET), "keys", "rotate", "--reencrypt", "--batch-size", "25"],
            env=cli_env(runtime),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        reads_during = reads - reads_before
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert result.returncode == 0, result.stderr
    assert "2800 values re-encrypted" in result.stdout and "0 still under an old data key" in result.stdout
    assert failures == []
    assert reads_during > 0
    with runtime.session_factory() as session:
        new_keys = set(session.scalars(select(DataKey.id).where(DataKey.active.is_(True))))
    # The reader met values under the new data keys, which it had to load on the fly.
    assert seen_keys & new_keys
    assert read_patients(runtime) == expected
    assert set(_key_file(runtime)["keks"]) == {"kek-2"}  # type: ignore[arg-type]


def _every_value(runtime: Runtime) -> dict[tuple[str, str, uuid.UUID], str | None]:
    """Every registered ciphertext of every table, decrypted."""
    out: dict[tuple[str, str, uuid.UUID], str | None] = {}
    with system_access(runtime, reason="test: read every encrypted value") as access:
        for spec in ENCRYPTED_TABLES:
            for row in access.session.execute(spec.select_rows(after=None, limit=1_000_000)):
                row_id, _facility, *blobs = row
                for column, blob in zip(spec.columns, blobs, strict=True):
                    if blob is not None:
                        out[(spec.name, column, row_id)] = runtime.keyring.decrypt(
                            blob, table=spec.name, column=aad_field(column), row_id=row_id
                        )
    return out


def test_reencryption_covers_every_table_the_seed_writes(runtime: Runtime) -> None:
    seed_hospital(runtime, patients=40, seed=9)
    before = _every_value(runtime)
    tables = {table for table, _column, _id in before}
    assert {"patients", "note_versions", "card_readings", "coverages"} <= tables

    report = rotate_keys(runtime, reencrypt=True, batch_size=50, operator="test")

    assert report.reencrypted == len(before) and report.remaining == 0
    assert _every_value(runtime) == before
    fresh = build_runtime(runtime.settings)
    try:
        assert _every_value(fresh) == before
    finally:
        fresh.close()


def test_prune_destroys_only_unused_old_keys_after_the_grace_period(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    expected = _seed(runtime, 20)
    with runtime.session_factory() as session:
        old_keys = set(session.scalars(select(DataKey.id)))
    rotate_keys(runtime, reencrypt=True, operator="test")
    assert prune_data_keys(runtime, operator="test") == []  # replaced just now: workers may lag
    movable_clock.advance(dt.timedelta(hours=2))
    assert set(prune_data_keys(runtime, operator="test")) == old_keys
    with runtime.session_factory() as session:
        assert all(k.active for k in session.scalars(select(DataKey)))
    assert read_patients(runtime) == expected
    fresh = build_runtime(runtime.settings)
    try:
        assert read_patients(fresh) == expected
    finally:
        fresh.close()
    assert _kinds(runtime).count(AuditKind.DATA_KEY_DESTROYED.value) == len(old_keys)


def test_prune_keeps_an_old_key_that_still_encrypts_values(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    expected = _seed(sqlite_runtime, 6)
    renew_data_keys(sqlite_runtime, operator="test")  # new keys, values not re-encrypted
    movable_clock.advance(dt.timedelta(days=2))
    assert prune_data_keys(sqlite_runtime, operator="test") == []
    assert read_patients(sqlite_runtime) == expected
    with pytest.raises(InvalidInput, match="grace period"):
        prune_data_keys(sqlite_runtime, grace=dt.timedelta(seconds=5))


def test_prune_from_the_command_line(sqlite_runtime: Runtime) -> None:
    _seed(sqlite_runtime, 4)
    rotate_keys(sqlite_runtime, reencrypt=True, operator="test")
    result = run_cli(["keys", "prune"], cli_env(sqlite_runtime))
    assert result.returncode == 0, result.stderr
    assert "0 unused data keys destroyed" in result.stdout  # replaced under an hour ago
    bad = run_cli(["keys", "prune", "--grace-minutes", "1"], cli_env(sqlite_runtime))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_writes_during_reencryption_are_never_overwritten(runtime: Runtime) -> None:
    """A worker keeps changing phones (under its stale data key) while values are re-encrypted."""
    expected = _seed(runtime, 200)
    ids = list(expected)
    writer = build_runtime(runtime.settings)  # another worker: refreshes its active key every 30 s
    last_written: dict[uuid.UUID, str] = {}
    failures: list[str] = []
    stop = threading.Event()

    def write_loop() -> None:
        rng = random.Random(5)
        n = 0
        while not stop.is_set():
            pid = rng.choice(ids)
            n += 1
            phone = f"07 00 00 {n // 100 % 100:02d} {n % 100:02d}"
            try:
                with writer.session_factory.begin() as session:
                    patient = session.get_one(Patient, pid)
                    patient.phone_ct = writer.keyring.encrypt(
                        phone, facility_id=patient.facility_id, table="patients", column="phone", row_id=pid
                    )
                last_written[pid] = phone
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=write_loop)
    thread.start()
    try:
        rotate_keys(runtime, reencrypt=True, batch_size=20, operator="test")
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert failures == []
    assert last_written, "the writer wrote during the rotation"
    # Values the worker wrote under its old key after the last pass: a second run moves them.
    _done, remaining = reencrypt_all(runtime, operator="test")
    assert remaining == 0
    after = read_patients(runtime)
    for pid, fields in expected.items():
        want = dict(fields, phone=last_written.get(pid, fields["phone"]))
        assert after[pid] == want


def test_a_write_between_a_batch_read_and_its_write_is_kept(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: another worker commits a new phone right after the batch has read the row."""
    expected = _seed(runtime, 10)
    target = sorted(expected)[3]
    other = build_runtime(runtime.settings)
    written = threading.Event()
    threads: list[threading.Thread] = []
    real_reencrypt = runtime.keyring.reencrypt

    def write_new_phone() -> None:
        with other.session_factory.begin() as session:
            patient = session.get_one(Patient, target)
            patient.phone_ct = other.keyring.encrypt(
                "07 99 88 77 66",
                facility_id=patient.facility_id,
                table="patients",
                column="phone",
                row_id=target,
            )
        written.set()

    def racing_reencrypt(
        blob: bytes | None, *, facility_id: uuid.UUID, table: str, column: str, row_id: uuid.UUID
    ) -> bytes | None:
        if row_id == target and column == "phone" and not threads:
            threads.append(threading.Thread(target=write_new_phone))
            threads[0].start()
            # PostgreSQL lets it commit now; SQLite makes it wait for the batch's commit.
            written.wait(timeout=2)
        return real_reencrypt(blob, facility_id=facility_id, table=table, column=column, row_id=row_id)

    monkeypatch.setattr(runtime.keyring, "reencrypt", racing_reencrypt)
    try:
        rotate_keys(runtime, reencrypt=True, operator="test")
        threads[0].join(timeout=30)
    finally:
        other.close()
    assert written.is_set()
    _done, remaining = reencrypt_all(runtime, operator="test")
    assert remaining == 0
    after = read_patients(runtime)
    assert after[target] == dict(expected[target], phone="07 99 88 77 66")
    assert {k: v for k, v in after.items() if k != target} == {
        k: v for k, v in expected.items() if k != target
    }
