"""`carnet backup ...`: base backups, key backups (kept apart), restore to a point in time.

Exit status: 0 done, 2 on bad input or setup (nothing changed)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from carnet.kernel.errors import ConfigurationError

backup_app = typer.Typer(help="Backups: database (pg_basebackup + WAL archive) and keys, kept apart.")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@backup_app.command("base")
def base(
    to: Annotated[Path, typer.Option(help="Directory for this base backup (new).")],
    keys_to: Annotated[
        Path | None, typer.Option(help="Also save the key material here (must be elsewhere).")
    ] = None,
) -> None:
    """Take a base backup of the database (and, with --keys-to, the keys, apart)."""
    from carnet.db.engine import make_engine
    from carnet.operations.backup import base_backup, save_keys
    from carnet.settings import get_settings

    settings = get_settings()
    url = settings.resolved_database_url
    try:
        engine = make_engine(url)
        try:
            done = base_backup(engine, url, to, keys_elsewhere=keys_to)
        finally:
            engine.dispose()
        if keys_to is not None:
            save_keys(settings, keys_to, data_backup=to)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    except subprocess.CalledProcessError as exc:
        raise _fail(f"pg_basebackup failed (exit {exc.returncode})") from None
    typer.echo(f"base backup in {done.path} (audit head seq {done.audit_head_seq}); no key material in it")
    if keys_to is not None:
        typer.echo(f"keys saved to {keys_to} (mode 0600): store them apart from the data")


@backup_app.command("keys")
def keys(to: Annotated[Path, typer.Option(help="Directory for the key material (apart from data).")]) -> None:
    """Save the key file and the audit signing keys."""
    from carnet.operations.backup import save_keys
    from carnet.settings import get_settings

    try:
        copied = save_keys(get_settings(), to)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{len(copied)} key files saved to {to} (mode 0600)")


@backup_app.command("restore")
def restore(
    backup: Annotated[Path, typer.Option("--from", help="A base backup directory.")],
    wal_archive: Annotated[Path, typer.Option(help="The WAL archive (archive_command's target).")],
    into: Annotated[Path, typer.Option(help="A new, empty data directory.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the restored server.")] = 5433,
    until: Annotated[
        str | None, typer.Option(help="Recover up to this ISO 8601 moment (UTC if no offset).")
    ] = None,
) -> None:
    """Lay out a restore to a point in time; then start it with pg_ctl and run
    `carnet audit verify --restored` to see which audit events the restore lost."""
    from carnet.operations.backup import prepare_restore

    moment = None
    if until is not None:
        try:
            moment = dt.datetime.fromisoformat(until)
        except ValueError:
            raise _fail("--until is not an ISO 8601 moment") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    if not (backup / "base").is_dir():
        raise _fail(f"{backup} holds no base backup")
    try:
        prepare_restore(backup, wal_archive.resolve(), into, until=moment, port=port)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"restore laid out in {into}; start it: runuser -u postgres -- pg_ctl -D {into} -w start")
