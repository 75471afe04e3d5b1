"""The MLLP listener (asyncio; TLS optional): frames from python-hl7's MLLP stream reader, each
message answered on the same connection, in order, by `InterfaceService` (on a worker thread:
the gate's transaction is synchronous).

Group commit (the default): messages waiting while the workers are busy are applied together,
one group per worker (`InterfaceService.receive_many`: one transaction, one commit), each
answered after that commit. A sender waits for the ACK of a message before sending the next,
so a group gathers messages of different connections; under little traffic a group is one
message, applied as `receive` applies it.

A connection from an address (or certificate) no interface is registered for is closed without
an answer; a framing error is answered with a NAK and the connection closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import ssl
from pathlib import Path
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from carnet.interfaces import hl7v2
from carnet.interfaces.hl7v2 import AckCode, ErrorCode, MessageError
from carnet.interfaces.service import InterfaceService, Peer, Registered
from carnet.kernel import clock

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 1_000_000
# Group commit under load: when a group of n ends, its n senders get their ACKs at once and
# send their next messages within a moment; the first to arrive would otherwise be applied
# alone (a whole transaction for one message) while the others wait for it. A free worker
# waits for as many messages as the last group had (its senders back), at most GATHER_SECONDS.
# Under little traffic (a last group of one) nothing waits.
GATHER_SECONDS = 0.005


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the listener; with `client_ca`, a client certificate signed by it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _decode(block: bytes) -> tuple[str, str]:
    """The message text and the encoding to answer in (MSH-18: 8859/1 is Latin-1; else UTF-8)."""
    head = block[:300]
    encoding = "latin-1" if b"8859/1" in head.split(b"\r", 1)[0] else "utf-8"
    try:
        return block.decode(encoding), encoding
    except UnicodeDecodeError:
        return block.decode("latin-1"), "latin-1"


class MllpListener:
    def __init__(
        self,
        service: InterfaceService,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        ssl_context: ssl.SSLContext | None = None,
        workers: int = 4,
        group: bool = True,
        max_group: int = 50,
        reuse_port: bool = False,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hl7")
        self._server: asyncio.AbstractServer | None = None
        self._group = group
        self._max_group = max_group
        self._workers = workers
        self._waiting: list[tuple[tuple[str, Peer, list[Registered] | None], asyncio.Future[str]]] = []
        self._running = 0
        self._enough = 1  # messages waiting that start a group at once (after the last group's)
        self._gather: asyncio.TimerHandle | None = None
        # Several listener processes on one port (`serve_processes`): the kernel hands each new
        # connection to one of them, where it stays.
        self._reuse_port = reuse_port

    async def start(self) -> int:
        """Listen; returns the port (useful when asked for port 0)."""
        extra = {"reuse_port": True} if self._reuse_port else {}
        self._server = await start_hl7_server(
            self._client, self.host, self.port, ssl=self.ssl_context, limit=MAX_MESSAGE_BYTES, **extra
        )
        sockets = getattr(self._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self.port

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._pool.shutdown(wait=True)

    async def _client(self, reader: Any, writer: Any) -> None:
        peername = writer.get_extra_info("peername")
        address = str(peername[0]) if peername else None
        cert_sha256 = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            cert_sha256 = hashlib.sha256(der).hexdigest() if der else None
        peer = Peer(address=address, cert_sha256=cert_sha256)
        loop = asyncio.get_running_loop()
        try:
            candidates = await loop.run_in_executor(self._pool, self.service.candidates, peer)
            if not candidates:
                log.warning("hl7 connection from an unregistered peer closed")
                return
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    return  # the sender closed the connection
                except (InvalidBlockError, ValueError):
                    error = MessageError(
                        "not an MLLP block (<VT> message <FS><CR>), or longer than 1 MB",
                        code=ErrorCode.SEGMENT_SEQUENCE,
                        ack=AckCode.REJECT,
                    )
                    nak = hl7v2.ack(None, AckCode.REJECT, error=error, control_id="0", now=clock.now())
                    writer.writeblock(nak.encode("ascii"))
                    await writer.drain()
                    return
                raw, encoding = _decode(bytes(block))
                if self._group:
                    answer = await self._grouped(raw, peer, candidates)
                else:
                    answer = await loop.run_in_executor(
                        self._pool,
                        functools.partial(self.service.receive, raw, peer=peer, candidates=candidates),
                    )
                writer.writeblock(answer.encode(encoding, errors="replace"))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    # -- group commit ------------------------------------------------------------------------------
    async def _grouped(self, raw: str, peer: Peer, candidates: list[Registered]) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append(((raw, peer, candidates), answer))
        self._next_group()
        return await answer

    def _next_group(self, *, gathered: bool = False) -> None:
        """Hand what waits to the free workers, at most `max_group` messages each (event loop);
        under load, once the last group's senders are back (or GATHER_SECONDS passed)."""
        loop = asyncio.get_running_loop()
        if gathered:
            self._gather = None
        while self._waiting and self._running < self._workers:
            if not gathered and len(self._waiting) < self._enough:
                if self._gather is None:
                    self._gather = loop.call_later(
                        GATHER_SECONDS, functools.partial(self._next_group, gathered=True)
                    )
                return
            if self._gather is not None:
                self._gather.cancel()
                self._gather = None
            taken, self._waiting = self._waiting[: self._max_group], self._waiting[self._max_group :]
            self._enough = len(taken)
            self._running += 1
            done = loop.run_in_executor(self._pool, self.service.receive_many, [m for m, _ in taken])
            done.add_done_callback(functools.partial(self._group_done, [a for _, a in taken]))

    def _group_done(self, answers: list[asyncio.Future[str]], done: asyncio.Future[list[str]]) -> None:
        self._running -= 1
        error = None if done.cancelled() else done.exception()
        for i, answer in enumerate(answers):
            if answer.done():
                continue
            if done.cancelled() or error is not None:  # receive_many never raises: shutting down
                answer.cancel()
            else:
                answer.set_result(done.result()[i])
        self._next_group()


async def send(
    host: str, port: int, messages: list[str], *, ssl_context: ssl.SSLContext | None = None
) -> list[str]:
    """Send messages over one MLLP connection, each after the ACK of the one before (a sender's
    usual discipline); returns the ACKs. For tests, benchmarks and `carnet interfaces send`."""
    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection(host, port, ssl=ssl_context, limit=MAX_MESSAGE_BYTES)
    answers: list[str] = []
    try:
        for message in messages:
            writer.writeblock(message.encode("utf-8"))
            await writer.drain()
            block = await asyncio.wait_for(reader.readblock(), timeout=60)
            answers.append(bytes(block).decode("utf-8", errors="replace"))
    finally:
        writer.close()
    return answers
