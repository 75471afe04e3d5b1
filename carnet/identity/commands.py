"""`carnet clients ...` and `carnet sessions ...`: API client registration and incident-time
revocation from the server's shell (registered in carnet.cli). Every change is audited as
`system:cli`. Bad input: a message and exit status 2, nothing changed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from carnet.access.actor import Actor
    from carnet.runtime import Runtime

clients_app = typer.Typer(
    help="OAuth API clients: register, list, revoke their tokens.", no_args_is_help=True
)
sessions_app = typer.Typer(
    help="Sign-in sessions: revoke an account's sessions at once.", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)  # whole lines: messages are read by scripts too


def _fail(message: str) -> typer.Exit:
    _err.print("[bold red]error:[/] ", end="")
    _err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


@contextmanager
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
        raise _fail(f"database error ({type(exc).__name__}); nothing was changed") from None
    finally:
        runtime.close()


def _operator(username: str = "system:cli") -> Actor:
    from carnet.access.actor import Actor, ActorKind, PurposeOfUse

    return Actor(
        kind=ActorKind.SYSTEM, username=username, roles=frozenset(), purpose_of_use=PurposeOfUse.SECURITY
    )


def _facility_id(session: Session, given: str) -> uuid.UUID:
    """A facility by its FINESS number or its id; exit 2 when there is none."""
    from sqlalchemy import or_, select

    from carnet.org.models import Facility

    try:
        as_id: uuid.UUID | None = uuid.UUID(given)
    except ValueError:
        as_id = None
    found = session.scalar(
        select(Facility.id).where(or_(Facility.finess == given.strip(), Facility.id == as_id))
    )
    if found is None:
        raise _fail(f"no facility with FINESS or id {given[:40]!r}")
    return found


@clients_app.command("register")
def register(
    client_id: Annotated[
        str, typer.Option("--client-id", help="The client's id (3-100 of A-Z a-z 0-9 . _ -).")
    ],
    name: Annotated[str, typer.Option(help="A name people recognise.")],
    scope: Annotated[str, typer.Option(help='Allowed scopes, e.g. "system/Patient.read system/*.rs".')],
    reason: Annotated[str, typer.Option(help="Why this integration gets access (audited).")],
    facility: Annotated[
        str | None,
        typer.Option(help="The facility (FINESS or id) whose patients a backend client reads or writes."),
    ] = None,
    jwks: Annotated[
        Path | None, typer.Option(help="JSON file with the client's PUBLIC keys (backend clients).")
    ] = None,
    kind: Annotated[
        str, typer.Option(help="backend (SMART Backend Services) or app (code + PKCE).")
    ] = "backend",
    redirect_uri: Annotated[
        list[str] | None, typer.Option("--redirect-uri", help="An app's redirect URI (repeatable).")
    ] = None,
    launch_uri: Annotated[
        str, typer.Option("--launch-uri", help="An app's SMART launch URL (EHR launch from the chart).")
    ] = "",
    export_purpose: Annotated[
        str,
        typer.Option(
            "--export-purpose",
            help="A backend client's purpose of use for Bulk Data exports (what its kick-offs state).",
        ),
    ] = "",
) -> None:
    """Register an API client. It holds no secret: a backend proves itself with its keys.

    The server's shell is the operator's door (no passkey asked): the stated reason is audited.
    """
    import carnet.org.models  # noqa: F401  (the facilities table a client row refers to)
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.identity import oauth

    if len(reason.strip()) < 4:
        raise _fail("state a reason (at least 4 characters)")

    keys = None
    if jwks is not None:
        try:
            keys = json.loads(jwks.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the JWKS file: {type(exc).__name__}") from None
        if not isinstance(keys, dict):
            raise _fail("the JWKS file must hold a JSON object with 'keys'")
    if kind == "backend" and not facility:
        raise _fail("a backend client acts within one facility: give --facility (FINESS or id)")
    with _runtime() as runtime, runtime.session_factory.begin() as session:
        facility_id = _facility_id(session, facility) if facility else None
        oauth.register_client(
            session,
            client_id=client_id,
            name=name,
            jwks=keys,
            allowed_scopes=scope,
            facility_id=facility_id,
            kind=kind,
            redirect_uris=" ".join(redirect_uri or []),
            launch_uri=launch_uri,
            export_purpose=export_purpose,
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.API_CLIENT_REGISTERED,
                outcome=Outcome.SUCCESS,
                actor=_operator(),
                resource_type="ApiClient",
                resource_ids=(client_id,),
                detail={
                    "scope": scope[:400],
                    "kind": kind,
                    "facility": str(facility_id or ""),
                    "reason": reason.strip()[:300],
                },
            ),
        )
        token_url = runtime.settings.origin.rstrip("/") + "/oauth/token"
    typer.echo(f"client {client_id} registered ({kind}); token endpoint {token_url}")


@clients_app.command("set-export-purpose")
def set_export_purpose(
    client_id: Annotated[str, typer.Argument(help="The backend client.")],
    purpose: Annotated[
        str, typer.Option(help="Its purpose of use for Bulk Data exports (10-1000 characters).")
    ],
    reason: Annotated[str, typer.Option(help="Why (audited).")],
) -> None:
    """Register a backend client's purpose of use for bulk exports: a kick-off that names none
    states this one. Each export still waits for a security officer's approval."""
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.identity import oauth

    if len(reason.strip()) < 4:
        raise _fail("state a reason (at least 4 characters)")
    with _runtime() as runtime, runtime.session_factory.begin() as session:
        oauth.set_export_purpose(session, client_id=client_id, purpose=purpose)
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.API_CLIENT_REGISTERED,
                outcome=Outcome.SUCCESS,
                actor=_operator(),
                resource_type="ApiClient",
                resource_ids=(client_id,),
                detail={"export_purpose": " ".join(purpose.split())[:300], "reason": reason.strip()[:300]},
            ),
        )
    typer.echo(f"client {client_id}: purpose of use for exports registered")


@clients_app.command("list")
def list_clients() -> None:
    """List API clients: id, kind, status, scopes. Never keys."""
    from rich.table import Table
    from sqlalchemy import select

    from carnet.identity.models import ApiClient

    with _runtime() as runtime, runtime.session_factory() as session:
        rows = session.execute(
            select(ApiClient.client_id, ApiClient.kind, ApiClient.status, ApiClient.allowed_scopes).order_by(
                ApiClient.client_id
            )
        ).all()
    table = Table("client id", "kind", "status", "scopes", title=f"{len(rows)} API clients")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@clients_app.command("revoke-tokens")
def revoke_tokens(
    client_id: Annotated[str, typer.Argument(help="The client whose live tokens end now.")],
    reason: Annotated[str, typer.Option(help="Why (audited).")],
) -> None:
    """Revoke every live access token of a client, on every worker at once."""
    from carnet.identity import oauth

    if len(reason.strip()) < 4:
        raise _fail("state a reason (at least 4 characters)")
    with _runtime() as runtime, runtime.session_factory.begin() as session:
        count = oauth.revoke_client_tokens(
            session, client_id=client_id, reason=reason.strip(), actor=_operator(), audit=runtime.audit
        )
    typer.echo(f"{count} token(s) of {client_id} revoked")


@sessions_app.command("revoke")
def revoke_sessions(
    username: Annotated[str, typer.Argument(help="The account whose sessions end now.")],
    reason: Annotated[str, typer.Option(help="Why (audited, shown in the account's security history).")],
) -> None:
    """Revoke every session of an account, on every worker at once."""
    from sqlalchemy import select

    from carnet.identity import sessions
    from carnet.identity.models import Account

    if len(reason.strip()) < 4:
        raise _fail("state a reason (at least 4 characters)")
    with _runtime() as runtime, runtime.session_factory.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.username == username))
        if account_id is None:
            raise _fail(f"no account named {username!r}")
        count = sessions.revoke(
            session,
            account_id=account_id,
            session_id=None,
            reason=reason.strip(),
            actor=_operator(),
            audit=runtime.audit,
        )
    typer.echo(f"{count} session(s) of {username} revoked")


def reenrol(
    username: Annotated[str, typer.Argument(help="The account whose owner stands at the desk.")],
    reason: Annotated[
        str, typer.Option(help="Why, and how the owner's identity was checked in person (audited).")
    ],
) -> None:
    """Re-enrol an account's owner in person: every session ends, every passkey, authenticator
    and recovery code is removed, and a new first password and authenticator key are shown here,
    once, for the owner to replace at first sign-in. A contained account stays suspended: two
    security officers restore it afterwards (needed when it was contained while on probation)."""
    import getpass

    from carnet.identity import lifecycle

    with _runtime() as runtime, runtime.session_factory.begin() as session:
        done = lifecycle.reenrol(
            session,
            username=username,
            reason=reason,
            actor=_operator(f"system:cli:{getpass.getuser()}"),
            audit=runtime.audit,
        )
    # Shown once, to the owner standing here; never stored in clear, never logged.
    typer.echo(f"{done.username} re-enrolled; {done.sessions_ended} session(s) ended.")
    typer.echo(f"first password: {done.initial_password}")
    typer.echo(f"authenticator key: {done.totp_secret}")
    typer.echo(f"authenticator URI: {done.otpauth_uri}")
    typer.echo("The owner signs in now and replaces both; then two security officers restore the account.")
