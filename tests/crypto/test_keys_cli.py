"""`carnet keys status|rotate` and a lost or wrong key file, through the real command."""

from __future__ import annotations

import os

from sqlalchemy import select

from carnet.audit.models import AuditEvent
from carnet.crypto.keys import FileKeyProvider
from carnet.runtime import Runtime
from tests.crypto.helpers import cli_env, create_facility, insert_patients, make_patients, run_cli


def _seeded(runtime: Runtime, count: int = 12) -> list[str]:
    facility_id = create_facility(runtime)
    patients = make_patients(count, facility_id, seed=5)
    insert_patients(runtime, patients)
    return [v for p in patients for v in (p.family, p.phone, p.email, p.ins)]


def _assert_no_patient_data(text: str, secrets: list[str]) -> None:
    assert [s for s in secrets if s in text] == []


def test_status_lists_keys_and_counts_values_per_data_key(runtime: Runtime) -> None:
    secrets = _seeded(runtime)
    result = run_cli(["keys", "status"], cli_env(runtime))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "active key-encryption key: kek-1" in out
    assert "mode 0600" in out and "warning" not in result.stderr
    assert "Hôpital Saint-Exemple" in out
    assert " 84 " in out  # 12 patients x 7 encrypted fields, all under version 1
    _assert_no_patient_data(out + result.stderr, secrets)
    assert "Traceback" not in result.stderr
    with runtime.session_factory() as session:
        reasons = list(
            session.scalars(select(AuditEvent.detail).where(AuditEvent.username == "system:cli:keys-status"))
        )
    assert any("key status" in r for r in reasons), "reading the patient tables is audited"


def test_status_warns_when_the_key_file_is_readable_by_others(sqlite_runtime: Runtime) -> None:
    _seeded(sqlite_runtime, 2)
    os.chmod(sqlite_runtime.settings.resolved_key_file, 0o644)
    result = run_cli(["keys", "status"], cli_env(sqlite_runtime))
    assert result.returncode == 0, result.stderr
    assert "readable by others (mode 0644)" in result.stderr and "chmod 600" in result.stderr


def test_rotate_from_the_command_line(sqlite_runtime: Runtime) -> None:
    secrets = _seeded(sqlite_runtime, 4)
    result = run_cli(["keys", "rotate"], cli_env(sqlite_runtime))
    assert result.returncode == 0, result.stderr
    assert "kek-2 is active; 1 data keys" in result.stdout
    assert "retired from the key file: kek-1" in result.stdout
    again = run_cli(["keys", "rotate", "--reencrypt", "--pause-ms", "5"], cli_env(sqlite_runtime))
    assert again.returncode == 0, again.stderr
    assert "28 values re-encrypted; 0 still under an old data key" in again.stdout
    _assert_no_patient_data(result.stdout + result.stderr, secrets)
    after = run_cli(["keys", "status"], cli_env(sqlite_runtime))
    assert "key-encryption keys held: kek-3" in after.stdout


def test_a_bad_batch_size_is_a_usage_error(sqlite_runtime: Runtime) -> None:
    before = sqlite_runtime.settings.resolved_key_file.read_bytes()
    result = run_cli(["keys", "rotate", "--reencrypt", "--batch-size", "0"], cli_env(sqlite_runtime))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sqlite_runtime.settings.resolved_key_file.read_bytes() == before


def test_a_lost_key_file_stops_status_rotate_and_serve_with_a_clear_message(sqlite_runtime: Runtime) -> None:
    _seeded(sqlite_runtime, 2)
    missing = sqlite_runtime.settings.var_dir / "lost-keys.json"
    env = cli_env(sqlite_runtime, CARNET_KEY_FILE=str(missing))
    for args in (["keys", "status"], ["keys", "rotate"], ["serve", "--port", "18999"]):
        result = run_cli(args, env, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert "key file" in result.stderr and "not found" in result.stderr
        assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_a_wrong_key_file_stops_status_and_serve_with_a_clear_message(runtime: Runtime) -> None:
    _seeded(runtime, 2)
    other = runtime.settings.var_dir / "other-keys.json"
    FileKeyProvider.create(other)
    env = cli_env(runtime, CARNET_KEY_FILE=str(other))
    for args in (["keys", "status"], ["serve", "--port", "18998"]):
        result = run_cli(args, env, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert "wrong key file" in result.stderr or "wrong or damaged key file" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_damaged_key_file_is_a_clear_error(sqlite_runtime: Runtime) -> None:
    damaged = sqlite_runtime.settings.var_dir / "damaged.json"
    damaged.write_text('{"format": "carnet-keys/1", "keks": {}}')
    result = run_cli(["keys", "status"], cli_env(sqlite_runtime, CARNET_KEY_FILE=str(damaged)))
    assert result.returncode == 2 and "not a carnet key file" in result.stderr
    assert "Traceback" not in result.stderr


def test_reindex_names_from_the_command_line_is_audited_and_prints_no_patient_data(
    sqlite_runtime: Runtime,
) -> None:
    secrets = _seeded(sqlite_runtime, 5)  # written without name keys, as before the migration
    result = run_cli(["keys", "reindex-names", "--batch-size", "2"], cli_env(sqlite_runtime))
    assert result.returncode == 0, result.stderr
    assert "5 patients indexed by name" in result.stdout
    _assert_no_patient_data(result.stdout + result.stderr, secrets)
    again = run_cli(["keys", "reindex-names"], cli_env(sqlite_runtime))
    assert "0 patients indexed by name" in again.stdout
    with sqlite_runtime.session_factory() as session:
        reasons = list(
            session.scalars(
                select(AuditEvent.detail).where(AuditEvent.username == "system:cli:keys-reindex-names")
            )
        )
    assert any("index patient name prefixes" in r for r in reasons)
