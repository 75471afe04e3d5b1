"""`carnet seed` and `carnet demo` (registered in carnet.cli).

Heavy imports stay inside the commands so `carnet --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from carnet.kernel.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from carnet.runtime import Runtime
    from carnet.synth.seed import SeedReport

DEMO_PATIENTS = 3000
DEMO_SEED = 7
DEMO_CREDENTIALS = "demo-credentials.json"

err = Console(stderr=True, soft_wrap=True)


class RichProgress:
    """A progress bar per seeding stage, on stderr so stdout keeps the summary."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def stage(self, name: str, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total)
        self._task = self._progress.add_task(name, total=max(total, 0))

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


def _progress_bar() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description:<23}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _check_writable(path: Path) -> None:
    """Refuse before seeding, not after, when the credentials cannot be written."""
    if path.is_dir():
        raise InvalidInput(f"--credentials-out {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise InvalidInput(f"cannot create the folder {parent} for the credentials file") from None
    if not os.access(parent, os.W_OK):
        raise InvalidInput(f"cannot write the credentials file in {parent}")


def _run_seed(runtime: Runtime, *, patients: int, seed: int, facilities: int | None) -> SeedReport:
    from carnet.synth.seed import seed_hospital

    with _progress_bar() as bar:
        return seed_hospital(
            runtime, patients=patients, seed=seed, facilities=facilities, progress=RichProgress(bar)
        )


def _summary(report: SeedReport, credentials: Path) -> None:
    out = Console(soft_wrap=True)  # paths stay whole for scripts
    out.print(
        f"seeded {report.patients} patients ({report.canaries} canaries among them) in "
        f"{report.facilities} facilities, {report.staff} staff and {report.portal_accounts} portal "
        f"accounts, {sum(report.rows.values())} patient-data rows in {report.seconds:.1f} s",
        highlight=False,
    )
    out.print(f"credentials written to {credentials} (mode 0600)", highlight=False)


def seed(
    patients: Annotated[int, typer.Option(min=0, max=2_000_000, help="How many patients.")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed: the same seed gives the same data.")] = 0,
    credentials_out: Annotated[
        Path | None,
        typer.Option(
            "--credentials-out",
            help="Where to write the seeded accounts as JSON (username, password, totp_secret, roles, "
            "facility); default var/seed-credentials.json.",
        ),
    ] = None,
    facilities: Annotated[
        int | None, typer.Option(min=1, max=50, help="Facilities in the group (default: by size).")
    ] = None,
) -> None:
    """Seed an empty database with a deterministic synthetic hospital group (demo and test only)."""
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings
    from carnet.synth.seed import write_credentials

    settings = get_settings()
    if not settings.exercise_mode:
        raise ConfigurationError(
            "seeding writes synthetic patients and accounts with known passwords: "
            "set CARNET_ENV=demo or CARNET_ENV=test"
        )
    credentials_out = credentials_out or settings.var_dir / "seed-credentials.json"
    _check_writable(credentials_out)
    runtime = build_runtime(settings)
    try:
        report = _run_seed(runtime, patients=patients, seed=seed, facilities=facilities)
    finally:
        runtime.close()
    write_credentials(credentials_out, report.credentials)
    _summary(report, credentials_out)


def _start_clock(settings: Any, value: str) -> None:
    """The movable clock (refused outside demo and test), set to HH:MM today on the Paris wall clock."""
    import datetime as dt

    from carnet.kernel import clock, localtime
    from carnet.settings import install_movable_clock

    try:
        wanted = dt.time.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("--clock is HH:MM, for example 09:30") from None
    movable = install_movable_clock(settings)
    movable.set(localtime.at(localtime.local_day(clock.now()), wanted))


def demo(
    patients: Annotated[
        int, typer.Option(min=1, max=200_000, help="Patients to seed when the database is empty.")
    ] = DEMO_PATIENTS,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port.")] = None,
    clock_at: Annotated[
        str | None,
        typer.Option(
            "--clock",
            help="Start the hospital's wall clock (Europe/Paris) at HH:MM today, then let it run: "
            "a walk through a day's work (arrivals, day lists) at any hour. Demo only.",
        ),
    ] = None,
) -> None:
    """Seed an embedded demo hospital if there is none, print where the credentials are, serve."""
    from carnet.crypto.keys import FileKeyProvider
    from carnet.db import migrate
    from carnet.db.engine import make_engine
    from carnet.runtime import build_runtime
    from carnet.settings import Environment, get_settings, reset_settings_cache
    from carnet.synth.seed import is_empty, write_credentials

    os.environ.setdefault("CARNET_ENV", Environment.DEMO.value)
    reset_settings_cache()
    settings = get_settings()
    if not settings.exercise_mode:
        raise ConfigurationError("carnet demo runs with CARNET_ENV=demo (it seeds known passwords)")
    out = Console(soft_wrap=True)  # paths stay whole for scripts
    if clock_at is not None:
        _start_clock(settings, clock_at)
        out.print(f"the hospital's clock starts at {clock_at} (Europe/Paris) today", highlight=False)
    key_file = settings.resolved_key_file
    if not key_file.exists():
        FileKeyProvider.create(key_file)
        out.print(f"key file created at {key_file}", highlight=False)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
    except Exception as exc:  # the driver's message can hold the URL's password: name the kind only
        raise ConfigurationError(
            f"cannot upgrade the database ({type(exc).__name__}): is it reachable?"
        ) from None
    finally:
        engine.dispose()
    credentials = settings.var_dir / DEMO_CREDENTIALS
    runtime = build_runtime(settings)
    try:
        if is_empty(runtime):
            _check_writable(credentials)
            report = _run_seed(runtime, patients=patients, seed=DEMO_SEED, facilities=None)
            write_credentials(credentials, report.credentials)
            _summary(report, credentials)
        elif credentials.exists():
            out.print(
                f"the demo hospital is already seeded; credentials are in {credentials}", highlight=False
            )
        else:
            err.print(
                f"the database is already seeded but {credentials} is missing: "
                "delete the database to seed a new demo hospital",
                highlight=False,
            )
    finally:
        runtime.close()
    from carnet.cli import serve

    serve(host=None, port=port, workers=1)
