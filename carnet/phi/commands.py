"""`carnet exports list|approve|refuse|sweep`: the export queue, decided by a security officer
signed in to the server; stuck jobs failed and unclaimed export files erased.

The server runs the same sweep on a timer (CARNET_EXPORT_SWEEP_SECONDS); this command is for a
cron job, or an operator who wants it now. Exit status: 0 done, 2 on bad input or setup.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

if TYPE_CHECKING:
    from carnet.runtime import Runtime

exports_app = typer.Typer(
    help="Bulk exports: list the requests, approve or refuse one (as the security officer you "
    "are), sweep stuck jobs and unclaimed files.",
    no_args_is_help=True,
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


@contextlib.contextmanager
def _runtime() -> Iterator[Runtime]:
    from sqlalchemy.exc import SQLAlchemyError

    from carnet.runtime import build_runtime
    from carnet.settings import get_settings

    try:
        runtime = build_runtime(get_settings())
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    try:
        yield runtime
    except CarnetError as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise _fail(f"database error ({type(exc).__name__})") from None
    finally:
        runtime.close()


# -- the security officer's decisions, from a terminal ------------------------------------------
# Approving widens access (invariant 4): the command holds no power of its own. It is a client
# of the running server's own endpoints, signed in as the officer (password, second factor) with
# the step-up proof the console asks for; the server decides, audits and counts as it does for
# the console. Shell access to this machine (the key file, the database URL) approves nothing.
def _decision_session(server: str, username: str, password: str, otp: str, proof: str | None) -> Any:
    import httpx

    http = httpx.Client(base_url=server.rstrip("/"), timeout=30, headers={"User-Agent": "carnet-cli"})
    try:
        login = http.post("/auth/login", json={"username": username, "password": password, "otp": otp})
    except httpx.HTTPError as exc:
        http.close()
        raise _fail(f"cannot reach {server} ({type(exc).__name__}): is the server running?") from None
    if login.status_code != 200:
        http.close()
        raise _fail(f"sign-in refused ({login.status_code}): {_said(login)}")
    body = login.json()
    if body.get("enrollmentOnly") or body.get("setupRequired"):
        http.close()
        raise _fail(
            "this server signs a security officer in with their passkey only: decide in the "
            "security console (/security/exports)"
        )
    token = login.cookies.get("carnet_session")
    if not token:
        http.close()
        raise _fail("the server answered without a session")
    # Sent as a header: the cookie is marked Secure and a plain-http client would not send it.
    http.headers.update({"Cookie": f"carnet_session={token}", "X-CSRF-Token": str(body.get("csrfToken", ""))})
    if proof is not None:
        proven = http.post("/auth/step-up/proof", json={"otp": proof})
        if proven.status_code != 200:
            _log_out(http)
            raise _fail(f"the step-up proof was refused ({proven.status_code}): {_said(proven)}")
    return http


def _said(answer: Any) -> str:
    """The server's own message (an OperationOutcome's diagnostics, or a JSON message)."""
    try:
        body = answer.json()
    except ValueError:
        return answer.reason_phrase or "no message"
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue", []))[:500]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body.get("error") or "no message")[:500]
    return "no message"


def _log_out(http: Any) -> None:
    with contextlib.suppress(Exception):
        http.post("/auth/logout")
    http.close()


def _decide(operation: str, export_id: str, note: str, http: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "exportId", "valueId": export_id},
            *([{"name": "note", "valueString": note}] if note else []),
        ],
    }
    try:
        answer = http.post(
            f"/fhir/${operation}", json=body, headers={"Content-Type": "application/fhir+json"}
        )
    finally:
        _log_out(http)
    if answer.status_code != 200:
        raise _fail(f"refused ({answer.status_code}): {_said(answer)}")
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in answer.json()["parameter"]
    }


def _default_server() -> str:
    from carnet.settings import get_settings

    return get_settings().origin


_SERVER = typer.Option("--server", help="The carnet server to sign in to (default: CARNET_ORIGIN).")
_USER = typer.Option("--username", help="The security officer deciding (they sign in here).")


@exports_app.command("approve")
def approve(
    export_id: Annotated[str, typer.Argument(help="The export request's id.")],
    username: Annotated[str, _USER],
    note: Annotated[
        str, typer.Option(help="Why it is approved (required when the kick-off stated no purpose).")
    ] = "",
    server: Annotated[str | None, _SERVER] = None,
) -> None:
    """Approve an export request as the security officer you are: you sign in (password and
    second factor) and confirm with a fresh proof, as in the security console. Never your own
    request. Prompts for the password and the codes (each code proves once)."""
    password = typer.prompt("password", hide_input=True)
    otp = typer.prompt("second factor code (sign-in)", hide_input=True)
    proof = typer.prompt("a NEWER code, to confirm this approval", hide_input=True)
    http = _decision_session(server or _default_server(), username, password, otp, proof)
    decided = _decide("export-approve", export_id, note, http)
    typer.echo(f"export request {decided.get('exportId')} {decided.get('status')}")


@exports_app.command("refuse")
def refuse(
    export_id: Annotated[str, typer.Argument(help="The export request's id.")],
    username: Annotated[str, _USER],
    note: Annotated[str, typer.Option(help="Why it is refused (told to the requester).")],
    server: Annotated[str | None, _SERVER] = None,
) -> None:
    """Refuse an export request as the security officer you are (you sign in; refusing narrows
    access and needs no further proof)."""
    if len(note.strip()) < 4:
        raise _fail("a refusal needs a note (at least 4 characters)")
    password = typer.prompt("password", hide_input=True)
    otp = typer.prompt("second factor code", hide_input=True)
    http = _decision_session(server or _default_server(), username, password, otp, None)
    decided = _decide("export-reject", export_id, note, http)
    typer.echo(f"export request {decided.get('exportId')} {decided.get('status')}")


@exports_app.command("list")
def list_requests(
    all_: Annotated[bool, typer.Option("--all", help="Also the decided, used and expired ones.")] = False,
) -> None:
    """The export requests (newest first, pending only by default): who asked, for what, why.
    No patient data; the listing is audited."""
    import getpass

    from rich.table import Table
    from sqlalchemy import select

    from carnet.access.actor import Actor, ActorKind, PurposeOfUse
    from carnet.access.exports import LIST_LIMIT, ExportStatus, status_of, to_view
    from carnet.access.models import ExportRequest
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.identity.models import Account
    from carnet.kernel import clock

    with _runtime() as runtime, runtime.session_factory.begin() as session:
        now = clock.now()
        query = select(ExportRequest).order_by(ExportRequest.requested_at.desc()).limit(LIST_LIMIT)
        rows = [r for r in session.scalars(query) if all_ or status_of(r, now) == ExportStatus.PENDING]
        views = [to_view(r, now) for r in rows]
        names = {str(k): v for k, v in session.execute(select(Account.id, Account.username)).all()}
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_EXPORT_LISTED,
                outcome=Outcome.SUCCESS,
                actor=Actor(
                    kind=ActorKind.SYSTEM,
                    username=f"system:cli:{getpass.getuser()}",
                    roles=frozenset(),
                    purpose_of_use=PurposeOfUse.SECURITY,
                ),
                resource_type="ExportRequest",
                resource_ids=[v.id for v in views][:200],
                detail={"pending_only": str(not all_).lower()},
            ),
        )
    table = Table(
        "id",
        "status",
        "requested by",
        "scope",
        "types",
        "purpose",
        "requested",
        title=f"{len(views)} export requests",
    )
    for v in views:
        purpose = v.purpose + (" [approver must record it]" if v.purpose_missing else "")
        table.add_row(
            v.id,
            v.status.value,
            names.get(v.requested_by, v.requested_by),
            v.scope.value,
            " ".join(v.resource_types),
            purpose,
            v.requested_at.isoformat(timespec="minutes"),
        )
    Console(width=200).print(table)
