"""A hospital with a ward, a physician, two interfaces (ADT, LAB) and a live MLLP listener."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from carnet.interfaces.mllp import MllpListener
from carnet.interfaces.registry import register_interface
from carnet.interfaces.service import InterfaceService
from carnet.org.models import Location, Practitioner
from carnet.runtime import Runtime
from tests.factories import make_facility

ADT_TYPES = [
    "ADT^A01",
    "ADT^A02",
    "ADT^A03",
    "ADT^A04",
    "ADT^A08",
    "ADT^A11",
    "ADT^A12",
    "ADT^A13",
    "ADT^A40",
]


@dataclass
class Hospital:
    facility_id: uuid.UUID
    cardio: uuid.UUID
    neuro: uuid.UUID
    physician: uuid.UUID
    rpps: str


def make_hospital(runtime: Runtime, *, sources: list[str] | None = None, per_minute: int = 1000) -> Hospital:
    facility_id = make_facility(runtime)
    rpps = str(random.randint(10**10, 10**11 - 1))
    with runtime.session_factory.begin() as session:
        cardio = Location(facility_id=facility_id, name="CARDIO", kind="ward")
        neuro = Location(facility_id=facility_id, name="NEURO", kind="ward")
        doctor = Practitioner(
            facility_id=facility_id, rpps=rpps, family="Dupont", given="Jean", profession="physician"
        )
        session.add_all([cardio, neuro, doctor])
        session.flush()
        for name, facility, types in (("ADT", "HOSP", ADT_TYPES), ("LAB", "LABO", ["ORU^R01"])):
            register_interface(
                session,
                name=name,
                sending_facility=facility,
                facility_id=facility_id,
                message_types=types,
                source_addresses=sources or ["127.0.0.1"],
                client_cert_sha256=None,
                per_minute=per_minute,
            )
        return Hospital(facility_id, cardio.id, neuro.id, doctor.id, rpps)


@pytest.fixture
def hospital(runtime: Runtime) -> Hospital:
    return make_hospital(runtime)


@pytest.fixture
def listener(runtime: Runtime, hospital: Hospital) -> Iterator[int]:
    """A real MLLP listener on a free port, its event loop on a thread; yields the port."""
    yield from serve(runtime)


def serve(runtime: Runtime, service: InterfaceService | None = None) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MllpListener(service or InterfaceService(runtime), host="127.0.0.1", port=0, workers=2)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
