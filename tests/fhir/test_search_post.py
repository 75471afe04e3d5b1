"""POST [type]/_search keeps identifiers out of URLs and behaves exactly like the GET search:
same answer, same refusals, audited the same; a cookie session needs its CSRF header. API
answers are never cached."""

from __future__ import annotations

import requests

from carnet.access.roles import Role
from tests.factories import make_account, make_facility
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_patient import INS, _patient

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_post_search_answers_like_get_and_is_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)  # fhirpy, for the registration and the GET search
    created = client.resource("Patient", **_patient(facility))
    created.save()
    by_get = client.resources("Patient").search(identifier=f"{INS}|2700512345678").fetch()

    answer = requests.post(
        f"{fhir_server.url}/fhir/Patient/_search",
        data={"identifier": f"{INS}|2700512345678"},
        headers=client.extra_headers | FORM,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert [e["resource"]["id"] for e in bundle["entry"]] == [p.id for p in by_get] == [created.id]
    assert answer.headers["cache-control"] == "no-store"
    searches = [r for r in audit_rows(runtime, clerk.account_id) if r[0] == "phi:resource:search"]
    assert searches == [("phi:resource:search", "success", "Patient")] * 2

    # The specificity rule reads the body as it reads the URL: the same vague search gets the
    # same answer either way.
    vague_get = requests.get(
        f"{fhir_server.url}/fhir/Patient",
        params={"family": "Lefebvre"},
        headers=client.extra_headers,
        timeout=10,
    )
    vague_post = requests.post(
        f"{fhir_server.url}/fhir/Patient/_search",
        data={"family": "Lefebvre"},
        headers=client.extra_headers | FORM,
        timeout=10,
    )
    assert vague_post.status_code == vague_get.status_code
    assert vague_post.json().get("entry") == vague_get.json().get("entry")
    assert vague_post.json().get("total") == vague_get.json().get("total")


def test_post_search_refuses_without_csrf_and_for_the_wrong_role(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)
    client.resource("Patient", **_patient(facility)).save()
    before = audit_rows(runtime, clerk.account_id)

    cookie_only = {"Cookie": client.extra_headers["Cookie"]} | FORM
    forged = requests.post(
        f"{fhir_server.url}/fhir/Patient/_search",
        data={"identifier": f"{INS}|2700512345678"},
        headers=cookie_only,
        timeout=10,
    )
    assert forged.status_code == 403
    assert "CSRF" in forged.json()["issue"][0]["diagnostics"]
    assert audit_rows(runtime, clerk.account_id) == before  # nothing searched, nothing exposed

    admin = make_account(runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    refused = requests.post(
        f"{fhir_server.url}/fhir/Patient/_search",
        data={"identifier": f"{INS}|2700512345678"},
        headers=fhir_server.client_for(admin).extra_headers | FORM,
        timeout=10,
    )
    assert refused.status_code == 403
    assert "entry" not in refused.json()
    assert audit_rows(runtime, admin.account_id) == [("phi:resource:search", "denied", "Patient")]


def test_post_search_bad_input_is_an_operation_outcome(fhir_server: Server) -> None:
    facility = make_facility(fhir_server.runtime)
    clerk = make_account(fhir_server.runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    headers = fhir_server.client_for(clerk).extra_headers
    as_json = requests.post(
        f"{fhir_server.url}/fhir/Patient/_search",
        json={"identifier": "x"},
        headers=headers,
        timeout=10,
    )
    assert as_json.status_code == 400
    assert as_json.json()["resourceType"] == "OperationOutcome"
    unknown = requests.post(
        f"{fhir_server.url}/fhir/Nothing/_search", data={"a": "b"}, headers=headers | FORM, timeout=10
    )
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
