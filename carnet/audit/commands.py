"""`carnet audit ...`: signing key, checkpoints, verification, SIEM export, retention purge.

Exit status: 0 when all is well, 1 when verify finds tampering, 2 on bad input or setup.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

audit_app = typer.Typer(
    help="Tamper-evident audit trail: checkpoints, verify, export, purge.", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)  # whole lines: messages are read by scripts too


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print("[bold red]error:[/] ", end="")
    _err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """carnet's own errors are safe to show; anything from the driver is named by kind only."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(
            f"cannot read the audit trail ({type(exc).__name__}): is the database reachable?"
        ) from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}") from None


@audit_app.command("init-key")
def init_key() -> None:
    """Create the Ed25519 key that signs checkpoints (CARNET_AUDIT_SIGNING_KEY_FILE, mode 0600)."""
    from carnet.audit.checkpoints import CheckpointSigner, public_path
    from carnet.settings import get_settings

    path = get_settings().resolved_signing_key_file
    with _clear_errors():
        signer = CheckpointSigner.create(path)
    typer.echo(f"audit signing key {signer.key_id} written to {path} (mode 0600)")
    typer.echo(f"public key for verifiers: {public_path(path)}")


@audit_app.command("checkpoint")
def checkpoint() -> None:
    """Sign the current head of the chain now and store it outside the database."""
    from carnet.audit.checkpoints import Checkpointer
    from carnet.db.engine import make_engine
    from carnet.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        engine = make_engine(settings.resolved_database_url)
        try:
            checkpointer = Checkpointer.from_settings(settings, engine)
            signed = checkpointer.checkpoint()
        finally:
            engine.dispose()
    if signed is None:
        typer.echo("the audit trail is empty: nothing to checkpoint")
        return
    lanes = ", ".join(f"{lane}@{seq}" for lane, seq, _ in signed.lanes)
    typer.echo(
        f"checkpoint signed: seq {signed.head_seq}, {signed.count} events, head {signed.head_hash[:16]}…,"
        f" lanes {lanes} -> {checkpointer.store.describe()}"
    )


@audit_app.command("verify")
def verify(
    public_key: Annotated[
        Path | None,
        typer.Option(help="Verify with this public key (PEM) instead of the signing key's .pub file."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Also fail (exit 1) when the newest events are not signed yet."),
    ] = False,
    restored: Annotated[
        bool,
        typer.Option(
            "--restored",
            help="The database was restored to a point in time: report the events that checkpoints"
            " signed after it name (lost by the restore) instead of failing on them.",
        ),
    ] = False,
) -> None:
    """Recompute the hash chain and check it against the signed checkpoints. Exit 1 on tampering.

    Events after the newest signed checkpoint (an unsigned tail) are a warning with their count;
    with --strict they fail the run, as after a restart every tail should be signed."""
    from carnet.audit.checkpoints import CheckpointVerifier, open_store, public_path
    from carnet.audit.verify import verify as run_verify
    from carnet.db.engine import make_engine
    from carnet.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        key_path = public_key or public_path(settings.resolved_signing_key_file)
        if public_key is None and not key_path.exists():
            key_path = settings.resolved_signing_key_file
        verifier = CheckpointVerifier.load(key_path)
        store = open_store(settings)
        engine = make_engine(settings.resolved_database_url)
        try:
            report = run_verify(engine, store=store, verifier=verifier, restored=restored)
        finally:
            engine.dispose()
    span = f"seq {report.first_seq}..{report.last_seq}" if report.events else "no events"
    typer.echo(
        f"{report.events} events ({span}), {report.checkpoints} valid checkpoints in {store.describe()}"
    )
    used = [summary for _, summary in sorted(report.lanes.items()) if summary.events or summary.head_seq]
    if used:
        typer.echo(
            f"{len(used)} lane(s): "
            + "; ".join(f"lane {s.lane} {s.events} events, head seq {s.head_seq}" for s in used)
        )
    lost = report.lost_range()
    if lost is not None:
        newest = max((lost.checkpoint for lost in report.lost), key=lambda cp: cp.checkpoint.head_seq)
        lanes = ", ".join(
            f"lane {lost.lane} after seq {lost.after_seq} through {lost.through_seq}" for lost in report.lost
        )
        typer.echo(
            f"RESTORE LOST events {lost[0]}..{lost[1]} ({lanes}):"
            f" pinned by {newest.describe()}, absent from the restored database"
        )
    warning = report.tail_warning()
    if report.ok:
        pinned = report.last_checkpoint.describe() if report.last_checkpoint else "no checkpoint yet"
        typer.echo(
            f"intact: the chain verifies up to {pinned}; {report.unanchored} newer events not yet pinned"
        )
        if warning:
            typer.echo(warning)
            if strict:
                typer.echo(
                    "STRICT: an unsigned tail fails the check (run `carnet audit checkpoint` to pin it)"
                )
                raise typer.Exit(1)
        return
    if warning:
        typer.echo(warning)
    for problem in report.problems:
        typer.echo(problem.describe())
    typer.echo(f"TAMPERING DETECTED: {len(report.problems)} problem(s)")
    raise typer.Exit(1)


@audit_app.command("export")
def export(
    since: Annotated[str, typer.Option(help="ISO 8601 date or date-time (UTC when no offset).")],
    until: Annotated[str | None, typer.Option(help="Exclusive end, ISO 8601.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
) -> None:
    """Audit events as JSON lines for a SIEM (patients by pseudonymous id only)."""
    from carnet.audit.export import export_events, parse_moment
    from carnet.db.engine import make_engine
    from carnet.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        start = parse_moment(since, name="--since")
        end = parse_moment(until, name="--until") if until else None
        engine = make_engine(settings.resolved_database_url)
        try:
            # Who accessed whom is sensitive too: the export is audited before anything leaves.
            _record_export(engine, since=start, until=end, target=str(output) if output else "stdout")
            lines = export_events(engine, since=start, until=end)
            count = 0
            sink = output.open("w", encoding="utf-8") if output else sys.stdout
            try:
                for line in lines:
                    sink.write(line + "\n")
                    count += 1
            finally:
                if output:
                    sink.close()
        finally:
            engine.dispose()
    if output:
        typer.echo(f"{count} events written to {output}")


def _record_export(engine: Any, *, since: Any, until: Any, target: str) -> None:
    from carnet.access.actor import Actor, ActorKind, PurposeOfUse
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.audit.writer import SqlAuditWriter
    from carnet.db.engine import make_session_factory

    actor = Actor(
        kind=ActorKind.SYSTEM, username="system:cli", roles=frozenset(), purpose_of_use=PurposeOfUse.SECURITY
    )
    with make_session_factory(engine).begin() as session:
        SqlAuditWriter().append(
            session,
            AuditRecord(
                kind=AuditKind.AUDIT_EVENTS_READ,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="AuditEvent",
                query="siem-export",
                detail={
                    "since": since.isoformat(),
                    "until": until.isoformat() if until else "",
                    "target": target[:200],
                },
            ),
        )


@audit_app.command("purge")
def purge(
    before: Annotated[str, typer.Option(help="Purge events recorded before this ISO 8601 moment.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the signed checkpoint and the audit event).")],
) -> None:
    """Delete events older than the legal minimum retention; audited and anchored by a checkpoint."""
    from carnet.audit.checkpoints import Checkpointer
    from carnet.audit.export import parse_moment
    from carnet.audit.retention import purge as run_purge
    from carnet.audit.writer import SqlAuditWriter
    from carnet.db.engine import make_engine, make_session_factory
    from carnet.settings import get_settings

    settings = get_settings()
    with _clear_errors():
        moment = parse_moment(before, name="--before")
        engine = make_engine(settings.resolved_database_url)
        try:
            checkpointer = Checkpointer.from_settings(settings, engine)
            result = run_purge(
                session_factory=make_session_factory(engine),
                writer=SqlAuditWriter(),
                checkpointer=checkpointer,
                before=moment,
                reason=reason,
                retention_years=settings.audit_retention_years,
            )
        finally:
            engine.dispose()
    if result is None:
        typer.echo("no audit event is that old: nothing purged")
        return
    typer.echo(
        f"purged {result.purged} events (through seq {result.through_seq}); the chain continues from"
        f" anchor {result.anchor_hash[:16]}…; purge audited as seq {result.audit_seq}"
    )
