"""Group commit (carnet/phi/grouped.py, `InterfaceService.receive_many`): messages received
together are applied in one transaction, a savepoint each, and answer, write and audit exactly
as the same messages applied one by one (`receive`, one guarded transaction each).

The equivalence is checked on two worlds in one hospital, built alike: the same scenario (new
reports, a correction in the same batch as the report it corrects, a message failing on its
last result, an unknown patient, a replay, a control id reused for another message) is sent
one by one for one set of patients and as one batch for another; the ACKs, records, versions,
links, message log and audit events must be the same once each world's ids are named alike.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import select

from carnet.audit.models import AuditEvent
from carnet.identity.models import Account
from carnet.interfaces.models import Interface, InterfaceLink, InterfaceMessage
from carnet.interfaces.service import InterfaceService, Peer
from carnet.patients.models import ResourceVersion
from carnet.phi import grouped
from carnet.records.models import DiagnosticReport, Observation
from carnet.runtime import Runtime
from tests.interfaces.conftest import Hospital, serve
from tests.interfaces.helpers import Obx, Person, adt, merge, msa, oru, send
from tests.interfaces.records import audit_of, counts, log_line

PANEL = [
    Obx("718-7", "13.5", "g/dL", reference="12-16"),
    Obx("789-8", "4.6", "10*6/uL", reference="4.2-5.4", display="Erythrocytes"),
    Obx("6690-2", "11.2", "10*3/uL", reference="4-10", flags="H", display="Leukocytes"),
    Obx("777-3", "250", "10*3/uL", reference="150-400", display="Platelets"),
    Obx("5909-7", "see note", "", kind="ST", reference="", flags="", display="Blood smear"),
]
PEER = Peer("127.0.0.1")
_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d)?")


def _scenario(world: str) -> tuple[list[Person], list[str]]:
    """Three patients of `world` and a fourth, merged into the second before the messages
    (`_merge_duplicate`), and the messages sent for them, in order."""
    people = [
        Person(ipp=f"{world}-P{n}", family=f"FAM{world}", given=f"G{n}", birth=f"19{60 + n}0101")
        for n in range(4)
    ]
    first = oru(f"{world}-1", people[0], PANEL, filler=f"{world}-F1")
    broken = [*PANEL[:4], Obx("5909-7", "twelve", "g/dL")]  # fails on its last result
    messages = [
        first,
        oru(f"{world}-2", people[1], PANEL[:3], filler=f"{world}-F2"),
        oru(f"{world}-3", people[2], broken, filler=f"{world}-F3"),
        # Corrects the first message's report, in the same batch: applied after it.
        oru(
            f"{world}-4",
            people[0],
            [Obx("718-7", "12.9", "g/dL", status="C"), PANEL[1]],
            filler=f"{world}-F1",
            status="C",
        ),
        oru(f"{world}-5", Person(ipp=f"{world}-NOBODY"), PANEL[:1], filler=f"{world}-F5"),
        first,  # a replay (the sender lost the ACK)
        oru(f"{world}-2", people[2], PANEL[:1], filler=f"{world}-F6"),  # a control id reused
        oru(f"{world}-7", people[2], PANEL[1:3], filler=f"{world}-F7"),
        # The sender's number of the merged duplicate: filed under the record kept.
        oru(f"{world}-8", people[3], PANEL[:2], filler=f"{world}-F8"),
        # The first patient again, after messages that wrote links of the group's.
        oru(f"{world}-9", people[0], PANEL[3:], filler=f"{world}-F9"),
    ]
    return people, messages


def _merge_duplicate(service: InterfaceService, people: list[Person]) -> None:
    candidates = service.candidates(PEER)
    duplicate = people[3]
    for message in (
        adt("A03", f"DIS-{duplicate.ipp}", duplicate, visit=f"V-{duplicate.ipp}"),  # one stay each
        merge(f"MRG-{duplicate.ipp}", people[1], duplicate),
    ):
        ack = service.receive(message, peer=PEER, candidates=candidates)
        assert msa(ack)[1] == "AA", msa(ack)


def _register(service: InterfaceService, people: list[Person]) -> None:
    candidates = service.candidates(PEER)
    for person in people:
        message = adt("A04", f"REG-{person.ipp}", person, klass="O", visit=f"V-{person.ipp}")
        assert msa(service.receive(message, peer=PEER, candidates=candidates))[1] == "AA"


def _answer(ack: str) -> list[str]:
    """What an ACK says, without its own ids and times: MSA-1, its text, and ERR."""
    segments = {s.split("|", 1)[0]: s.split("|") for s in ack.split("\r") if s}
    said = [segments["MSA"][1], *segments["MSA"][3:]]
    return said + segments.get("ERR", [])[1:]


class Names:
    """Each world's ids named in the order they are first seen, so two worlds compare."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        text = _TIME.sub("<time>", text)
        return _UUID.sub(
            lambda m: self.names.setdefault(m.group(0).replace("-", ""), f"<id{len(self.names)}>"), text
        )


def _world(runtime: Runtime, world: str, since: int, until: int) -> dict[str, Any]:
    """Everything the world's messages wrote, its ids named in order of appearance."""
    name = Names()
    with runtime.session_factory() as s:
        lab = s.scalar(select(Interface.id).where(Interface.name == "LAB"))
        log = s.scalars(
            select(InterfaceMessage)
            .where(InterfaceMessage.interface_id == lab, InterfaceMessage.control_id.like(f"{world}-%"))
            .order_by(InterfaceMessage.control_id)
        ).all()
        lines = [
            (m.control_id[len(world) :], m.status, m.ack_code, m.reason, m.replays, name(m.patient_ids))
            for m in log
        ]
        patients = {p for m in log for p in m.patient_ids.split()}
        observations = s.scalars(
            select(Observation)
            .where(Observation.patient_id.in_([uuid.UUID(p) for p in patients]))
            .order_by(Observation.code, Observation.created_at)
        ).all()
        reports = s.scalars(
            select(DiagnosticReport).where(DiagnosticReport.patient_id.in_([uuid.UUID(p) for p in patients]))
        ).all()
        record_ids = [o.id for o in observations] + [r.id for r in reports]
        versions = s.scalars(select(ResourceVersion).where(ResourceVersion.resource_id.in_(record_ids))).all()
        links = s.scalars(select(InterfaceLink).where(InterfaceLink.target_id.in_(record_ids))).all()
        events = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.username == "interface:LAB", AuditEvent.seq > since, AuditEvent.seq <= until)
            .order_by(AuditEvent.seq)
        ).all()

    def snapshot(v: ResourceVersion) -> str:
        body = runtime.keyring.decrypt(
            v.snapshot_ct, table="resource_versions", column="snapshot", row_id=v.id
        )
        # Ids named within each snapshot: the versions come back in no particular order.
        return Names()(json.dumps(json.loads(body or "{}"), sort_keys=True))

    return {
        "log": lines,
        "observations": sorted(
            (
                o.code,
                o.value_number,
                o.unit,
                o.value_text,
                o.status,
                o.version_id,
                o.reference_range,
                o.interpretation,
            )
            for o in observations
        ),
        "reports": sorted((r.code, r.status, r.version_id) for r in reports),
        "versions": Counter((v.resource_type, v.version_id, v.action) for v in versions),
        "snapshots": Counter(snapshot(v) for v in versions),
        "links": Counter((link.kind, link.reference_range, link.abnormal_flags) for link in links),
        # In one group the successes are audited at its commit, the failures after it: the
        # events are the same, their order in the chain may differ.
        "audit": Counter(
            (
                e.kind,
                e.outcome,
                e.policy_reason,
                e.query,
                len(e.resource_ids),
                len(e.patient_ids),
            )
            for e in events
        ),
    }


def _last_seq(runtime: Runtime) -> int:
    with runtime.session_factory() as s:
        return int(s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0)


def test_a_group_answers_writes_and_audits_as_the_same_messages_one_by_one(
    runtime: Runtime, hospital: Hospital
) -> None:
    service = InterfaceService(runtime)
    candidates = service.candidates(PEER)
    seen: list[int] = []
    real = grouped.run_group

    def spy(core: Any, guard: Any, runs: Any, *rest: Any) -> Any:
        seen.append(len(runs))
        return real(core, guard, runs, *rest)

    # One by one (the one path), then as one batch (a group), for two alike sets of patients.
    people, messages = _scenario("A")
    _register(service, people)
    _merge_duplicate(service, people)
    since_one = _last_seq(runtime)
    one_by_one = [_answer(service.receive(m, peer=PEER, candidates=candidates)) for m in messages]
    people, messages = _scenario("B")
    registered = _last_seq(runtime)
    _register(service, people)
    _merge_duplicate(service, people)
    since_group = _last_seq(runtime)
    from carnet.interfaces.operation import GroupLookups

    real_found = GroupLookups.found
    answered: list[str] = []  # the kinds of links answered from what the group read before

    def found(self: GroupLookups, kind: str, digest: str) -> Any:
        known, row = real_found(self, kind, digest)
        if known:
            answered.append(kind)
        return known, row

    grouped.run_group = spy  # type: ignore[assignment]
    GroupLookups.found = found  # type: ignore[method-assign]
    try:
        together = [_answer(a) for a in service.receive_many([(m, PEER, candidates) for m in messages])]
    finally:
        grouped.run_group = real  # type: ignore[assignment]
        GroupLookups.found = real_found  # type: ignore[method-assign]
    assert seen and max(seen) >= 5, seen  # the batch was applied as a group
    assert {"patient", "report"} <= set(answered), answered

    assert together == one_by_one
    assert [a[0] for a in together] == ["AA", "AA", "AE", "AA", "AE", "AA", "AE", "AA", "AA", "AA"]
    first = _world(runtime, "A", since_one, registered)
    second = _world(runtime, "B", since_group, _last_seq(runtime))
    assert first["audit"] and first["observations"]
    for part in first:
        assert second[part] == first[part], part
    # The message that failed on its last result wrote nothing (the group went on without it).
    assert log_line(runtime, "B-3").status == "rejected"
    assert log_line(runtime, "B-1").replays == 1
    # The duplicate's number (its link read with the group's, its patient merged) led to the
    # record kept, as one by one.
    assert log_line(runtime, "B-8").patient_ids == log_line(runtime, "B-2").patient_ids != ""


def test_a_contained_interface_is_refused_for_every_message_of_a_group(
    runtime: Runtime, hospital: Hospital
) -> None:
    service = InterfaceService(runtime)
    candidates = service.candidates(PEER)
    people, _ = _scenario("C")
    _register(service, people)
    before = counts(runtime, hospital.facility_id)
    with runtime.session_factory.begin() as s:
        lab = s.scalar(select(Interface).where(Interface.name == "LAB"))
        assert lab is not None
        s.get_one(Account, lab.account_id).status = "suspended"
    since = _last_seq(runtime)
    batch = [oru(f"C-{n}", people[n], PANEL[:2], filler=f"C-F{n}") for n in range(3)]
    answers = service.receive_many([(m, PEER, candidates) for m in batch])
    assert [msa(a)[1] for a in answers] == ["AR", "AR", "AR"]
    assert all("suspended" in msa(a)[3] for a in answers)
    assert counts(runtime, hospital.facility_id) == before
    events = [e for e in audit_of(runtime, "interface:LAB") if e.seq > since]
    assert [(e.kind, e.outcome) for e in events] == [("phi:resource:transaction", "denied")] * 3


def test_messages_on_several_connections_are_each_applied_once_and_acknowledged_after_commit(
    runtime: Runtime, hospital: Hospital
) -> None:
    service = InterfaceService(runtime)
    people = [Person(ipp=f"D-P{n}", family="DUVAL", given=f"G{n}") for n in range(4)]
    _register(service, people)
    before = counts(runtime, hospital.facility_id)
    since = _last_seq(runtime)
    answers: dict[int, list[str]] = {}

    def sender(port: int, n: int) -> None:
        answers[n] = send(
            port, *[oru(f"D-{n}-{k}", people[n], PANEL[:3], filler=f"D-F{n}-{k}") for k in range(5)]
        )

    for port in serve(runtime):
        threads = [threading.Thread(target=sender, args=(port, n)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(answers) == [0, 1, 2, 3]
    assert all(msa(a)[1] == "AA" for batch in answers.values() for a in batch)
    after = counts(runtime, hospital.facility_id)
    assert after["observations"] - before["observations"] == 4 * 5 * 3
    assert after["reports"] - before["reports"] == 4 * 5
    assert after["accepted"] - before["accepted"] == 20
    events = [e for e in audit_of(runtime, "interface:LAB") if e.seq > since]
    assert [(e.kind, e.outcome) for e in events] == [("phi:resource:transaction", "success")] * 20
    for n in range(4):  # each patient's messages applied in the order sent
        line = [log_line(runtime, f"D-{n}-{k}") for k in range(5)]
        assert [x.received_at for x in line] == sorted(x.received_at for x in line)


def test_a_group_takes_savepoints_only_once_a_message_failed_and_reads_no_care_relationship(
    runtime: Runtime, hospital: Hospital
) -> None:
    """Most groups have no failing message: they run without a savepoint per message; the
    first failure rolls the group back whole and it runs again with them (the answers, records
    and audit events are the one-by-one ones: the test above). An interface writes by the
    facility alone: its decisions read no care relationship."""
    from sqlalchemy import event

    service = InterfaceService(runtime)
    candidates = service.candidates(PEER)
    people = [Person(ipp=f"S-P{n}", family="FAMS", given=f"G{n}", birth=f"19{70 + n}0101") for n in range(2)]
    _register(service, people)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper() + " " + statement)

    clean = [oru(f"S-{n}", people[n], PANEL[:2], filler=f"S-F{n}") for n in range(2)]
    from carnet.db.prepared import PreparedSelect

    real_all = PreparedSelect.all

    def prepared(self: PreparedSelect, connection: Any, params: Any) -> Any:
        if connection.dialect.name == "postgresql":  # sent by psycopg itself: no Core event
            statements.append("SELECT " + str(self.statement))
        return real_all(self, connection, params)

    event.listen(runtime.engine, "before_cursor_execute", seen)
    PreparedSelect.all = prepared  # type: ignore[method-assign]
    try:
        answers = service.receive_many([(m, PEER, candidates) for m in clean])
        assert [msa(a)[1] for a in answers] == ["AA", "AA"]
        assert not [s for s in statements if s.startswith("SAVEPOINT")]
        assert not [s for s in statements if "care_relationships" in s]
        statements.clear()
        broken = oru("S-3", people[0], [Obx("5909-7", "twelve", "g/dL")], filler="S-F3")
        again = [broken, oru("S-4", people[1], PANEL[:1], filler="S-F4")]
        answers = service.receive_many([(m, PEER, candidates) for m in again])
        assert [msa(a)[1] for a in answers] == ["AE", "AA"]
        # The second run of the group: a savepoint per message that sends a statement (the
        # broken one fails before any: its links and patient were read with its group's).
        assert len([s for s in statements if s.startswith("SAVEPOINT")]) == 1
        # Each run read the group's links in one statement, and locked its patients in one.
        assert len([s for s in statements if s.startswith("SELECT") and "FROM interface_links" in s]) == 2
        assert len([s for s in statements if s.startswith("SELECT") and "FROM patients" in s]) == 2
    finally:
        event.remove(runtime.engine, "before_cursor_execute", seen)
        PreparedSelect.all = real_all  # type: ignore[method-assign]
    with runtime.session_factory() as s:
        lines = dict(
            s.execute(
                select(InterfaceMessage.control_id, InterfaceMessage.status).where(
                    InterfaceMessage.control_id.like("S-%")
                )
            ).all()
        )
    assert lines == {"S-0": "accepted", "S-1": "accepted", "S-3": "rejected", "S-4": "accepted"}


def _clean_scenario(world: str) -> tuple[list[Person], list[str]]:
    """Messages none of which fails, several reading what an earlier one of the batch wrote:
    a group runs them without savepoints, their rows kept and inserted at its end."""
    people = [
        Person(ipp=f"{world}-P{n}", family=f"FAM{world}", given=f"G{n}", birth=f"19{60 + n}0101")
        for n in range(3)
    ]
    preliminary = [
        Obx(o.code, o.value, o.unit, o.kind, o.reference, o.flags, "P", o.display) for o in PANEL[:3]
    ]
    messages = [
        oru(f"{world}-1", people[0], PANEL, filler=f"{world}-F1"),
        oru(f"{world}-2", people[1], PANEL[:3], filler=f"{world}-F2"),
        # Corrects the first message's report (whose links are still kept, not yet inserted).
        oru(
            f"{world}-3",
            people[0],
            [Obx("718-7", "12.9", "g/dL", status="C"), PANEL[1]],
            filler=f"{world}-F1",
            status="C",
        ),
        oru(f"{world}-4", people[2], preliminary, filler=f"{world}-F4", status="P"),
        oru(f"{world}-5", people[2], PANEL[:4], filler=f"{world}-F4"),  # its final, one result more
        oru(f"{world}-6", people[1], PANEL[2:], filler=f"{world}-F6"),
        oru(f"{world}-7", people[0], PANEL[:2], filler=f"{world}-F7"),
    ]
    return people, messages


def test_a_clean_group_inserts_its_rows_together_and_writes_what_one_by_one_writes(
    runtime: Runtime, hospital: Hospital
) -> None:
    """The group's plain rows (reports, results, versions, links, log lines) go out as one
    multi-row INSERT per table at its end, sent earlier only when a message reads back what an
    earlier one of the group wrote (its links); the answers, records, versions, links, log and
    audit events are those of the same messages one by one."""
    from carnet.db import prepared

    service = InterfaceService(runtime)
    candidates = service.candidates(PEER)
    people, messages = _clean_scenario("E")
    _register(service, people)
    since_one = _last_seq(runtime)
    one_by_one = [_answer(service.receive(m, peer=PEER, candidates=candidates)) for m in messages]
    people, messages = _clean_scenario("G")
    registered = _last_seq(runtime)
    _register(service, people)
    since_group = _last_seq(runtime)
    sent: list[list[tuple[str, int]]] = []
    real_insert, real_attempt = prepared.insert_rows, grouped._attempt
    attempts: list[bool] = []

    def spy_insert(connection: Any, batches: Any, **then: Any) -> Any:
        sent.append([(p.table.name, len(rows)) for p, rows in batches if rows])
        return real_insert(connection, batches, **then)

    def spy_attempt(core: Any, guard: Any, runs: Any, *, savepoints: bool, **rest: Any) -> Any:
        attempts.append(savepoints)
        return real_attempt(core, guard, runs, savepoints=savepoints, **rest)

    prepared.insert_rows = spy_insert  # type: ignore[assignment]
    grouped._attempt = spy_attempt  # type: ignore[assignment]
    try:
        together = [_answer(a) for a in service.receive_many([(m, PEER, candidates) for m in messages])]
    finally:
        prepared.insert_rows = real_insert  # type: ignore[assignment]
        grouped._attempt = real_attempt  # type: ignore[assignment]
    assert attempts == [False]  # one run of the group, without savepoints
    assert together == one_by_one
    assert [a[0] for a in together] == ["AA"] * 7
    # Sent before message 3 (it reads message 1's links), before message 5 (message 4's), and
    # at the end: each time one INSERT per table for every message kept since.
    assert [dict(batch)["interface_messages"] for batch in sent] == [2, 2, 3]
    # The last: message 5's new result's link and log line (its result recorded on its own
    # path), then messages 6 and 7 whole (a report and 3, then 2 results, each with its link).
    assert sent[-1] == [
        ("interface_links", 1 + 4 + 3),
        ("interface_messages", 3),
        ("diagnostic_reports", 2),
        ("observations", 3 + 2),
        ("resource_versions", 4 + 3),
    ]
    first = _world(runtime, "E", since_one, registered)
    second = _world(runtime, "G", since_group, _last_seq(runtime))
    assert first["audit"] and first["observations"] and first["links"]
    for part in first:
        assert second[part] == first[part], part
    # The group's events (appended in the rows' pipeline on PostgreSQL) chain as any others.
    from carnet.audit.checkpoints import FileCheckpointStore
    from carnet.audit.verify import verify

    assert runtime.checkpointer is not None
    runtime.checkpointer.checkpoint()
    report = verify(
        runtime.engine,
        store=FileCheckpointStore(runtime.settings.resolved_checkpoint_file),
        verifier=runtime.checkpointer.signer.verifier(),
    )
    assert report.ok, [p.describe() for p in report.problems]


def test_a_group_whose_kept_rows_fail_runs_again_with_savepoints(
    runtime: Runtime, hospital: Hospital
) -> None:
    """The kept rows refused at the group's end (a twin on another listener inserted a link or
    a log line first): nothing of the group is written, and it runs again message by message
    in savepoints, each sending its own rows."""
    from sqlalchemy.exc import IntegrityError

    from carnet.db import prepared

    service = InterfaceService(runtime)
    candidates = service.candidates(PEER)
    people = [Person(ipp=f"K-P{n}", family="FAMK", given=f"G{n}", birth=f"19{70 + n}0101") for n in range(2)]
    _register(service, people)
    before = counts(runtime, hospital.facility_id)
    since = _last_seq(runtime)
    real_send = prepared.DeferredRows.send
    refused: list[int] = []

    def failing(self: Any, connection: Any, **then: Any) -> Any:
        if not refused:
            refused.append(1)
            raise IntegrityError("INSERT", None, Exception("a twin's row"))
        return real_send(self, connection, **then)

    prepared.DeferredRows.send = failing  # type: ignore[method-assign]
    try:
        batch = [oru(f"K-{n}", people[n], PANEL[:2], filler=f"K-F{n}") for n in range(2)]
        answers = service.receive_many([(m, PEER, candidates) for m in batch])
    finally:
        prepared.DeferredRows.send = real_send  # type: ignore[method-assign]
    assert refused and [msa(a)[1] for a in answers] == ["AA", "AA"]
    after = counts(runtime, hospital.facility_id)
    assert after["observations"] - before["observations"] == 4
    assert after["reports"] - before["reports"] == 2
    events = [e for e in audit_of(runtime, "interface:LAB") if e.seq > since]
    assert [(e.kind, e.outcome) for e in events] == [("phi:resource:transaction", "success")] * 2
