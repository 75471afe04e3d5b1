"""Plain rows inserted together (carnet.db.prepared.insert_rows): on PostgreSQL one pipeline of
unnested arrays, elsewhere Core; either way the rows read back as Core would have written them,
and a constraint violation is SQLAlchemy's IntegrityError (what the HL7 listener answers)."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from carnet.db.prepared import PreparedInsert, insert_rows
from carnet.interfaces.models import InterfaceLink, InterfaceMessage
from carnet.interfaces.registry import register_interface
from carnet.runtime import Runtime
from tests.factories import make_facility

LINKS = PreparedInsert(cast(sa.Table, InterfaceLink.__table__))
MESSAGES = PreparedInsert(cast(sa.Table, InterfaceMessage.__table__))


def _link(facility: uuid.UUID, n: int, reference: str | None, flags: str | None) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "facility_id": facility,
        "kind": "result",
        "key_digest": f"{n:064d}",
        "target_id": uuid.uuid4(),
        "reference_range": reference,
        "abnormal_flags": flags,
    }


def test_rows_read_back_as_written_and_a_duplicate_is_an_integrity_error(runtime: Runtime) -> None:
    facility = make_facility(runtime)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    received = dt.datetime(2026, 12, 7, 8, 30, 15, 123456, tzinfo=paris)
    with runtime.session_factory.begin() as session:
        interface = register_interface(
            session,
            name="LAB",
            sending_facility="LABO",
            facility_id=facility,
            message_types=["ORU^R01"],
            source_addresses=["127.0.0.1"],
            client_cert_sha256=None,
            per_minute=10,
        )
    # NULLs in the first row of a column and in the last, all-NULL columns, a zoned datetime.
    links = [_link(facility, 1, None, "H"), _link(facility, 2, "1-2", None), _link(facility, 3, None, None)]
    message = {
        "id": uuid.uuid4(),
        "interface_id": interface,
        "control_id": "C-1",
        "digest": "d" * 64,
        "message_type": "ORU^R01",
        "received_at": received,
        "status": "accepted",
        "ack_code": "AA",
        "reason": None,
        "patient_ids": "",
        "replays": 0,
    }
    with runtime.session_factory.begin() as session:
        insert_rows(session.connection(), [(LINKS, links), (MESSAGES, [message]), (LINKS, [])])
    with runtime.session_factory() as session:
        stored = session.execute(sa.select(LINKS.table).order_by(LINKS.table.c.key_digest)).all()
        assert [row._asdict() for row in stored] == links
        line = session.execute(sa.select(MESSAGES.table)).one()._asdict()
        assert line == {**message, "received_at": received.astimezone(dt.UTC)}
        assert line["received_at"].tzinfo is not None

    twin = {**message, "id": uuid.uuid4()}  # the same control id: the log's unique key refuses it
    with pytest.raises(IntegrityError), runtime.session_factory.begin() as session:
        insert_rows(session.connection(), [(LINKS, [_link(facility, 4, None, None)]), (MESSAGES, [twin])])
    with runtime.session_factory() as session:  # nothing of the failed batch was kept
        assert session.scalar(sa.select(sa.func.count()).select_from(LINKS.table)) == 3
