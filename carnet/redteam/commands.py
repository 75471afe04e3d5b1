"""`carnet redteam ...`: exercises against carnet itself (demo and test mode only)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

redteam_app = typer.Typer(
    help="Red-team exercises (only when CARNET_ENV is demo or test).", no_args_is_help=True
)
_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print("[bold red]error:[/] ", end="")
    _err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


@redteam_app.command("session")
def session(
    username: Annotated[str, typer.Option("--username", help="A seeded staff account.")],
) -> None:
    """Print, as JSON with a `headers` object, the HTTP headers of a live session of USERNAME.

    It stands for a stolen session (no second factor needed). Refused unless CARNET_ENV is demo
    or test.
    """
    from carnet.redteam.sessions import mint_session
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    settings = get_settings()
    if not settings.exercise_mode:
        raise _fail("red-team sessions exist only when CARNET_ENV is demo or test (this is production)")
    try:
        runtime = build_runtime(settings)
        try:
            stolen = mint_session(runtime, username=username)
        finally:
            runtime.close()
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"username": stolen.username, "roles": stolen.roles, "headers": stolen.headers}))
