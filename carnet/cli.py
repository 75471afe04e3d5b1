"""The `carnet` command. Bad input gets a clear message and exit status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

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

err = Console(stderr=True)


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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (loopback by default).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Serve the web UI, the patient portal and the FHIR API."""
    import uvicorn

    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    settings = get_settings()
    build_runtime(settings).close()  # fail now, with a clear message, on a bad schema or key
    uvicorn.run(
        "carnet.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )


def main() -> None:
    try:
        app()
    except CarnetError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
