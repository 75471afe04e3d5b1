"""The R4 interactions on top of each type's own routes (carnet.fhir.operations.interactions,
carnet.fhir.core.negotiation, carnet.fhir.core.api.resource_response): conditional update and
delete, PATCH (JSON Patch and merge patch), $validate, type and system _history scoped like a
search, 304 on If-None-Match / If-Modified-Since, Prefer, 406/415, HEAD, 412 on If-Match.
Each goes through the gate: the wrong role is refused and every access is audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.detection.models import Exposure
from carnet.identity import sessions
from carnet.patients.models import ResourceVersion
from carnet.runtime import Runtime
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _result

JSON = "application/fhir+json"


def _session(runtime: Runtime, actor: Actor) -> dict[str, str]:
    assert actor.account_id is not None
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=actor.account_id,
            privileged=actor.is_privileged,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent=f"interaction tests ({actor.username})",
        )
    return {
        "Cookie": f"carnet_session={issued.token}",
        "X-CSRF-Token": issued.csrf_token,
        "User-Agent": f"interaction tests ({actor.username})",
    }


class Api:
    """An httpx client (Starlette's TestClient) speaking as one staff session."""

    def __init__(self, app: Any, runtime: Runtime, actor: Actor) -> None:
        self.client = TestClient(app, base_url="http://testserver")
        self.headers = _session(runtime, actor)
        self.actor = actor

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if "json" in kwargs and "Content-Type" not in headers:
            headers["Content-Type"] = JSON
        return self.client.request(method, "/fhir/" + path.lstrip("/"), headers=headers, **kwargs)


@pytest.fixture
def clinic(sqlite_runtime: Runtime) -> Iterator[tuple[Runtime, Api, str, Any]]:
    runtime = sqlite_runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Garnier")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    app = create_app(runtime)
    yield runtime, Api(app, runtime, doctor), str(patient.id), (app, facility)


def _observation(api: Api, patient: str, value: float = 12.4, code: str = "718-7") -> dict[str, Any]:
    answer = api("POST", "Observation", json=_result(f"Patient/{patient}", code=code, value=value))
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def _kinds(runtime: Runtime, actor: Actor) -> list[tuple[str, str, str | None]]:
    return audit_rows(runtime, actor.account_id)


def _versions(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(ResourceVersion)) or 0)


# == reads: ETag, Last-Modified, 304, HEAD ======================================================
def test_read_has_etag_and_last_modified_and_304_is_an_audited_read(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient)
    first = api("GET", f"Observation/{created['id']}")
    assert first.status_code == 200
    assert first.headers["ETag"] == 'W/"1"'
    modified = parsedate_to_datetime(first.headers["Last-Modified"])
    assert modified.tzinfo is not None
    before = _kinds(runtime, api.actor)

    again = api("GET", f"Observation/{created['id']}", headers={"If-None-Match": 'W/"1"'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == 'W/"1"'
    since = api(
        "GET", f"Observation/{created['id']}", headers={"If-Modified-Since": first.headers["Last-Modified"]}
    )
    assert since.status_code == 304
    # A 304 is still the read it is: authorized, audited (and counted) before the comparison.
    after = _kinds(runtime, api.actor)
    assert after[len(before) :] == [("phi:resource:read", "success", "Observation")] * 2

    # A batch GET is answered in full whatever the batch request's own conditional headers.
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Observation/{created['id']}"}}],
    }
    answered = api("POST", "", json=batch, headers={"If-None-Match": 'W/"1"'})
    assert answered.status_code == 200, answered.text
    assert answered.json()["entry"][0]["resource"]["id"] == created["id"]
    stale = api("GET", f"Observation/{created['id']}", headers={"If-None-Match": 'W/"7"'})
    assert stale.status_code == 200 and stale.json()["id"] == created["id"]
    earlier = format_datetime(modified.replace(year=modified.year - 1), usegmt=True)
    assert (
        api("GET", f"Observation/{created['id']}", headers={"If-Modified-Since": earlier}).status_code == 200
    )


def test_a_304_is_refused_to_whom_may_not_read(clinic: Any) -> None:
    runtime, api, patient, (app, facility) = clinic
    created = _observation(api, patient)
    stranger = Api(app, runtime, make_physician(runtime, facility))  # no care relationship
    answer = stranger("GET", f"Observation/{created['id']}", headers={"If-None-Match": 'W/"1"'})
    assert answer.status_code == 404  # not a 304: the access is authorised first
    assert ("phi:resource:read", "denied", "Observation") in _kinds(runtime, stranger.actor)


def test_head_answers_the_get_headers_without_a_body_and_is_audited_like_a_get(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient)
    get = api("GET", f"Observation/{created['id']}")
    head = api("HEAD", f"Observation/{created['id']}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == get.headers["ETag"]
    assert head.headers["content-type"].startswith(JSON)
    # Audited exactly as the GET it mirrors: one read each, the same for a search.
    rows = _kinds(runtime, api.actor)
    assert rows[-2:] == [("phi:resource:read", "success", "Observation")] * 2
    api("GET", f"Observation?patient=Patient/{patient}")
    by_get = _kinds(runtime, api.actor)[-1]
    search = api("HEAD", f"Observation?patient=Patient/{patient}")
    assert search.status_code == 200 and search.content == b""
    assert _kinds(runtime, api.actor)[-1] == by_get
    # HEAD is for reads and searches: never an operation (a bulk export file is downloaded once).
    assert api("HEAD", f"$export-file/{uuid.uuid4()}").status_code == 405
    assert api("HEAD", f"Patient/{patient}/$everything").status_code == 405
    # A HEAD never reaches a write: it is a GET.
    assert api("HEAD", "Observation/does-not-exist").status_code == 404


# == negotiation: 406, 415 ======================================================================
def test_xml_is_refused_with_406_and_a_non_json_body_with_415(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient)
    before = _versions(runtime)
    for headers, path in (
        ({"Accept": "application/fhir+xml"}, f"Observation/{created['id']}"),
        ({}, f"Observation/{created['id']}?_format=xml"),
        ({}, "metadata?_format=application/fhir%2Bxml"),
    ):
        answer = api("GET", path, headers=headers)
        assert answer.status_code == 406, path
        assert answer.json()["resourceType"] == "OperationOutcome"
    # JSON among the acceptable ones is fine; q=0 is a refusal.
    assert (
        api(
            "GET", "metadata", headers={"Accept": "application/fhir+xml, application/fhir+json;q=0.5"}
        ).status_code
        == 200
    )
    assert api("GET", "metadata", headers={"Accept": "application/fhir+json;q=0"}).status_code == 406
    assert api("GET", "metadata?_format=json").status_code == 200
    xml = "<Observation xmlns='http://hl7.org/fhir'/>"
    answer = api("POST", "Observation", content=xml, headers={"Content-Type": "application/fhir+xml"})
    assert answer.status_code == 415
    assert answer.json()["issue"][0]["code"] == "not-supported"
    answer = api("PUT", f"Observation/{created['id']}", content="x", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415
    assert _versions(runtime) == before  # nothing changed


# == Prefer ====================================================================================
def test_prefer_return_minimal_representation_and_operation_outcome(clinic: Any) -> None:
    _runtime, api, patient, _ = clinic
    body = _result(f"Patient/{patient}")
    minimal = api("POST", "Observation", json=body, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["Location"].endswith("/_history/1") and minimal.headers["ETag"] == 'W/"1"'
    outcome = api("POST", "Observation", json=body, headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert outcome.json()["issue"][0]["severity"] == "information"
    full = api("POST", "Observation", json=body, headers={"Prefer": "return=representation"})
    assert full.status_code == 201 and full.json()["resourceType"] == "Observation"
    rid = full.json()["id"]
    changed = dict(full.json(), status="corrected", valueQuantity={"value": 9.9, "unit": "g/dL"})
    update = api(
        "PUT", f"Observation/{rid}", json=changed, headers={"If-Match": 'W/"1"', "Prefer": "return=minimal"}
    )
    assert update.status_code == 200 and update.content == b"" and update.headers["ETag"] == 'W/"2"'


# == If-Match on update: 412 ===================================================================
def test_an_update_at_a_stale_version_is_412_and_changes_nothing(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient)
    changed = dict(created, status="corrected", valueQuantity={"value": 10.0, "unit": "g/dL"})
    assert (
        api("PUT", f"Observation/{created['id']}", json=changed, headers={"If-Match": 'W/"1"'}).status_code
        == 200
    )
    before = _versions(runtime)
    again = dict(changed, valueQuantity={"value": 11.0, "unit": "g/dL"})
    stale = api("PUT", f"Observation/{created['id']}", json=again, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert _versions(runtime) == before


# == conditional update and delete =============================================================
def test_conditional_update_one_match_updates_none_creates_several_412(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient, code="777-3", value=250)
    query = f"Observation?patient=Patient/{patient}&code=http://loinc.org|777-3"
    changed = dict(created, status="corrected", valueQuantity={"value": 260, "unit": "g/dL"})
    changed.pop("id")
    # One match: that Observation's own update (If-Match as always).
    answer = api("PUT", query, json=changed, headers={"If-Match": 'W/"1"'})
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == created["id"] and answer.json()["meta"]["versionId"] == "2"
    # Without a version it is refused like any update: overwriting blind would lose a change.
    blind = {k: v for k, v in changed.items() if k != "meta"}
    assert api("PUT", query, json=blind).status_code == 400
    # meta.versionId stands for If-Match (as fhirpy sends it): here a stale one, 412.
    assert api("PUT", query, json=changed).status_code == 412
    # A body naming another id is refused.
    assert (
        api("PUT", query, json=dict(changed, id=str(uuid.uuid4())), headers={"If-Match": 'W/"2"'}).status_code
        == 400
    )
    # No match: created.
    fresh = _result(f"Patient/{patient}", code="2345-7", value=5.1)
    made = api("PUT", f"Observation?patient=Patient/{patient}&code=2345-7", json=fresh)
    assert made.status_code == 201 and made.json()["resourceType"] == "Observation"
    # Two matches: 412, nothing written.
    _observation(api, patient, code="2345-7", value=5.3)
    before = _versions(runtime)
    several = api(
        "PUT", f"Observation?patient=Patient/{patient}&code=2345-7", json=fresh, headers={"If-Match": 'W/"1"'}
    )
    assert several.status_code == 412 and _versions(runtime) == before
    # Without search parameters there is no conditional update.
    assert api("PUT", "Observation", json=fresh).status_code == 400
    kinds = [k for k, _, t in _kinds(runtime, api.actor) if t == "Observation"]
    assert "phi:resource:update" in kinds and "phi:resource:create" in kinds


def test_conditional_create_with_if_none_exist(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    condition = {"If-None-Exist": f"patient=Patient/{patient}&code=http://loinc.org|2160-0"}
    body = _result(f"Patient/{patient}", code="2160-0", value=80)
    first = api("POST", "Observation", json=body, headers=condition)
    assert first.status_code == 201 and first.headers["ETag"] == 'W/"1"'
    again = api("POST", "Observation", json=body, headers=condition)  # a retried post: nothing new
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    _observation(api, patient, code="2160-0", value=81)
    before = _versions(runtime)
    assert api("POST", "Observation", json=body, headers=condition).status_code == 412
    assert api("POST", "Observation", json=body, headers={"If-None-Exist": "_count=2"}).status_code == 400
    assert _versions(runtime) == before
    # The search is audited as any search is, before the create.
    kinds = [k for k, _, t in _kinds(runtime, api.actor) if t == "Observation"]
    assert kinds[:2] == [kinds[0], "phi:resource:create"] and kinds[0] != "phi:resource:create"
    # Without the header, a POST is the type's create as ever; an unknown type is a 404.
    assert api("POST", "Observation", json=body).status_code == 201
    assert api("POST", "Basic", json={"resourceType": "Basic"}).status_code == 404
    assert api("GET", "Basic").status_code == 404


def test_conditional_delete_single_match(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient, code="1751-7", value=40)
    _observation(api, patient, code="2093-3", value=5)
    _observation(api, patient, code="2093-3", value=6)
    several = api("DELETE", f"Observation?patient=Patient/{patient}&code=2093-3")
    assert several.status_code == 412
    none = api("DELETE", f"Observation?patient=Patient/{patient}&code=9999-9")
    assert none.status_code == 204
    one = api("DELETE", f"Observation?patient=Patient/{patient}&code=1751-7")
    assert one.status_code == 200, one.text
    read = api("GET", f"Observation/{created['id']}").json()
    assert read["status"] == "entered-in-error"  # kept, marked: nothing is lost
    assert ("phi:resource:update", "success", "Observation") in _kinds(runtime, api.actor)


def test_a_type_without_the_interaction_answers_405(clinic: Any) -> None:
    _runtime, api, patient, _ = clinic
    # Allergies are recorded, never changed through the API: no PATCH, no conditional update.
    answer = api(
        "PATCH",
        f"AllergyIntolerance/{uuid.uuid4()}",
        json=[],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert answer.status_code == 405 and answer.json()["issue"][0]["code"] == "not-supported"
    assert (
        api(
            "PUT",
            f"AllergyIntolerance?patient=Patient/{patient}",
            json={"resourceType": "AllergyIntolerance"},
        ).status_code
        == 405
    )
    assert api("GET", "Nonsense/_history?patient=x").status_code == 404


# == PATCH =====================================================================================
def test_json_patch_reads_then_updates_at_the_version_read(clinic: Any) -> None:
    runtime, api, patient, _ = clinic
    created = _observation(api, patient)
    patch = [
        {"op": "test", "path": "/status", "value": "final"},
        {"op": "replace", "path": "/status", "value": "corrected"},
        {"op": "replace", "path": "/valueQuantity/value", "value": 11.1},
    ]
    headers = {"Content-Type": "application/json-patch+json"}
    answer = api("PATCH", f"Observation/{created['id']}", json=patch, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "corrected" and answer.json()["valueQuantity"]["value"] == 11.1
    assert answer.headers["ETag"] == 'W/"2"'
    # The test op now fails: 412, nothing changed.
    before = _versions(runtime)
    assert api("PATCH", f"Observation/{created['id']}", json=patch, headers=headers).status_code == 412
    # If-Match at a stale version: 412.
    stale = [{"op": "replace", "path": "/valueQuantity/value", "value": 3}]
    assert (
        api(
            "PATCH", f"Observation/{created['id']}", json=stale, headers={**headers, "If-Match": 'W/"1"'}
        ).status_code
        == 412
    )
    # A patch that does not apply, or changes the id: 400.
    bad = [{"op": "replace", "path": "/nothing/here", "value": 1}]
    assert api("PATCH", f"Observation/{created['id']}", json=bad, headers=headers).status_code == 400
    moved = [{"op": "replace", "path": "/id", "value": "other"}]
    assert api("PATCH", f"Observation/{created['id']}", json=moved, headers=headers).status_code == 400
    assert _versions(runtime) == before
    # Prefer applies to a PATCH too.
    minimal = api(
        "PATCH",
        f"Observation/{created['id']}",
        json=[{"op": "replace", "path": "/valueQuantity/value", "value": 11.5}],
        headers={**headers, "Prefer": "return=minimal"},
    )
    assert minimal.status_code == 200 and minimal.content == b"" and minimal.headers["ETag"] == 'W/"3"'
    kinds = [k for k, o, t in _kinds(runtime, api.actor) if t == "Observation" and o == "success"]
    assert kinds.count("phi:resource:update") == 2  # each PATCH: a read, then an update


def test_patch_is_refused_to_the_wrong_role_and_audited(clinic: Any) -> None:
    runtime, api, patient, (app, facility) = clinic
    created = _observation(api, patient)
    clerk = Api(app, runtime, make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility))
    patch = [{"op": "replace", "path": "/status", "value": "corrected"}]
    answer = clerk(
        "PATCH",
        f"Observation/{created['id']}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert answer.status_code in (403, 404)
    assert any(o == "denied" for _, o, _ in _kinds(runtime, clerk.actor))
    assert api("GET", f"Observation/{created['id']}").json()["status"] == "final"


# == $validate =================================================================================
def test_validate_answers_an_outcome_and_writes_nothing(clinic: Any) -> None:
    runtime, api, patient, (app, facility) = clinic
    before = _versions(runtime)
    good = api("POST", "Observation/$validate", json=_result(f"Patient/{patient}"))
    assert good.status_code == 200 and good.json()["issue"][0]["severity"] == "information"
    bad = api("POST", "Observation/$validate", json={"resourceType": "Observation", "status": "final"})
    assert bad.status_code == 200
    issue = bad.json()["issue"][0]
    assert issue["severity"] == "error" and "code" in issue["diagnostics"]
    wrapped = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": dict(_result(f"Patient/{patient}"), id="abc")},
            {"name": "mode", "valueCode": "update"},
        ],
    }
    instance = api("POST", "Observation/abc/$validate", json=wrapped)
    assert instance.status_code == 200 and instance.json()["issue"][0]["severity"] == "information"
    assert _versions(runtime) == before
    assert ("phi:resource:validate", "success", "Observation") in _kinds(runtime, api.actor)
    # Still role-checked: a front-desk account may not write Observations, so it may not validate one.
    clerk = Api(app, runtime, make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility))
    refused = clerk("POST", "Observation/$validate", json=_result(f"Patient/{patient}"))
    assert refused.status_code == 403
    # (a denial is recorded under the operation's guard type, as every gate refusal is)
    assert [(k, o) for k, o, _ in _kinds(runtime, clerk.actor)] == [("phi:resource:validate", "denied")]


# == _history at type and system level =========================================================
def test_type_and_system_history_are_scoped_to_one_patient_bounded_and_counted(clinic: Any) -> None:
    runtime, api, patient, (app, facility) = clinic
    created = _observation(api, patient)
    changed = dict(created, status="corrected", valueQuantity={"value": 10.0, "unit": "g/dL"})
    api("PUT", f"Observation/{created['id']}", json=changed, headers={"If-Match": 'W/"1"'})
    _observation(api, patient, code="777-3", value=250)
    # No browsing: a history needs its patient.
    assert api("GET", "Observation/_history").status_code == 400
    assert api("GET", "_history").status_code == 400
    history = api("GET", f"Observation/_history?patient=Patient/{patient}")
    assert history.status_code == 200, history.text
    bundle = history.json()
    assert bundle["type"] == "history"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Observation"] * 3
    assert {e["response"]["etag"] for e in bundle["entry"]} == {'W/"1"', 'W/"2"'}
    paged = api("GET", f"Observation/_history?patient=Patient/{patient}&_count=2").json()
    assert len(paged["entry"]) == 2 and any(link["relation"] == "next" for link in paged["link"])
    assert api("GET", f"Observation/_history?patient=Patient/{patient}&_count=1000").status_code == 400
    everything = api("GET", f"_history?patient=Patient/{patient}").json()
    types = {e["resource"]["resourceType"] for e in everything["entry"]}
    assert {"Observation", "Patient"} <= types
    later = api("GET", f"_history?patient=Patient/{patient}&_since=2999-01-01T00:00:00Z").json()
    assert later["entry"] == []
    assert ("phi:resource:history", "success", "Observation") in _kinds(runtime, api.actor)
    with runtime.session_factory() as session:
        exposed = session.scalar(
            select(func.count()).select_from(Exposure).where(Exposure.actor_ref == api.actor.actor_ref)
        )
    assert exposed
    # Someone with no reason to see the patient gets nothing, audited as a denial.
    stranger = Api(app, runtime, make_physician(runtime, facility))
    refused = stranger("GET", f"Observation/_history?patient=Patient/{patient}")
    assert refused.status_code == 404
    assert any(o == "denied" for _, o, _ in _kinds(runtime, stranger.actor))


def test_fhirpy_updates_and_patches(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Roux")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = fhir_server.client_for(doctor)
    observation = client.resource("Observation", **_result(f"Patient/{patient.id}", code="718-7", value=12.0))
    observation.save()
    # fhirpy's PATCH: a partial resource in JSON, applied as a merge patch at the version read.
    patched = client.patch(
        "Observation", observation["id"], status="corrected", valueQuantity={"value": 12.5, "unit": "g/dL"}
    )
    assert patched["status"] == "corrected" and patched["meta"]["versionId"] == "2"
    # fhirpy's conditional update: PUT Observation?<search> with the version read.
    fetched = client.reference("Observation", observation["id"]).to_resource()
    fetched["valueQuantity"] = {"value": 12.7, "unit": "g/dL"}
    search = client.resources("Observation").search(patient=f"Patient/{patient.id}", code="718-7")
    updated, created = search.update(fetched)
    assert not created and updated["meta"]["versionId"] == "3"
    assert client.reference("Observation", observation["id"]).to_resource()["valueQuantity"]["value"] == 12.7
    rows = audit_rows(runtime, doctor.account_id)
    assert rows.count(("phi:resource:update", "success", "Observation")) == 2
