"""Backup and restore drill (issue 19): base backup + WAL archive on a PostgreSQL of the test's
own (archive_mode on), key material saved apart, more writes, a restore to a point in time.
The restored chain verifies; the signed checkpoints outside the database name exactly the
events the restore lost; the keys saved apart open the restored data; detection state is back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.cli import app
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.operations.backup import MANIFEST, PG_BIN
from carnet.phi.gate import Gate
from carnet.runtime import build_runtime
from carnet.settings import Settings, reset_settings_cache
from tests.audit.helpers import append_events
from tests.factories import link_care, make_facility, make_physician, register_patient
from tests.ops.helpers import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def as_postgres(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, user="postgres", timeout=120)


class LocalPostgres:
    def __init__(self, base: Path, name: str) -> None:
        self.data = base / name
        self.port = free_port()
        self.base = base

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self, archive: Path) -> None:
        as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                f"wal_level = replica\narchive_mode = on\n"
                f"archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n"
            )
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.base / f"{self.data.name}.log"),
            "-w",
            "-t",
            "120",
            "start",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True, user="postgres", timeout=60, check=False,
            )  # fmt: skip


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="carnet-pitr-"))
    shutil.chown(base, "postgres", "postgres")
    yield base  # the test stops its servers
    shutil.rmtree(base, ignore_errors=True)


def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("CARNET_ENV", "test")
    monkeypatch.setenv("CARNET_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("CARNET_DATABASE_URL", settings.resolved_database_url)
    if settings.key_file:
        monkeypatch.setenv("CARNET_KEY_FILE", str(settings.key_file))
    monkeypatch.delenv("CARNET_NATS_URL", raising=False)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        reset_settings_cache()
    return result.exit_code, result.output


def test_restore_to_a_point_in_time_verifies_and_names_what_it_lost(
    workdir: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = workdir / "wal-archive"
    archive.mkdir()
    shutil.chown(archive, "postgres", "postgres")
    primary = LocalPostgres(workdir, "primary")
    restored = LocalPostgres(workdir, "restored")
    try:
        primary.init(archive)
        primary.start()
        admin = make_engine(primary.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE carnet"))
        admin.dispose()
        engine = make_engine(primary.url("carnet"))
        migrate.upgrade(engine)
        engine.dispose()
        settings = settings.model_copy(update={"database_url": primary.url("carnet")})
        runtime = build_runtime(settings)
        facility = make_facility(runtime)
        doctor = make_physician(runtime, facility)
        assert doctor.practitioner_id is not None
        patient = register_patient(runtime, facility, family="Restauré", given="Aimée")
        link_care(
            runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility
        )
        Gate(runtime, doctor).read_patient(
            patient_id=str(patient.id)
        )  # an exposure: detection state to come back
        assert runtime.checkpointer is not None
        runtime.checkpointer.checkpoint()

        data_backup, key_backup = workdir / "backups" / "db-1", workdir / "keys-safe"
        code, out = cli(
            settings,
            monkeypatch,
            "backup",
            "base",
            "--to",
            str(data_backup),
            "--keys-to",
            str(data_backup / "keys"),
        )
        assert code == 2 and "must not" in out  # keys never beside the data
        code, out = cli(
            settings, monkeypatch, "backup", "base", "--to", str(data_backup), "--keys-to", str(key_backup)
        )
        assert code == 0, out
        assert (data_backup / MANIFEST).exists() and (key_backup / "keys.json").exists()
        assert not list(data_backup.rglob("keys.json")) and not list(data_backup.rglob("*.pem"))
        assert oct((key_backup / "keys.json").stat().st_mode & 0o777) == "0o600"

        kept = append_events(runtime, 10)
        runtime.checkpointer.checkpoint()
        with runtime.engine.connect() as conn:
            target = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        time.sleep(1.0)  # the restore point falls between the two bursts
        lost = append_events(runtime, 7)
        runtime.checkpointer.checkpoint()  # signed, outside the database: it will name the loss
        with runtime.engine.connect() as conn:
            segment = conn.execute(sa.text("SELECT pg_walfile_name(pg_switch_wal())")).scalar_one()
        deadline = time.monotonic() + 60
        while not (archive / segment).exists():  # the WAL holding the restore point is archived
            assert time.monotonic() < deadline, "the archiver never copied the switched segment"
            time.sleep(0.2)
        runtime.close()
        runtime.engine.dispose()
        primary.stop()  # the primary is lost

        code, out = cli(
            settings, monkeypatch, "backup", "restore", "--from", str(data_backup),
            "--wal-archive", str(archive), "--into", str(restored.data), "--port", str(restored.port),
            "--until", target.isoformat(),
        )  # fmt: skip
        assert code == 0, out
        restored.start()
        check = make_engine(restored.url("carnet"))
        deadline = time.monotonic() + 60
        while True:
            with check.connect() as conn:
                if conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is False:
                    break
            assert time.monotonic() < deadline, "the restored server never promoted"
            time.sleep(0.5)
        with check.connect() as conn:
            head = conn.execute(sa.text("SELECT max(seq) FROM audit_chain_head")).scalar_one()
            exposures = conn.execute(sa.text("SELECT count(*) FROM exposures")).scalar_one()
        check.dispose()
        assert head == kept[-1]  # up to the moment asked, not one event more
        assert exposures >= 1  # detection's ledger came back with the data

        after = settings.model_copy(
            update={"database_url": restored.url("carnet"), "key_file": key_backup / "keys.json"}
        )
        code, out = cli(after, monkeypatch, "audit", "verify")
        assert code == 1 and "[truncated]" in out  # plain verify: events are missing
        code, out = cli(after, monkeypatch, "audit", "verify", "--restored")
        assert code == 0, out
        # One transaction's events: one lane, lost after the last event the restore kept in it.
        assert (
            f"RESTORE LOST events {lost[0]}..{lost[-1]} (lane 1 after seq {kept[-1]} through {lost[-1]})"
            in out
        ), out
        # The keys saved apart open the restored data (a wrong key file would stop carnet).
        reopened = build_runtime(after)
        try:
            assert Gate(reopened, doctor).read_patient(patient_id=str(patient.id)).family == "Restauré"
        finally:
            reopened.close()
            reopened.engine.dispose()
    finally:
        restored.stop()
        primary.stop()
