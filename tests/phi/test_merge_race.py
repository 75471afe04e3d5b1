"""A write on a duplicate racing its merge (issue #9), on real PostgreSQL.

A write that files (or amends) a record under a patient holds the patient row (FOR SHARE) until
it commits; a merge holds both rows (FOR NO KEY UPDATE) before it re-files anything. Each test
stops one transaction inside the gate, with its locks held and nothing committed, starts the
other in a second thread, checks in pg_stat_activity that it waits on a lock, then lets the
first commit: a write that got there first has its record moved by the merge; one that came
second is refused ("merged into ...: write there"), audited, and writes nothing; an amendment
that came second is made under the record kept. (SQLite cannot interleave at all: every gate
transaction takes its write lock first, `_serialise_on_sqlite`.)
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.db.engine import make_engine
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.patients.models import Patient, ResourceVersion
from carnet.phi import importer
from carnet.phi.gate import Gate
from carnet.phi.kernel import GuardedTx
from carnet.phi.schemas import AppointmentInput
from carnet.records.models import ClinicalNote, Observation
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from carnet.settings import Settings
from tests.conftest import _empty_postgres, _runtime_for
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient

pytestmark = pytest.mark.postgres

TIMEOUT = 30.0


@pytest.fixture
def pg_runtime(postgres_database: str, settings: Settings) -> Iterator[Runtime]:
    """PostgreSQL only: SQLite serialises gate transactions, there is no race to stage."""
    yield from _runtime_for(postgres_database, settings)
    engine = make_engine(postgres_database)
    _empty_postgres(engine)
    engine.dispose()


class _Pause:
    """Stops the gate operation running in the thread named `thread` right after its first
    versioned snapshot (its rows written, its locks held, nothing committed) until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, thread: str) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        original = GuardedTx.snapshot
        pause = self

        def snapshot(tx: GuardedTx, *args: Any, **kwargs: Any) -> None:
            original(tx, *args, **kwargs)
            if threading.current_thread().name == thread and not pause.reached.is_set():
                pause.reached.set()
                pause.release.wait(TIMEOUT)

        monkeypatch.setattr(GuardedTx, "snapshot", snapshot)

    def wait_reached(self) -> None:
        assert self.reached.wait(TIMEOUT), "the paused operation never reached its snapshot"


@pytest.fixture
def pause_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], _Pause]]:
    """`pause_in("merger")`: a _Pause for that thread; released at teardown even if the test
    failed, so the paused transaction ends before the database is emptied."""
    made: list[_Pause] = []

    def make(thread: str) -> _Pause:
        made.append(_Pause(monkeypatch, thread))
        return made[-1]

    yield make
    for pause in made:
        pause.release.set()


@dataclass
class _Run:
    thread: threading.Thread
    result: list[Any] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"{self.thread.name} did not finish"


def _start(name: str, operation: Callable[[], Any]) -> _Run:
    run = _Run(thread=threading.Thread(name=name, daemon=True))

    def body() -> None:
        try:
            run.result.append(operation())
        except BaseException as exc:  # handed to the test thread
            run.error.append(exc)

    run.thread = threading.Thread(target=body, name=name, daemon=True)
    run.thread.start()
    return run


def _wait_blocked(runtime: Runtime, statement_fragment: str) -> None:
    """Until a backend of this database waits on a lock while running a statement containing
    `statement_fragment` (the row lock the test expects to be contended)."""
    deadline = time.monotonic() + TIMEOUT
    with runtime.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE :fragment"
                ),
                {"fragment": f"%{statement_fragment}%"},
            )
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    pytest.fail(f"no transaction waited on a lock in a statement with {statement_fragment!r}")


@dataclass
class _Scene:
    facility: uuid.UUID
    source: str
    target: str
    clerk: Actor
    doctor: Actor


@pytest.fixture
def scene(pg_runtime: Runtime) -> _Scene:
    """Two records of one person; the physician cares for the duplicate (the source)."""
    facility = make_facility(pg_runtime)
    clerk = make_account(pg_runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    source = register_patient(pg_runtime, facility, family="Racine", given="Anne", by=clerk).id
    target = register_patient(pg_runtime, facility, family="Racine", given="Annie", by=clerk).id
    doctor = make_physician(pg_runtime, facility)
    assert doctor.practitioner_id is not None
    link_care(pg_runtime, patient_id=source, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return _Scene(facility=facility, source=source, target=target, clerk=clerk, doctor=doctor)


def _merge(runtime: Runtime, scene: _Scene) -> Callable[[], Any]:
    return lambda: Gate(runtime, scene.clerk).merge_patients(
        source_id=scene.source,
        target_id=scene.target,
        source_version=1,
        target_version=1,
        reason="même personne, prénom mal saisi",
    )


def _notes(runtime: Runtime) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(ClinicalNote.id, ClinicalNote.patient_id, ClinicalNote.version_id)
        ).all()
    return [(i, p, v) for i, p, v in rows]


def _version_owner(runtime: Runtime, note_id: uuid.UUID, version: int) -> uuid.UUID:
    with runtime.session_factory() as session:
        owner = session.scalar(
            sa.select(ResourceVersion.patient_id).where(
                ResourceVersion.resource_id == note_id, ResourceVersion.version_id == version
            )
        )
    assert owner is not None
    return owner


def test_a_write_holding_the_duplicate_makes_the_merge_wait_and_its_record_moves(
    pg_runtime: Runtime, scene: _Scene, pause_in: Callable[[str], _Pause]
) -> None:
    pause = pause_in("writer")
    writer = _start(
        "writer",
        lambda: Gate(pg_runtime, scene.doctor).write_note(
            patient_id=scene.source, kind="11506-3", title="Consultation", text="Toux sèche."
        ),
    )
    pause.wait_reached()
    merger = _start("merger", _merge(pg_runtime, scene))
    _wait_blocked(pg_runtime, "FOR NO KEY UPDATE")  # the merge waits for the note's commit
    pause.release.set()
    writer.join()
    merger.join()
    assert not writer.error and not merger.error, (writer.error, merger.error)
    note = writer.result[0]
    # The note committed under the duplicate first; the merge then moved it with the rest.
    assert _notes(pg_runtime) == [(uuid.UUID(note.id), uuid.UUID(scene.target), 1)]
    assert merger.result[0].id == scene.target


def test_a_write_arriving_during_the_merge_waits_then_is_refused_and_audited(
    pg_runtime: Runtime, scene: _Scene, pause_in: Callable[[str], _Pause]
) -> None:
    """The desk books on the duplicate while the merge runs: it is told to write to the record
    kept. (A physician whose care relationship moved with the records gets NotFound, as after
    any merge: test_merge.)"""
    assert scene.doctor.practitioner_id is not None
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    booking = AppointmentInput(
        patient_id=scene.source,
        practitioner_id=str(scene.doctor.practitioner_id),
        start_at=start,
        end_at=start + dt.timedelta(minutes=20),
    )
    pause = pause_in("merger")
    merger = _start("merger", _merge(pg_runtime, scene))
    pause.wait_reached()  # the merge has moved the records and holds both patients
    writer = _start("writer", lambda: Gate(pg_runtime, scene.clerk).book_appointment(data=booking))
    _wait_blocked(pg_runtime, "FOR SHARE")  # the booking waits for the merge's commit
    pause.release.set()
    merger.join()
    writer.join()
    assert not merger.error, merger.error
    assert len(writer.error) == 1 and isinstance(writer.error[0], InvalidInput)
    assert f"merged into Patient/{scene.target}: write there" in str(writer.error[0])
    with pg_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Appointment)) == 0
        refused = session.execute(
            sa.select(AuditEvent.outcome, AuditEvent.policy_reason, AuditEvent.patient_ids).where(
                AuditEvent.account_id == scene.clerk.account_id, AuditEvent.resource_type == "Appointment"
            )
        ).all()
    assert len(refused) == 1
    outcome, reason, patients = refused[0]
    assert outcome == "error" and "merged into" in (reason or "") and scene.source in patients


def test_an_amendment_during_the_merge_waits_then_is_made_under_the_record_kept(
    pg_runtime: Runtime, scene: _Scene, pause_in: Callable[[str], _Pause]
) -> None:
    doctor = Gate(pg_runtime, scene.doctor)
    note = doctor.write_note(patient_id=scene.source, kind="11506-3", title="Consultation", text="Toux.")
    pause = pause_in("merger")
    merger = _start("merger", _merge(pg_runtime, scene))
    pause.wait_reached()
    amender = _start(
        "amender",
        lambda: doctor.amend_note(
            note_id=note.id, expected_version=1, text="Toux grasse.", reason="précision"
        ),
    )
    _wait_blocked(pg_runtime, "FOR SHARE")
    pause.release.set()
    merger.join()
    amender.join()
    assert not merger.error and not amender.error, (merger.error, amender.error)
    note_id = uuid.UUID(note.id)
    assert _notes(pg_runtime) == [(note_id, uuid.UUID(scene.target), 2)]
    # Version 1 was written under the duplicate; the amendment saw the note moved.
    assert _version_owner(pg_runtime, note_id, 1) == uuid.UUID(scene.source)
    assert _version_owner(pg_runtime, note_id, 2) == uuid.UUID(scene.target)


def test_an_amendment_holding_the_duplicate_ends_before_the_merge_moves_the_record(
    pg_runtime: Runtime, scene: _Scene, pause_in: Callable[[str], _Pause]
) -> None:
    doctor = Gate(pg_runtime, scene.doctor)
    note = doctor.write_note(patient_id=scene.source, kind="11506-3", title="Consultation", text="Toux.")
    pause = pause_in("amender")
    amender = _start(
        "amender",
        lambda: doctor.amend_note(
            note_id=note.id, expected_version=1, text="Toux grasse.", reason="précision"
        ),
    )
    pause.wait_reached()
    merger = _start("merger", _merge(pg_runtime, scene))
    _wait_blocked(pg_runtime, "FOR NO KEY UPDATE")
    pause.release.set()
    amender.join()
    merger.join()
    assert not merger.error and not amender.error, (merger.error, amender.error)
    note_id = uuid.UUID(note.id)
    assert _notes(pg_runtime) == [(note_id, uuid.UUID(scene.target), 2)]
    assert _version_owner(pg_runtime, note_id, 2) == uuid.UUID(scene.source)


def test_an_import_checked_before_the_merge_files_nothing_on_the_duplicate(
    pg_runtime: Runtime, scene: _Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`carnet import` checked the reference (not merged), then the merge committed before the
    import's transaction: the import reads the patient again under its lock and writes nothing."""
    real_access = importer.system_access

    def merge_first(runtime: Runtime, **kwargs: Any) -> Any:
        _merge(pg_runtime, scene)()  # commits between the check and the write
        return real_access(runtime, **kwargs)

    monkeypatch.setattr(importer, "system_access", merge_first)
    heart_rate = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{scene.source}"},
        "effectiveDateTime": "2026-01-02T10:00:00+00:00",
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    path = tmp_path / "Observation.ndjson"
    path.write_text(json.dumps(heart_rate) + "\n", encoding="utf-8")
    report = importer.import_files(
        pg_runtime, paths=[path], facility_id=scene.facility, operator="test-import"
    )
    assert report.accepted == {}
    assert [r.source for r in report.rejected] == ["Observation.ndjson:1"]
    assert f"merged into Patient/{scene.target} during the import" in json.dumps(report.rejected[0].outcome)
    with pg_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Observation)) == 0
        merged = session.get(Patient, uuid.UUID(scene.source))
        assert merged is not None and merged.merged_into_id == uuid.UUID(scene.target)


def test_a_bundle_crossing_the_merge_is_a_conflict_to_retry_not_a_server_error(
    pg_runtime: Runtime, scene: _Scene, pause_in: Callable[[str], _Pause]
) -> None:
    """A transaction Bundle writes on the target, then on the source; the merge locks the source,
    then waits for the target. The bundle's second entry then waits for the merge: a cycle, which
    PostgreSQL ends by rolling one of them back. That one is a Conflict (412, try again),
    audited, and nothing of it is written; the other commits."""
    assert scene.doctor.practitioner_id is not None
    link_care(
        pg_runtime,
        patient_id=scene.target,
        practitioner_id=scene.doctor.practitioner_id,
        facility_id=scene.facility,
    )

    def note(patient: str) -> Callable[[list[Any]], dict[str, Any]]:
        return lambda _results: {
            "patient_id": patient,
            "kind": "11506-3",
            "title": "Suivi",
            "text": "Stable.",
        }

    pause = pause_in("bundle")
    bundle = _start(
        "bundle",
        lambda: Gate(pg_runtime, scene.doctor).run_transaction(
            steps=[("write_note", note(scene.target)), ("write_note", note(scene.source))]
        ),
    )
    pause.wait_reached()  # the first entry holds the target
    merger = _start("merger", _merge(pg_runtime, scene))
    _wait_blocked(pg_runtime, "FOR NO KEY UPDATE")  # the merge holds the source, waits for the target
    pause.release.set()
    bundle.join()
    merger.join()
    failed = bundle.error + merger.error
    assert len(failed) == 1 and isinstance(failed[0], Conflict) and "try again" in str(failed[0])
    with pg_runtime.session_factory() as session:
        errors = session.scalars(
            sa.select(AuditEvent.policy_reason).where(AuditEvent.outcome == "error")
        ).all()
    assert len(errors) == 1 and "try again" in (errors[0] or "")
    notes = _notes(pg_runtime)
    if merger.error:  # the bundle committed both notes; the duplicate is not merged
        assert sorted(p for _i, p, _v in notes) == sorted([uuid.UUID(scene.source), uuid.UUID(scene.target)])
    else:  # the merge committed; the bundle wrote nothing
        assert notes == []
