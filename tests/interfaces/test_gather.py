"""The listener's group commit under load: once a group is answered, a free worker waits (at
most GATHER_SECONDS) for as many messages as that group had before it starts the next, so the
first sender back is not applied alone while the others wait; a lone message is never held
longer than that."""

from __future__ import annotations

import asyncio
import time

import pytest

from carnet.interfaces import mllp
from carnet.interfaces.mllp import MllpListener
from carnet.interfaces.service import Peer, Registered


class _Recorder:
    """A service that answers every message and records the size of each group."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def receive_many(self, messages: list[tuple[str, Peer, list[Registered] | None]]) -> list[str]:
        self.sizes.append(len(messages))
        time.sleep(0.01)  # a group's transaction
        return [f"ACK {raw}" for raw, _, _ in messages]


def test_a_free_worker_gathers_the_last_groups_senders_then_a_lone_message_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mllp, "GATHER_SECONDS", 0.3)  # room for a loaded machine's delays
    service = _Recorder()
    listener = MllpListener(service, workers=1)  # type: ignore[arg-type]
    peer = Peer("127.0.0.1")

    async def scenario() -> list[list[str]]:
        async def send(raw: str) -> str:
            return await listener._grouped(raw, peer, [])

        answers = []
        # Idle: the first message starts a group alone, the three behind it go together.
        answers.append(await asyncio.gather(*(send(f"a{n}") for n in range(4))))
        # The last group had three: one message back waits for the two others, which come
        # within the gathering time, and the three are one group.
        first = asyncio.ensure_future(send("b0"))
        await asyncio.sleep(mllp.GATHER_SECONDS / 5)
        assert not first.done()
        answers.append(list(await asyncio.gather(first, send("b1"), send("b2"))))
        # A lone message (the other senders gone quiet) is applied after GATHER_SECONDS.
        started = time.monotonic()
        answers.append([await send("c0")])
        assert mllp.GATHER_SECONDS <= time.monotonic() - started < mllp.GATHER_SECONDS + 1
        # ... and the next one alone, at once: the last group had one.
        answers.append([await send("d0")])
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        listener._pool.shutdown(wait=True)
    assert answers == [
        ["ACK a0", "ACK a1", "ACK a2", "ACK a3"],
        ["ACK b0", "ACK b1", "ACK b2"],
        ["ACK c0"],
        ["ACK d0"],
    ]
    assert service.sizes == [1, 3, 3, 1, 1], service.sizes
