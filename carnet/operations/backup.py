"""Backups with PostgreSQL's own tools: a base backup (pg_basebackup) plus the WAL archive,
restorable to a point in time; and the key material, kept apart.

The database holds patient data encrypted under data keys that the key file's KEKs wrap: a
backup of the database alone is ciphertext. So the key file and the audit signing keys go to a
different place (another host, a safe), and `carnet backup base` refuses a destination that
would put them together.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from carnet.audit.checkpoints import public_path, read_head
from carnet.kernel.errors import ConfigurationError
from carnet.settings import Settings

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MANIFEST = "carnet-backup.json"


@dataclass(frozen=True)
class BaseBackup:
    path: Path
    started_at: dt.datetime
    audit_head_seq: int


def libpq_conninfo(url: str) -> str:
    """A libpq connection string from carnet's SQLAlchemy URL (single host: a backup is taken
    from one server, the leader or a standby)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError("backups with pg_basebackup need PostgreSQL (SQLite: copy the file)")
    parts = [f"host={parsed.host or '127.0.0.1'}", f"port={parsed.port or 5432}"]
    if parsed.username:
        parts.append(f"user={parsed.username}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    return " ".join(parts)


def _apart(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return not (a == b or a in b.parents or b in a.parents)


def base_backup(
    engine: Engine, url: str, destination: Path, *, keys_elsewhere: Path | None = None
) -> BaseBackup:
    """pg_basebackup (plain format, WAL streamed in so the copy is consistent on its own) into
    `destination/base`, and a manifest with the audit chain head at the start."""
    if keys_elsewhere is not None and not _apart(destination, keys_elsewhere):
        raise ConfigurationError("the database backup and the key backup must not share a directory")
    if (destination / "base").exists():
        raise ConfigurationError(f"{destination / 'base'} exists: a backup is never written over another")
    destination.mkdir(parents=True, exist_ok=True)
    head = read_head(engine)
    started = dt.datetime.now(dt.UTC)
    subprocess.run(  # noqa: S603 (fixed argument list, no shell)
        [
            str(PG_BIN / "pg_basebackup"), "-d", libpq_conninfo(url), "-D", str(destination / "base"),
            "-Fp", "-X", "stream", "-c", "fast", "--no-password", "-l", f"carnet {started.isoformat()}",
        ],
        check=True, capture_output=True, timeout=3600,
    )  # fmt: skip
    (destination / MANIFEST).write_text(
        json.dumps(
            {
                "format": "carnet-backup/1",
                "started_at": started.isoformat(),
                "audit_head_seq": head[0] if head else 0,
                "audit_head_hash": head[1] if head else None,
                "contains_keys": False,
            },
            indent=1,
        )
    )
    return BaseBackup(path=destination, started_at=started, audit_head_seq=head[0] if head else 0)


def save_keys(settings: Settings, destination: Path, *, data_backup: Path | None = None) -> list[Path]:
    """Copy the key file and the audit signing keys (private and public) to `destination`, mode
    0600, apart from the data backup."""
    if data_backup is not None and not _apart(destination, data_backup):
        raise ConfigurationError("the key backup must not sit with the database backup")
    destination.mkdir(parents=True, exist_ok=True)
    destination.chmod(0o700)
    signing = settings.resolved_signing_key_file
    copied = []
    for source in (settings.resolved_key_file, signing, public_path(signing)):
        if source.exists():
            target = destination / source.name
            shutil.copy2(source, target)
            target.chmod(0o600)
            copied.append(target)
    if settings.resolved_key_file.name not in {p.name for p in copied}:
        raise ConfigurationError(f"no key file at {settings.resolved_key_file}")
    return copied


def prepare_restore(
    backup: Path, wal_archive: Path, data_dir: Path, *, until: dt.datetime | None, port: int
) -> None:
    """Lay a base backup out as a data directory that replays the WAL archive up to `until`
    (the latest WAL when None), then promotes. Start it with pg_ctl as the postgres user."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigurationError(f"{data_dir} is not empty: restore into a new directory")
    shutil.copytree(backup / "base", data_dir, dirs_exist_ok=True)
    settings = [
        f"restore_command = 'cp {wal_archive}/%f %p'",
        "archive_mode = off",  # the restored server must not write into the archive it reads
        f"port = {port}",
    ]
    if until is not None:
        settings += [f"recovery_target_time = '{until.isoformat()}'", "recovery_target_action = 'promote'"]
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n# carnet backup restore\n" + "\n".join(settings) + "\n")
    (data_dir / "recovery.signal").touch()
    for path in [data_dir, *data_dir.rglob("*")]:
        shutil.chown(path, "postgres", "postgres")
    data_dir.chmod(0o700)
