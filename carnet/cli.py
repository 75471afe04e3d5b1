"""The `carnet` command. Bad input gets a clear message and exit status 2, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from carnet.audit.commands import audit_app
from carnet.detection.commands import incident_app
from carnet.identity.commands import clients_app, reenrol, sessions_app
from carnet.interfaces.commands import interfaces_app
from carnet.kernel.errors import CarnetError
from carnet.operations.commands import backup_app
from carnet.phi.commands import exports_app
from carnet.redteam.commands import redteam_app

app = typer.Typer(
    name="carnet",
    help="carnet: an electronic patient record that a stolen password cannot empty.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys: create, status, rotate.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(incident_app, name="incident")
app.add_typer(redteam_app, name="redteam")
app.add_typer(clients_app, name="clients")
app.add_typer(sessions_app, name="sessions")
app.add_typer(exports_app, name="exports")
app.add_typer(interfaces_app, name="interfaces")
app.add_typer(backup_app, name="backup")
fhir_app = typer.Typer(help="The FHIR R4 API: what it declares.", no_args_is_help=True)
app.add_typer(fhir_app, name="fhir")

err = Console(stderr=True, soft_wrap=True)  # whole lines: messages are read by scripts too


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema to the current version."""
    from carnet.db import migrate
    from carnet.db.engine import make_engine
    from carnet.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
    except Exception as exc:  # the driver's message can hold the URL's password: name the kind only
        raise fail(f"cannot upgrade the database ({type(exc).__name__}): is it reachable?") from None
    finally:
        engine.dispose()
    Console().print(f"schema at revision {migrate.head_revision()}")


@keys_app.command("init")
def keys_init() -> None:
    """Create a new key file (CARNET_KEY_FILE) for a new installation; never overwrites one."""
    from carnet.crypto.keys import FileKeyProvider
    from carnet.settings import get_settings

    path = get_settings().resolved_key_file
    FileKeyProvider.create(path)
    Console().print(f"key file written to {path} (mode 0600); keep a copy outside this machine")


@keys_app.command("status")
def keys_status() -> None:
    """Key-encryption keys, data keys per facility and how many values each one encrypts."""
    from rich.table import Table

    from carnet.phi.rekey import key_status
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    runtime = build_runtime(get_settings())
    try:
        status = key_status(runtime, operator="cli:keys-status")
    finally:
        runtime.close()
    out = Console()
    out.print(f"active key-encryption key: {status.active_kek_id}")
    out.print(f"key-encryption keys held: {', '.join(status.kek_ids)}")
    if status.key_file is not None and status.key_file_mode is not None:
        out.print(f"key file: {status.key_file} (mode {status.key_file_mode:04o})")
    if status.key_file_too_open:
        err.print(
            f"[bold yellow]warning:[/] the key file is readable by others (mode {status.key_file_mode:04o});"
            f" run: chmod 600 {status.key_file}",
            highlight=False,
        )
    table = Table("facility", "data key", "version", "wrapped by", "active", "created", "values")
    for key in status.data_keys:
        table.add_row(
            key.facility_name,
            str(key.id),
            str(key.version),
            key.kek_id,
            "yes" if key.active else "no",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            str(key.ciphertexts),
        )
    out.print(table)
    for kek, count in sorted(status.wrapped_secrets.items()):
        out.print(f"second-factor secrets wrapped by {kek}: {count}")
    if status.orphan_ciphertexts:
        err.print(f"[bold red]{status.orphan_ciphertexts} values name a data key that does not exist[/]")
        raise typer.Exit(1)


@keys_app.command("rotate")
def keys_rotate(
    reencrypt: Annotated[
        bool,
        typer.Option(
            "--reencrypt", help="Also give each facility a new data key and re-encrypt every value."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=2000, help="Rows per transaction while re-encrypting.")
    ] = 200,
    pause_ms: Annotated[
        int, typer.Option(min=0, max=10_000, help="Pause between batches, to leave room for the service.")
    ] = 0,
) -> None:
    """New key-encryption key, data keys rewrapped; the old key leaves the key file only at the end.

    Safe while carnet serves: readers keep opening values under old and new keys alike.
    """
    from carnet.phi.rekey import rotate_keys
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    runtime = build_runtime(get_settings())
    try:
        report = rotate_keys(
            runtime,
            reencrypt=reencrypt,
            batch_size=batch_size,
            pause=pause_ms / 1000,
            operator="cli:keys-rotate",
        )
    finally:
        runtime.close()
    out = Console()
    out.print(
        f"key-encryption key {report.kek_id} is active; {report.data_keys_rewrapped} data keys and "
        f"{report.secrets_rewrapped} second-factor secrets rewrapped"
    )
    if report.retired_kek_ids:
        out.print(f"retired from the key file: {', '.join(report.retired_kek_ids)}")
    if reencrypt:
        out.print(
            f"{report.new_data_keys} new data keys; {report.reencrypted} values re-encrypted; "
            f"{report.remaining} still under an old data key"
        )
    out.print("back up the key file now: the retired keys are gone from it")
    if report.remaining:
        err.print(
            "[bold yellow]warning:[/] some values are still under an old data key; run the rotation again"
        )
        raise typer.Exit(1)


@keys_app.command("reindex-names")
def keys_reindex_names(
    batch_size: Annotated[int, typer.Option(min=1, max=5000, help="Patients per transaction.")] = 500,
) -> None:
    """Write the keyed name prefixes of patients registered before they existed (name search
    finds a patient through them). Safe while carnet serves; audited through the system door."""
    from carnet.phi.name_index import reindex_names
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    runtime = build_runtime(get_settings())
    try:
        done = reindex_names(runtime, batch_size=batch_size, operator="cli:keys-reindex-names")
    finally:
        runtime.close()
    Console().print(f"{done} patients indexed by name")


@keys_app.command("prune")
def keys_prune(
    grace_minutes: Annotated[
        int,
        typer.Option(min=2, max=525_600, help="Only keys replaced at least this long ago (workers refresh)."),
    ] = 60,
) -> None:
    """Destroy old data keys that no stored value uses any more (after `keys rotate --reencrypt`)."""
    import datetime as dt

    from carnet.phi.rekey import prune_data_keys
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    runtime = build_runtime(get_settings())
    try:
        destroyed = prune_data_keys(
            runtime, grace=dt.timedelta(minutes=grace_minutes), operator="cli:keys-prune"
        )
    finally:
        runtime.close()
    Console().print(f"{len(destroyed)} unused data keys destroyed")


def origin_for_port(configured: str, port: int | None, *, explicit: bool) -> str | None:
    """The origin to serve at when `--port` moves a plain-http loopback origin left at its
    default; None when nothing changes (no port, the same port, an origin set on purpose)."""
    if port is None or explicit:
        return None
    parts = urlsplit(configured)
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1") or parts.port == port:
        return None
    return f"http://{parts.hostname}:{port}"


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (loopback by default).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    balanced: Annotated[
        bool,
        typer.Option(
            "--balanced/--shared-socket",
            help="With several workers: a listening socket per worker (SO_REUSEPORT, Linux), so "
            "new connections are spread evenly; --shared-socket: uvicorn's one socket for all.",
        ),
    ] = True,
) -> None:
    """Serve the web UI, the patient portal and the FHIR API."""
    import uvicorn

    from carnet.db.server_checks import server_warnings
    from carnet.operations import logs as operations_logs
    from carnet.operations import serving
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings, reset_settings_cache

    settings = get_settings()
    moved = origin_for_port(settings.origin, port, explicit="CARNET_ORIGIN" in os.environ)
    if moved is not None:
        # Our own pages post from where they are served: `--port 9000` on loopback with the
        # default origin (port 8000) would refuse every sign-in as cross-site.
        os.environ["CARNET_ORIGIN"] = moved
        reset_settings_cache()
        settings = get_settings()
    runtime = build_runtime(settings)  # fail now, with a clear message, on a bad schema or key
    try:
        for warning in server_warnings(runtime.engine):
            err.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    finally:
        runtime.close()
    options: dict[str, Any] = dict(
        factory=True,
        proxy_headers=False,
        server_header=False,
        access_log=False,  # carnet.access logs route templates instead (carnet.operations.observe)
        log_level="info",
        # JSON lines for the log pipeline (no patient data: see carnet.operations.logs)
        log_config=operations_logs.config()
        if settings.log_format == "json"
        else uvicorn.config.LOGGING_CONFIG,
        # SIGTERM: stop accepting, let in-flight requests finish (their transactions commit or
        # roll back whole), then sign the audit tail; a load balancer drains first via /readyz.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    bind_host, bind_port = host or settings.host, port or settings.port
    if workers > 1 and balanced and serving.balanced_available():
        try:
            status = serving.serve_balanced(
                "carnet.app:create_app", host=bind_host, port=bind_port, workers=workers, **options
            )
        except OSError as exc:
            raise fail(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}") from None
        raise typer.Exit(status)
    uvicorn.run("carnet.app:create_app", host=bind_host, port=bind_port, workers=workers, **options)


from carnet.synth import commands as synth_commands  # noqa: E402 (after `serve`, which demo calls)

app.command("seed")(synth_commands.seed)
app.command("demo")(synth_commands.demo)

users_app = typer.Typer(
    help="Accounts: list them (no secrets shown); re-enrol an owner in person.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
users_app.command("re-enrol")(reenrol)


@users_app.command("list")
def users_list(
    patients: Annotated[bool, typer.Option("--patients", help="Also list patient portal accounts.")] = False,
) -> None:
    """List accounts: username, active roles, facility, status. Never passwords or second factors."""
    import getpass

    from rich.table import Table
    from sqlalchemy import select

    from carnet.access.actor import Actor, ActorKind, PurposeOfUse
    from carnet.access.models import RoleGrant
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.identity.models import Account
    from carnet.org.models import Facility
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    runtime = build_runtime(get_settings())
    try:
        with runtime.session_factory.begin() as session:
            query = (
                select(Account.id, Account.username, Account.kind, Account.status, Facility.name)
                .outerjoin(Facility, Facility.id == Account.facility_id)
                .order_by(Facility.name, Account.username)
            )
            if not patients:
                query = query.where(Account.kind == "staff")
            accounts = session.execute(query).all()
            roles: dict[object, list[str]] = {}
            for account_id, role in session.execute(
                select(RoleGrant.account_id, RoleGrant.role).where(RoleGrant.status == "active")
            ):
                roles.setdefault(account_id, []).append(role)
            # Who can sign in is what an attacker maps first: the listing itself is audited.
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.ACCOUNTS_LISTED,
                    outcome=Outcome.SUCCESS,
                    actor=Actor(
                        kind=ActorKind.SYSTEM,
                        username=f"system:cli:{getpass.getuser()}",
                        roles=frozenset(),
                        purpose_of_use=PurposeOfUse.OPERATIONS,
                    ),
                    resource_type="Account",
                    detail={"count": str(len(accounts)), "patients": str(patients).lower()},
                ),
            )
    finally:
        runtime.close()
    table = Table("username", "roles", "facility", "status", title=f"{len(accounts)} accounts")
    for account_id, username, _kind, status, facility in accounts:
        table.add_row(username, ", ".join(sorted(roles.get(account_id, []))) or "-", facility or "-", status)
    Console().print(table)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="FHIR Bundle JSON files and Bulk Data NDJSON files.")],
    facility: Annotated[
        str | None, typer.Option(help="Facility id to import into (default: the only facility).")
    ] = None,
    operator: Annotated[
        str, typer.Option(help="Name of the system actor in the audit trail (who runs this import).")
    ] = "import",
) -> None:
    """Import records from another system through the audited system door. A transaction
    Bundle is all or nothing; every rejected resource is listed with its OperationOutcome."""
    import re

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from carnet.phi.importer import import_files, resolve_facility, total_resources
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise fail(f"no such file: {', '.join(missing)}")
    if not re.fullmatch(r"[A-Za-z0-9._-]{2,60}", operator):
        raise fail("--operator is 2 to 60 letters, digits, '.', '_' or '-'")
    runtime = build_runtime(get_settings())
    try:
        facility_id = resolve_facility(runtime, facility)
        total = total_resources(paths)
        columns = (TextColumn("import"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task("import", total=total)
            report = import_files(
                runtime,
                paths=paths,
                facility_id=facility_id,
                operator=operator,
                progress=lambda n: bar.advance(task, n),
            )
    finally:
        runtime.close()
    out = Console()
    accepted = ", ".join(f"{n} {t}" for t, n in sorted(report.accepted.items())) or "nothing"
    out.print(f"imported: {accepted}", highlight=False)
    for rejection in report.rejected:
        issue = rejection.outcome["issue"][0]
        line = f"rejected {rejection.source} ({rejection.resource_type}): {issue['diagnostics']}"
        out.print(line, highlight=False, markup=False)
    for where in report.dangling:
        # Kept as written: the resource it names was refused (listed above).
        out.print(f"reference to a rejected resource: {where}", highlight=False, markup=False)
    if report.rejected:
        raise typer.Exit(1)


@fhir_app.command("conformance-table")
def conformance_table(
    write: Annotated[
        Path | None,
        typer.Option(help="Replace the table between its markers in this Markdown file (docs/FHIR.md)."),
    ] = None,
) -> None:
    """The interaction x resource table of the CapabilityStatement (GET /fhir/metadata), in Markdown."""
    from carnet.fhir import metadata

    table = metadata.conformance_table()
    if write is None:
        typer.echo(table)
        return
    try:
        document = write.read_text(encoding="utf-8")
        write.write_text(metadata.with_table(document, table), encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot update {write}: {exc.strerror}") from None
    except ValueError:
        raise fail(f"{write} has no conformance table markers ({metadata.TABLE_START})") from None
    typer.echo(f"updated the conformance table in {write}")


def main() -> None:
    try:
        app()
    except CarnetError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
