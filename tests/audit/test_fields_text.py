"""The audit event's columns and hashed bytes are the same texts as `json.dumps` and
`canonical_values` write them, whatever the values (the writer's shortcuts for plain text)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.access.roles import Role
from carnet.audit import writer
from carnet.audit.chain import CHAINED_FIELDS, canonical_values
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome

texts = st.text(max_size=40)
ids = st.one_of(st.uuids().map(str), texts)
optional = st.none() | texts


def reference_fields(seq: int, recorded_at: str, record: AuditRecord) -> dict[str, Any]:
    """`writer._fields` as it was written before its shortcuts (session 11)."""
    actor = record.actor
    return {
        "seq": seq,
        "recorded_at": recorded_at,
        "kind": record.kind.value,
        "outcome": record.outcome.value,
        "actor_ref": actor.actor_ref,
        "actor_kind": actor.kind.value,
        "account_id": str(actor.account_id) if actor.account_id else None,
        "username": actor.username,
        "roles": ",".join(sorted(r.value for r in actor.roles)),
        "session_id": str(actor.session_id) if actor.session_id else None,
        "client_id": actor.client_id,
        "address": actor.address,
        "user_agent": (actor.user_agent or "")[:300] or None,
        "purpose_of_use": actor.purpose_of_use.value,
        "resource_type": record.resource_type,
        "resource_ids": json.dumps(list(record.resource_ids)),
        "patient_ids": json.dumps(sorted({str(p) for p in record.patient_ids})),
        "query": (record.query or "")[:500] or None,
        "policy_reason": (record.policy_reason or "")[:500] or None,
        "break_glass_reason": (record.break_glass_reason or "")[:1000] or None,
        "detail": json.dumps(dict(sorted(record.detail.items())), ensure_ascii=False),
    }


records = st.builds(
    AuditRecord,
    kind=st.sampled_from(list(AuditKind)),
    outcome=st.sampled_from(list(Outcome)),
    actor=st.builds(
        Actor,
        kind=st.sampled_from(list(ActorKind)),
        username=texts,
        roles=st.frozensets(st.sampled_from(list(Role))),
        account_id=st.none() | st.uuids(),
        session_id=st.none() | st.uuids(),
        client_id=optional,
        address=optional,
        user_agent=optional,
        purpose_of_use=st.sampled_from(list(PurposeOfUse)),
    ),
    resource_type=optional,
    resource_ids=st.lists(ids, max_size=4).map(tuple),
    patient_ids=st.lists(st.uuids(), max_size=4),
    query=optional,
    policy_reason=optional,
    break_glass_reason=optional,
    detail=st.dictionaries(texts, texts, max_size=3),
)


@settings(max_examples=400)
@given(records)
def test_fields_and_hashed_bytes_are_the_reference_texts(record: AuditRecord) -> None:
    fields = writer._fields(0, "2026-12-07T18:00:00.000001+00:00", record)
    expected = reference_fields(0, "2026-12-07T18:00:00.000001+00:00", record)
    assert fields == expected
    assert all(type(fields[name]) is str or fields[name] is None for name in CHAINED_FIELDS[1:])
    _sql, params = writer.append_one_statement(record)
    hashed = [params[name] for name in CHAINED_FIELDS[1:]]
    assert params["rest"] == b"\t" + canonical_values(hashed)


@given(st.lists(ids, max_size=6))
def test_json_texts_are_json_dumps(values: list[str]) -> None:
    assert writer._json_texts(values) == json.dumps(values)
    assert writer._json_texts(tuple(values)) == json.dumps(values)


def test_json_texts_of_what_is_not_text_are_json_dumps() -> None:
    assert writer._json_texts([1, "a"]) == json.dumps([1, "a"])  # type: ignore[list-item]
    assert writer._json_texts([str(uuid.UUID(int=5)), "é", 'a"b']) == json.dumps(
        [str(uuid.UUID(int=5)), "é", 'a"b']
    )
