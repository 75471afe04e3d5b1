"""`carnet incident ...`: the breach-scope report. Exit status 2 on bad input, never a traceback."""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

incident_app = typer.Typer(
    help="Incidents: which patients an actor's session exposed (GDPR art. 33/34).", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)  # whole lines: messages are read by scripts too


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print("[bold red]error:[/] ", end="")
    _err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _clear_errors() -> Iterator[None]:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot read the database ({type(exc).__name__}): is it reachable?") from None
    except OSError as exc:
        raise _fail(f"cannot write the report: {exc.strerror or type(exc).__name__}") from None


def parse_moment(value: str, *, option: str) -> dt.datetime:
    """ISO 8601 date or date-time; without a timezone it is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        example = "e.g. 2026-11-20 or 2026-11-20T08:00Z"
        raise _fail(f"{option} must be an ISO 8601 date or time, {example}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


@incident_app.command("report")
def report(
    actor: Annotated[str, typer.Option("--actor", help="Username, or client:<id> for an API client.")],
    since: Annotated[str, typer.Option("--since", help="Start (ISO 8601; UTC unless a zone is given).")],
    until: Annotated[str | None, typer.Option("--until", help="End (default: now).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for the files (default: var/incidents/...).")
    ] = None,
) -> None:
    """List exactly which patients ACTOR's data access exposed, with which fields and when.

    Writes patients.csv and patients.json (identities and contacts for notification, mode 0600)
    and summary.md (one page, no patient data). Contact details are decrypted through carnet's
    audited elevated door, with this report as the stated reason.
    """
    from carnet.detection.report import write_report
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    start = parse_moment(since, option="--since")
    end = parse_moment(until, option="--until") if until else None
    if end is not None and end <= start:
        raise _fail("--until must come after --since")
    with _clear_errors():
        runtime = build_runtime(get_settings())
        try:
            files = write_report(runtime, actor=actor, since=start, until=end, out=out, operator=_operator())
        finally:
            runtime.close()
    console = Console()
    console.print(f"{files.patients} patients exposed; files in {files.directory}", highlight=False)
    console.print(f"  {files.summary.name}  one-page summary (no patient data)", highlight=False)
    console.print(f"  {files.csv.name}, {files.json.name}  notification list (patient data, mode 0600)")


@incident_app.command("baselines")
def baselines(
    days: Annotated[int, typer.Option(min=1, max=365, help="Days of history to learn from.")] = 28,
) -> None:
    """Recompute each account's and role's usual volume from the exposure ledger (nightly)."""
    from carnet.detection.baselines import refresh_baselines
    from carnet.detection.config import get_detection_config
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    with _clear_errors():
        runtime = build_runtime(get_settings())
        try:
            with runtime.session_factory.begin() as session:
                done = refresh_baselines(session, config=get_detection_config(), days=days)
        finally:
            runtime.close()
    typer.echo(
        f"baselines of {done.accounts} actors and {done.roles} roles from {done.exposures} exposures "
        f"over {days} days"
    )


def _operator() -> str:
    try:
        return getpass.getuser()[:60]
    except (KeyError, OSError):
        return "cli"
