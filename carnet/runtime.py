"""The process's long-lived parts, built once from settings: engine, keyring, audit, ledger.

Each bounded context contributes its service here; presentation layers (web, fhir, cli) receive
a Runtime and never build these themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from carnet.audit.checkpoints import Checkpointer
from carnet.audit.interfaces import AuditWriter
from carnet.audit.writer import SqlAuditWriter
from carnet.crypto.keyring import Keyring
from carnet.crypto.keys import FileKeyProvider, KeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine, make_session_factory
from carnet.detection.administration import WatchedAuditWriter
from carnet.detection.interfaces import ExposureLedger
from carnet.detection.ledger import build_ledger
from carnet.kernel.errors import ConfigurationError
from carnet.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    keys: KeyProvider
    keyring: Keyring
    audit: AuditWriter
    ledger: ExposureLedger
    # Services of later bounded contexts register themselves here by name.
    services: dict[str, Any] = field(default_factory=dict)
    # Signs audit checkpoints after commit (every N events or T seconds).
    checkpointer: Checkpointer | None = None

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()  # pins the tail this process wrote, before the engine goes
        self.engine.dispose()


def build_runtime(settings: Settings, *, engine: Engine | None = None, check_schema: bool = True) -> Runtime:
    """Open the database and keys; refuse to start on a stale schema or a wrong key file."""
    engine = engine or make_engine(settings.resolved_database_url)
    if check_schema:
        try:
            up_to_date = migrate.is_up_to_date(engine)
        except Exception as exc:
            raise ConfigurationError(f"cannot reach the database: {type(exc).__name__}") from None
        if not up_to_date:
            raise ConfigurationError("the database schema is not current: run `carnet db upgrade`")
    session_factory = make_session_factory(engine)
    keys = FileKeyProvider(settings.resolved_key_file)
    # carnet.identity wraps TOTP secrets with the KEK; its services find the provider here.
    session_factory.configure(info={"carnet.key_provider": keys})
    keyring = Keyring(keys, session_factory)
    keyring.load()
    checkpointer = Checkpointer.from_settings(settings, engine)
    from carnet.operations.instrument import instrument_ledger, observe_audit

    audit = SqlAuditWriter(on_commit=checkpointer.note_committed, observer=observe_audit)
    # containment audits go through the same writer; exposures are counted per channel
    ledger = instrument_ledger(build_ledger(settings, audit=audit))
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        keys=keys,
        keyring=keyring,
        # Detection reads every access-widening action where it is audited (a burst contains).
        audit=WatchedAuditWriter(audit, ledger),
        ledger=ledger,
        checkpointer=checkpointer,
    )
