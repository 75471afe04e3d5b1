"""`carnet redteam ...`: exercises against carnet itself (demo and test mode only)."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

redteam_app = typer.Typer(
    help="Red-team exercises (only when CARNET_ENV is demo or test).", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)  # whole lines: messages are read by scripts too


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


@redteam_app.command("run")
def run(
    base_url: Annotated[str, typer.Option("--base-url", help="The running carnet to attack.")] = (
        "http://127.0.0.1:8000"
    ),
    playbook: Annotated[
        list[str] | None, typer.Option("--playbook", help="Run only these (repeatable). Default: all.")
    ] = None,
    max_requests: Annotated[
        int, typer.Option(min=1, max=10_000, help="Requests per playbook at most.")
    ] = 200,
) -> None:
    """Run attacker playbooks over HTTP, each from a stolen session of a fresh seeded account,
    and print the patients exposed before containment. Demo and test mode only."""
    from carnet.phi.exercise import exercise_targets
    from carnet.redteam.playbooks import exposure_table, playbook_names, run_playbooks
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    settings = get_settings()
    if not settings.exercise_mode:
        raise _fail("red-team exercises run only when CARNET_ENV is demo or test (this is production)")
    known = set(playbook_names())
    unknown = sorted(set(playbook or ()) - known)
    if unknown:
        raise _fail(f"unknown playbook(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        runtime = build_runtime(settings)
        try:
            targets = exercise_targets(runtime)
            results = run_playbooks(
                runtime, base_url=base_url, targets=targets, names=playbook, max_requests=max_requests
            )
        finally:
            runtime.close()
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach carnet at {base_url} ({type(exc).__name__})") from None
    typer.echo(exposure_table(results))


@redteam_app.command("benign")
def benign(
    days: Annotated[int, typer.Option(min=1, max=90, help="Simulated days.")] = 30,
    clinicians: Annotated[int | None, typer.Option(min=0, help="Only the first N clinicians.")] = None,
    shard: Annotated[
        str, typer.Option(help="I/N: simulate every N-th staff member from the I-th (N processes, N copies).")
    ] = "0/1",
) -> None:
    """The hospital's staff work over simulated days (through the gate, with a movable clock):
    clinicians their day lists, front desk check-ins, bookings and registrations, billing its
    invoices. Prints false containments and step-ups per staff-week. Demo and test mode only."""
    import datetime as dt
    import time

    from carnet.redteam.benign import run_benign
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings
    from carnet.synth.seed import base_day

    settings = get_settings()
    if not settings.exercise_mode:
        raise _fail("simulated days need the movable clock: CARNET_ENV must be demo or test")
    first = base_day().date() - dt.timedelta(days=days // 2)
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise _fail("--shard must be I/N with 0 <= I < N, for example 0/3")
    started = time.perf_counter()
    try:
        runtime = build_runtime(settings)
        try:
            result = run_benign(
                runtime, days=days, first_day=first, limit=clinicians, shard=(int(index), int(count))
            )
        finally:
            runtime.close()
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    staff_days = sum(result.staff_days.values())
    typer.echo(
        f"{staff_days} staff-days ({result.clinician_days} clinician-days), "
        f"{result.patients_opened} patients handled, {result.requests} requests, "
        f"{result.bookings} bookings, {result.registrations} registrations: "
        f"{len(result.containments)} false containments, {result.step_ups} step-ups "
        f"({result.step_ups_per_clinician_week:.2f} per staff-week), {result.throttles} throttles; "
        f"{time.perf_counter() - started:.0f} s"
    )
    typer.echo(
        f"  {result.night_shifts} night shifts (22:00 local); {len(result.joiners)} staff joined mid-month"
    )
    typer.echo(
        f"  the day's work lists: {result.check_ins} check-ins from the arrivals list, "
        f"{result.worklist_payments} payments from the billing worklist, {result.ward_boards} ward boards"
    )
    for role, worked in sorted(result.staff_days.items()):
        typer.echo(
            f"  {role}: {worked} staff-days, {result.role_step_ups.get(role, 0)} step-ups "
            f"({result.step_ups_per_week(role):.2f} per staff-week)"
        )
    if result.account_step_ups:
        name, most = result.account_step_ups.most_common(1)[0]
        typer.echo(f"  most step-ups for one account: {most} ({name}) over {days} days")
    for line in result.containments:
        typer.echo(f"  contained: {line}")


@redteam_app.command("drip")
def drip(
    role: Annotated[str, typer.Option(help="The stolen account's role.")] = "billing",
    days: Annotated[int, typer.Option(min=1, max=60, help="Simulated days.")] = 7,
    per_hour: Annotated[int, typer.Option(min=1, max=100, help="Patients per simulated hour.")] = 4,
) -> None:
    """A stolen session reads PER_HOUR patients every simulated hour for DAYS days (through the
    gate, with a movable clock; the nightly baselines run at each midnight). Prints what it
    exposed before containment. Demo and test mode only."""
    from carnet.phi.exercise import exercise_targets
    from carnet.redteam.drip import DRIP_CALLS, run_drip
    from carnet.redteam.playbooks import exposure_table
    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    settings = get_settings()
    if not settings.exercise_mode:
        raise _fail("simulated days need the movable clock: CARNET_ENV must be demo or test")
    if role not in DRIP_CALLS:
        raise _fail(f"--role must be one of: {', '.join(sorted(DRIP_CALLS))}")
    try:
        runtime = build_runtime(settings)
        try:
            targets = exercise_targets(runtime, sample=days * 24 * per_hour + 100)
            done = run_drip(runtime, role=role, targets=targets, days=days, per_hour=per_hour)
        finally:
            runtime.close()
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    typer.echo(exposure_table([done.result]))
    typer.echo(
        f"{done.hours} simulated hours, contained after "
        f"{done.hours_to_containment if done.hours_to_containment is not None else '-'} h; "
        f"busiest day {done.busiest_day} patients; {done.step_ups} step-ups, {done.throttles} throttles"
    )
