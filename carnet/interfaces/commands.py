"""`carnet interfaces ...`: register, list, serve (the MLLP listener), and read the message log,
from the server's shell (registered in carnet.cli). Changes are audited as `system:cli`.
Bad input: a message and exit status 2, nothing changed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from carnet.kernel.errors import CarnetError

if TYPE_CHECKING:
    from carnet.runtime import Runtime

interfaces_app = typer.Typer(
    help="HL7 v2 interfaces over MLLP: register, list, serve, message log.", no_args_is_help=True
)
_err = Console(stderr=True, soft_wrap=True)


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


@interfaces_app.command("register")
def register(
    name: Annotated[str, typer.Option(help="The sender's MSH-3 (sending application).")],
    sending_facility: Annotated[str, typer.Option("--sending-facility", help="The sender's MSH-4.")],
    facility: Annotated[str, typer.Option(help="The carnet facility id it feeds.")],
    message_type: Annotated[
        list[str], typer.Option("--type", help="An allowed message type, e.g. ADT^A01 (repeatable).")
    ],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="An address or network it connects from (repeatable)."),
    ] = None,
    client_cert_sha256: Annotated[
        str | None,
        typer.Option("--client-cert-sha256", help="SHA-256 fingerprint of its TLS client certificate."),
    ] = None,
    per_minute: Annotated[int, typer.Option("--per-minute", help="Messages a minute it may send.")] = 600,
    timezone: Annotated[str, typer.Option(help="Time zone of its times without an offset.")] = "Europe/Paris",
) -> None:
    """Register a sending system as an interface: its own write-only actor at one facility."""
    from carnet.access.actor import Actor, ActorKind, PurposeOfUse
    from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
    from carnet.interfaces.registry import register_interface

    try:
        facility_id = uuid.UUID(facility)
    except ValueError:
        raise _fail("the facility is a carnet facility id (a UUID)") from None
    operator = Actor(
        kind=ActorKind.SYSTEM, username="system:cli", roles=frozenset(), purpose_of_use=PurposeOfUse.SECURITY
    )
    with _runtime() as runtime, runtime.session_factory.begin() as session:
        interface_id = register_interface(
            session,
            name=name,
            sending_facility=sending_facility,
            facility_id=facility_id,
            message_types=message_type,
            source_addresses=source or [],
            client_cert_sha256=client_cert_sha256,
            per_minute=per_minute,
            timezone=timezone,
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.INTERFACE_REGISTERED,
                outcome=Outcome.SUCCESS,
                actor=operator,
                resource_type="Interface",
                resource_ids=(str(interface_id),),
                detail={"name": name, "types": " ".join(sorted(message_type))[:400], "facility": facility},
            ),
        )
    typer.echo(
        f"interface {name} registered ({len(message_type)} message types);"
        " point it at `carnet interfaces serve`"
    )


@interfaces_app.command("list")
def list_() -> None:
    """Registered interfaces: name, facility, types, addresses, status. Never patient data."""
    from rich.table import Table

    from carnet.interfaces.registry import list_interfaces

    with _runtime() as runtime, runtime.session_factory() as session:
        rows = list_interfaces(session)
    table = Table("name (MSH-3)", "MSH-4", "facility", "types", "sources", "cert", "per minute", "status")
    for r in rows:
        table.add_row(
            r.name,
            r.sending_facility,
            str(r.facility_id),
            " ".join(r.message_types),
            " ".join(r.source_addresses) or "-",
            "yes" if r.client_certificate else "no",
            str(r.per_minute),
            r.status,
        )
    Console().print(table)


@interfaces_app.command("log")
def message_log(
    name: Annotated[str, typer.Argument(help="The interface's name.")],
    control_id: Annotated[
        str | None, typer.Option("--control-id", help="One message control id (MSH-10).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="accepted or rejected.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many lines, newest first.")] = 50,
) -> None:
    """An interface's message log: control id, type, status, ACK code, reason, patient ids."""
    from rich.table import Table

    from carnet.interfaces.log import search_log

    with _runtime() as runtime, runtime.session_factory() as session:
        lines = search_log(session, interface=name, control_id=control_id, status=status, limit=limit)
    table = Table("received", "control id", "type", "status", "ack", "reason", "patients", "replays")
    for line in lines:
        table.add_row(
            line.received_at.isoformat(timespec="seconds"),
            line.control_id,
            line.message_type,
            line.status,
            line.ack_code,
            line.reason or "",
            " ".join(line.patient_ids),
            str(line.replays),
        )
    Console().print(table)


@interfaces_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (2575 is HL7's).")] = 2575,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate: listen with TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    client_ca: Annotated[
        Path | None, typer.Option("--client-ca", help="CA of the client certificates (required then).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Messages (or groups) applied at once in each process. One: its group commit gathers"
            " what arrives meanwhile, and more threads only contend for the interpreter's lock.",
        ),
    ] = 1,
    group: Annotated[
        bool,
        typer.Option(
            "--group/--no-group",
            help="Group commit: messages waiting while every worker is busy applied in one transaction.",
        ),
    ] = True,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Listener processes sharing the port (SO_REUSEPORT; a connection stays on one):"
            " applying messages is CPU-bound, one process uses one core.",
        ),
    ] = 1,
) -> None:
    """Listen for HL7 v2 messages over MLLP and answer each with an ACK or a NAK."""
    from carnet.interfaces.mllp import MllpListener, tls_context
    from carnet.interfaces.processes import ListenerOptions, start_processes, stop_processes
    from carnet.interfaces.service import InterfaceService
    from carnet.settings import get_settings

    if (tls_cert is None) != (tls_key is None) or (client_ca is not None and tls_cert is None):
        raise _fail("TLS needs --tls-cert and --tls-key (and --client-ca only with them)")
    context = None
    if tls_cert is not None and tls_key is not None:
        try:
            context = tls_context(tls_cert, tls_key, client_ca)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot load the TLS files ({type(exc).__name__})") from None
    if processes > 1 and not get_settings().redis_url:
        # Each process would count an interface's volume alone: k times its registration.
        raise _fail(
            "--processes above 1 needs Redis (CARNET_REDIS_URL): the interfaces' volume budget is"
            " counted there, shared by every process"
        )
    with _runtime() as runtime:
        listener = MllpListener(
            InterfaceService(runtime),
            host=host,
            port=port,
            ssl_context=context,
            workers=workers,
            group=group,
            reuse_port=processes > 1,
        )
        others: list[object] = []

        async def serve() -> None:
            bound = await listener.start()
            if processes > 1:  # the others on the port this one bound
                options = ListenerOptions(host, bound, workers, group, tls_cert, tls_key, client_ca)
                others.extend(
                    await asyncio.to_thread(start_processes, get_settings(), options, processes - 1)
                )
            typer.echo(
                f"MLLP listener on {host}:{bound}{' (TLS)' if context else ''}"
                + (f", {processes} processes" if processes > 1 else "")
            )
            await listener.serve_forever()

        try:
            with suppress(KeyboardInterrupt):
                asyncio.run(serve())
        finally:
            stop_processes(others)
