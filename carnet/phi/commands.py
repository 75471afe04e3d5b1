"""`carnet exports sweep`: fail export jobs whose worker died, erase unclaimed export files.

The server runs the same sweep on a timer (CARNET_EXPORT_SWEEP_SECONDS); this command is for a
cron job, or an operator who wants it now. Exit status: 0 done, 2 on bad input or setup.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

exports_app = typer.Typer(
    help="Asynchronous bulk exports: sweep stuck jobs and unclaimed files.", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)

MAX_STUCK_MINUTES = 7 * 24 * 60
MAX_WINDOW_HOURS = 24  # the policy's window: a file is never kept longer


def _fail(message: str) -> typer.Exit:
    _err.print("[bold red]error:[/] ", end="")
    _err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


@exports_app.command("sweep")
def sweep(
    stuck_after: Annotated[
        str, typer.Option(help="Minutes after which a job still running is failed (its worker died).")
    ] = "30",
    file_window: Annotated[
        str, typer.Option(help="Hours after which a completed, undownloaded file is erased (at most 24).")
    ] = "24",
    operator: Annotated[
        str, typer.Option(help="Name of the system actor in the audit trail.")
    ] = "export-sweeper",
) -> None:
    """Mark export jobs stuck in "running" as failed (the requester's poll says why) and erase
    export files nobody downloaded in time. Audited through the system door."""
    import re

    if not stuck_after.isdigit() or not 1 <= int(stuck_after) <= MAX_STUCK_MINUTES:
        raise _fail(f"--stuck-after is a whole number of minutes from 1 to {MAX_STUCK_MINUTES}")
    if not file_window.isdigit() or not 1 <= int(file_window) <= MAX_WINDOW_HOURS:
        raise _fail(f"--file-window is a whole number of hours from 1 to {MAX_WINDOW_HOURS}")
    if not re.fullmatch(r"[A-Za-z0-9._-]{2,60}", operator):
        raise _fail("--operator is 2 to 60 letters, digits, '.', '_' or '-'")

    from sqlalchemy.exc import SQLAlchemyError

    from carnet.phi.sweep import sweep_exports
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    try:
        runtime = build_runtime(get_settings())
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    try:
        report = sweep_exports(
            runtime,
            stuck_after=dt.timedelta(minutes=int(stuck_after)),
            file_window=dt.timedelta(hours=int(file_window)),
            operator=operator,
        )
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot sweep ({type(exc).__name__}): is the database reachable?") from None
    finally:
        runtime.close()
    out = Console()
    out.print(
        f"failed {len(report.failed)} stuck export job(s), erased {len(report.erased)} unclaimed file(s)"
    )
    for job in report.failed:
        out.print(f"failed {job}", highlight=False)
    for job in report.erased:
        out.print(f"erased {job}", highlight=False)
