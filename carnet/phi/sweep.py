"""The export sweeper: asynchronous exports nobody finished or nobody claimed.

A job still "running" past `EXPORT_JOB_TIMEOUT` lost its worker (a crash, a restart): it is
marked failed with a plain reason, so its requester's poll says so instead of waiting forever.
A completed file left unclaimed past `EXPORT_FILE_WINDOW` is erased (status expired) even if
nobody polls it again. Run by each server on a timer (`run_periodically`) and by
`carnet exports sweep`; each run goes through the audited system door and writes one
`phi:resource:export` event naming the jobs it changed.

Every change is a conditional UPDATE (`WHERE status = 'running'` ...): a worker finishing a job
at the same moment, or a sweeper of another process, wins or loses cleanly, never half-way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

import anyio.to_thread
from sqlalchemy import select, update

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.patients.models import ExportFile
from carnet.phi.gate import EXPORT_FILE_WINDOW, EXPORT_JOB_TIMEOUT, STUCK_EXPORT
from carnet.phi.system import system_access
from carnet.runtime import Runtime

log = logging.getLogger(__name__)
SWEEP_BATCH = 500  # jobs changed per run, at most (the next run takes the rest)


@dataclass(frozen=True)
class SweepReport:
    failed: list[str] = field(default_factory=list)  # stuck jobs now failed
    erased: list[str] = field(default_factory=list)  # unclaimed files now erased (expired)


def sweep_exports(
    runtime: Runtime,
    *,
    stuck_after: dt.timedelta = EXPORT_JOB_TIMEOUT,
    file_window: dt.timedelta = EXPORT_FILE_WINDOW,
    operator: str = "export-sweeper",
) -> SweepReport:
    """Fail the jobs running for longer than `stuck_after`; erase the files completed longer
    than `file_window` ago and never downloaded. Returns the ids of the jobs it changed."""
    if stuck_after < dt.timedelta(minutes=1) or file_window < dt.timedelta(minutes=1):
        raise InvalidInput("the sweeper's limits are at least one minute")
    now = clock.now()
    reason = "export sweeper: fail stuck export jobs, erase unclaimed export files"
    with system_access(runtime, reason=reason, operator=operator) as door:
        session = door.session
        stuck = list(
            session.scalars(
                select(ExportFile.id)
                .where(ExportFile.status == "running", ExportFile.created_at < now - stuck_after)
                .order_by(ExportFile.created_at)
                .limit(SWEEP_BATCH)
            )
        )
        failed = []
        for job_id in stuck:
            changed = session.execute(
                update(ExportFile)
                .where(ExportFile.id == job_id, ExportFile.status == "running")
                .values(status="failed", failure=STUCK_EXPORT, ndjson_ct=None, completed_at=now)
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                failed.append(str(job_id))
        unclaimed = list(
            session.scalars(
                select(ExportFile.id)
                .where(ExportFile.status == "completed", ExportFile.completed_at < now - file_window)
                .order_by(ExportFile.completed_at)
                .limit(SWEEP_BATCH)
            )
        )
        erased = []
        for job_id in unclaimed:
            changed = session.execute(
                update(ExportFile)
                .where(ExportFile.id == job_id, ExportFile.status == "completed")
                .values(status="expired", ndjson_ct=None)
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                erased.append(str(job_id))
        if failed or erased:
            door.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.PHI_EXPORT,
                    outcome=Outcome.SUCCESS,
                    actor=door.actor,
                    resource_type="Patient",
                    resource_ids=(failed + erased)[:200],
                    query="export-sweep",
                    policy_reason=(
                        f"{len(failed)} export job(s) running over {_minutes(stuck_after)} min failed;"
                        f" {len(erased)} unclaimed file(s) older than {_minutes(file_window)} min erased"
                    ),
                ),
            )
    return SweepReport(failed=failed, erased=erased)


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)


async def run_periodically(runtime: Runtime, *, every: float, first_after: float = 60.0) -> None:
    """The server's timer: sweep now and then until cancelled (at shutdown). A failed sweep
    is logged by its kind only (never data) and tried again at the next tick."""
    await asyncio.sleep(min(first_after, every))
    while True:
        try:
            report = await anyio.to_thread.run_sync(lambda: sweep_exports(runtime))
            if report.failed or report.erased:
                log.info("export sweep: %d failed, %d erased", len(report.failed), len(report.erased))
        except Exception as exc:  # keep the timer alive; the next tick retries
            log.warning("export sweep failed (%s)", type(exc).__name__)
        await asyncio.sleep(every)
