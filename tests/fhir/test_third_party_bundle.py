"""A third-party transaction Bundle (clinosim's data, references as `Type/<its id>`): its
Practitioner entries are matched by identifier to carnet's directory or kept as received
(audited), and the clinical entries referencing them are written through the gate, read back as
sent apart from id, meta and references rewritten. Posted again, the practitioners are matched,
not kept twice."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from carnet.audit.models import AuditEvent
from carnet.org.models import DirectoryEntry
from tests.factories import link_care, make_facility, make_physician, register_patient
from tests.fhir import clinosim_data
from tests.fhir.conftest import Server
from tests.fhir.test_clinosim_round_trip import _rewritten, _server_parts_removed


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return clinosim_data.read(
        clinosim_data.generate(tmp_path_factory.mktemp("clinosim"), population=20, seed=42)
    )


def _bundle(
    resources: list[dict[str, Any]], patient: str, carnet_patient: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One patient's immunizations and problems (those naming no stay), with the practitioners
    they name; the patient is the one carnet holds (matched by the integrator)."""
    clinical = [
        copy.deepcopy(r)
        for r in resources
        if r["resourceType"] in ("Immunization", "Condition")
        and (r.get("patient") or r.get("subject") or {}).get("reference") == f"Patient/{patient}"
        and "encounter" not in r
        and clinosim_data.valid_r4(r)
    ][:40]
    for r in clinical:
        (r.get("patient") or r["subject"])["reference"] = f"Patient/{carnet_patient}"
    named = {
        ref["reference"]
        for r in clinical
        for element in ("performer", "recorder", "asserter")
        for ref in (
            [p.get("actor") or {} for p in r.get(element) or []]
            if isinstance(r.get(element), list)
            else [r.get(element) or {}]
        )
        if ref.get("reference")
    }
    practitioners = [
        r for r in resources if f"Practitioner/{r.get('id')}" in named and r["resourceType"] == "Practitioner"
    ]
    entries = [
        {
            "fullUrl": f"https://generator.example/fhir/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "POST", "url": r["resourceType"]},
        }
        for r in practitioners + clinical
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, practitioners + clinical


def test_a_third_party_transaction_bundle_is_taken_whole(
    fhir_server: Server, cohort: list[dict[str, Any]]
) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    mine = register_patient(runtime, facility, family="Tiers").id
    link_care(
        runtime, patient_id=uuid.UUID(str(mine)), practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    counts: dict[str, int] = {}
    for r in cohort:
        if r["resourceType"] in ("Immunization",):
            counts[r["patient"]["reference"]] = counts.get(r["patient"]["reference"], 0) + 1
    source_patient = max(counts, key=lambda k: counts[k]).partition("/")[2]
    bundle, sent = _bundle(cohort, source_patient, str(mine))
    client = fhir_server.client_for(doctor)

    answer = client.execute("", method="post", data=bundle)
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses and all(s.startswith("201") for s in statuses), statuses
    ids = {
        f"{r['resourceType']}/{r['id']}": e["response"]["location"].split("/")[1]
        for r, e in zip(sent, answer["entry"], strict=True)
    }
    types = {key: key.partition("/")[0] for key in ids}
    for resource, entry in zip(sent, answer["entry"], strict=True):
        location = entry["response"]["location"].split("/_history")[0]
        read = client.execute(location, method="get")
        assert _server_parts_removed(dict(read)) == _server_parts_removed(
            _rewritten(copy.deepcopy(resource), ids, types)
        )
    with runtime.session_factory() as session:
        kept = session.scalar(
            select(func.count()).select_from(DirectoryEntry).where(DirectoryEntry.facility_id == facility)
        )
        assert kept == sum(1 for r in sent if r["resourceType"] == "Practitioner")
        # Kept by the transaction's first step: its one audit event lists them (no event apart).
        listed = session.scalars(
            select(AuditEvent.resource_ids).where(AuditEvent.kind == "phi:resource:transaction")
        ).all()
        entries = session.scalars(select(DirectoryEntry.id).where(DirectoryEntry.facility_id == facility))
        assert len(listed) == 1 and {str(e) for e in entries} <= set(json.loads(listed[0]))

    # Posted again: the practitioners are the ones kept (matched by identifier), not new ones.
    again = client.execute("", method="post", data=bundle)
    practitioners = [
        e for r, e in zip(sent, again["entry"], strict=True) if r["resourceType"] == "Practitioner"
    ]
    assert practitioners and all(e["response"]["status"] == "200 OK" for e in practitioners)
    assert {e["response"]["location"] for e in practitioners} == {
        e["response"]["location"]
        for r, e in zip(sent, answer["entry"], strict=True)
        if r["resourceType"] == "Practitioner"
    }
    with runtime.session_factory() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(DirectoryEntry).where(DirectoryEntry.facility_id == facility)
            )
            == kept
        )


def test_a_reference_the_bundle_does_not_hold_is_refused_naming_the_element(
    fhir_server: Server, cohort: list[dict[str, Any]], tmp_path: Path
) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    mine = register_patient(runtime, facility, family="Tiers").id
    link_care(
        runtime, patient_id=uuid.UUID(str(mine)), practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    immunization = copy.deepcopy(
        next(r for r in cohort if r["resourceType"] == "Immunization" and r.get("performer"))
    )
    immunization["patient"]["reference"] = f"Patient/{mine}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": immunization, "request": {"method": "POST", "url": "Immunization"}}],
    }
    from fhirpy.base.exceptions import OperationOutcome

    with pytest.raises(OperationOutcome) as refused:
        fhir_server.client_for(doctor).execute("", method="post", data=bundle)
    assert "Immunization.performer.actor" in str(refused.value)
