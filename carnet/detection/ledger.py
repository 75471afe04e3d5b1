"""Exposure ledger in the application database. Detection rules read it (carnet.detection)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import insert
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.detection.interfaces import Channel
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.ids import new_id


class SqlExposureLedger:
    def record(
        self,
        session: Session,
        *,
        actor: Actor,
        patient_ids: Sequence[uuid.UUID],
        channel: Channel,
        resource_type: str,
    ) -> None:
        distinct = sorted(set(patient_ids))
        if not distinct:
            return
        at = clock.now()
        session.execute(
            insert(Exposure),
            [
                {
                    "id": new_id(),
                    "actor_ref": actor.actor_ref,
                    "patient_id": p,
                    "channel": channel.value,
                    "resource_type": resource_type,
                    "at": at,
                    "audit_seq": None,
                }
                for p in distinct
            ],
        )
