"""FHIR search as R4 describes it, driven by fhirpy (a client nobody here wrote): `.count()`,
`.sort()`, `.include()`, `.revinclude()`, `.elements()`, `.limit()` and paging with
`fetch_all`, date prefixes, `system|code` tokens, chains through the patient search, strict
and lenient handling; every resource that leaves read through the gate, audited and counted."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import requests
from fhirpy.base.exceptions import OperationOutcome
from sqlalchemy import select

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.detection.config import RoleVolume
from carnet.detection.models import Exposure
from carnet.runtime import Runtime
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows

INS = "urn:oid:1.2.250.1.213.1.4.8"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SUBSETTED = "SUBSETTED"
# (LOINC code, category, effective date, value)
RESULTS = [
    ("8867-4", "vital-signs", "2026-03-01T08:00:00+00:00", 72),
    ("8867-4", "vital-signs", "2026-03-05T08:00:00+00:00", 80),
    ("2339-0", "laboratory", "2026-03-02T09:30:00+00:00", 5.4),
    ("2339-0", "laboratory", "2026-04-10T09:30:00+00:00", 6.1),
    ("718-7", "laboratory", "2026-02-20T07:15:00+00:00", 13.2),
]


def _observation(patient_id: str, code: str, category: str, when: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "1"},
    }


def _clinic(server: Server) -> tuple[uuid.UUID, Actor, str, str]:
    runtime = server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    ins = "2700512345678"
    patient = register_patient(runtime, facility, family="Moreau", ins=ins)
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = server.client_for(doctor)
    for code, category, when, value in RESULTS:
        client.resource("Observation", **_observation(patient.id, code, category, when, value)).save()
    return facility, doctor, patient.id, ins


def _exposed(runtime: Runtime, actor: Actor) -> set[uuid.UUID]:
    with runtime.session_factory() as session:
        return set(session.scalars(select(Exposure.patient_id).where(Exposure.actor_ref == actor.actor_ref)))


def test_fhirpy_count_sort_paging_elements_and_tokens(fhir_server: Server) -> None:
    _facility, doctor, patient, _ins = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    observations = client.resources("Observation").search(patient=patient)

    assert observations.count() == 5
    # _sort: descending, then several keys (code, then newest first within a code).
    newest = [o["effectiveDateTime"][:10] for o in observations.sort("-date").fetch()]
    assert newest == sorted(newest, reverse=True) and len(newest) == 5
    keyed = [
        (o["code"]["coding"][0]["code"], o["effectiveDateTime"][:10])
        for o in observations.sort("code", "-date")
    ]
    assert keyed == sorted(keyed, key=lambda k: (k[0], [-ord(c) for c in k[1]]))

    # _count + paging: three pages of two, followed by fhirpy through the next links.
    first = client.execute("Observation", method="get", params={"patient": patient, "_count": 2})
    assert first["total"] == 5 and len(first["entry"]) == 2
    assert {link["relation"] for link in first["link"]} == {"self", "next"}
    everything = observations.limit(2).sort("date").fetch_all()
    assert [o["effectiveDateTime"][:10] for o in everything] == sorted(r[2][:10] for r in RESULTS)

    # date prefixes on the clinical date (effective[x]).
    assert len(observations.search(date="ge2026-03-01").fetch()) == 4
    assert len(observations.search(date="lt2026-03-01").fetch()) == 1
    assert len(observations.search(date="2026-03").fetch()) == 3
    assert len(observations.search(date__ge="2026-03-01", date__le="2026-03-31").fetch()) == 3
    assert len(observations.search(date="sa2026-03-05").fetch()) == 1
    assert len(observations.search(date="eb2026-03-01").fetch()) == 1
    assert len(observations.search(date="ne2026-03-05").fetch()) == 4

    # tokens: system|code, |code (no system), system| (any code of it), code alone.
    assert len(observations.search(category=f"{CATEGORY}|vital-signs").fetch()) == 2
    assert len(observations.search(code=f"{LOINC}|2339-0").fetch()) == 2
    assert len(observations.search(code=f"{LOINC}|").fetch()) == 5
    assert observations.search(code="|2339-0").fetch() == []
    assert len(observations.search(code="2339-0,718-7").fetch()) == 3
    assert len(observations.search(**{"code:not": "8867-4"}).fetch()) == 3

    # _elements and _summary: what is asked (and what R4 requires), marked SUBSETTED.
    slim = observations.elements("code").fetch()[0]
    assert set(slim) <= {"resourceType", "id", "meta", "code", "status"} and "code" in slim
    assert SUBSETTED in [t["code"] for t in slim["meta"]["tag"]]
    summary = client.execute("Observation", method="get", params={"patient": patient, "_summary": "count"})
    assert summary["total"] == 5 and "entry" not in summary
    untotalled = client.execute("Observation", method="get", params={"patient": patient, "_total": "none"})
    assert "total" not in untotalled and len(untotalled["entry"]) == 5

    # _id, and _lastUpdated with a prefix.
    one = observations.first()
    assert one is not None
    assert [o.id for o in client.resources("Observation").search(_id=one.id).fetch()] == [one.id]
    assert observations.search(_lastUpdated="gt2000-01-01").count() == 5
    assert observations.search(_lastUpdated="lt2000-01-01").count() == 0


def test_include_revinclude_and_chains_go_through_the_gate(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, patient, ins = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    before = len(audit_rows(runtime, doctor.account_id))

    bundle = (
        client.resources("Observation").search(patient=patient).include("Observation", "subject").fetch_raw()
    )
    modes = [(e.resource["resourceType"], e.search["mode"]) for e in bundle.entry]
    assert modes.count(("Observation", "match")) == 5 and modes.count(("Patient", "include")) == 1
    # The included patient was read through the gate: a Patient read, audited.
    rows = audit_rows(runtime, doctor.account_id)[before:]
    assert rows == [
        ("phi:resource:read", "success", "Observation"),
        ("phi:resource:read", "success", "Patient"),
    ]

    found = client.resources("Patient").search(identifier=f"{INS}|{ins}").revinclude("Observation", "subject")
    raw = found.fetch_raw()
    kinds = [e.resource["resourceType"] for e in raw.entry]
    assert kinds.count("Patient") == 1 and kinds.count("Observation") == 5
    assert [p.id for p in found.fetch()] == [patient]

    # A chain through the patient search, under its rules (an identifier here).
    chained = client.execute(
        "Observation", method="get", params={"subject:Patient.identifier": f"{INS}|{ins}", "code": "718-7"}
    )
    assert [e["resource"]["code"]["coding"][0]["code"] for e in chained["entry"]] == ["718-7"]
    # ... and the same rules: a short name among nobody's patients is refused, not browsed.
    with pytest.raises(OperationOutcome, match="letters"):
        client.execute("Observation", method="get", params={"patient.family": "M"})
    with pytest.raises(OperationOutcome, match="no browsing"):
        client.execute("Observation", method="get", params={"code": "718-7"})


def test_strict_and_lenient_handling_and_refused_modifiers(fhir_server: Server) -> None:
    _facility, doctor, patient, _ins = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    url = f"{fhir_server.url}/fhir/Observation"
    params = {"patient": patient, "colour": "blue", "_sort": "-date"}

    lenient = requests.get(url, params=params, headers=client.extra_headers, timeout=10)
    assert lenient.status_code == 200
    self_link = next(link["url"] for link in lenient.json()["link"] if link["relation"] == "self")
    assert "colour" not in self_link and "_sort=-date" in self_link and f"patient={patient}" in self_link

    strict = requests.get(
        url, params=params, headers={**client.extra_headers, "Prefer": "handling=strict"}, timeout=10
    )
    assert strict.status_code == 400
    issue = strict.json()["issue"][0]
    assert issue["code"] == "not-supported" and "colour" in issue["diagnostics"]

    # :contains on encrypted names cannot be served by the keyed indexes: said so, not scanned.
    contains = requests.get(
        f"{fhir_server.url}/fhir/Patient",
        params={"family:contains": "ore"},
        headers=client.extra_headers,
        timeout=10,
    )
    assert contains.status_code == 400 and contains.json()["issue"][0]["code"] == "not-supported"
    # A bad date is a clear 400 whatever the handling.
    bad = requests.get(url, params={"patient": patient, "date": "ge-yesterday"}, headers=client.extra_headers)
    assert bad.status_code == 400 and "date" in bad.json()["issue"][0]["diagnostics"]


def test_an_include_counts_every_patient_like_reading_them_one_by_one(
    fhir_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = fhir_server.runtime
    # A small installation's floor for physicians (restored after the test).
    volumes = dict(runtime.ledger.config.role_volume, physician=RoleVolume(m15=3, h1=3, h24=3))
    monkeypatch.setattr(runtime.ledger.config, "role_volume", volumes)
    facility = make_facility(runtime)
    one_by_one = make_physician(runtime, facility)
    in_one_search = make_physician(runtime, facility)
    patients = [register_patient(runtime, facility, family=f"Lefort{i}").id for i in range(8)]
    for doctor in (one_by_one, in_one_search):
        assert doctor.practitioner_id is not None
        for p in patients:
            link_care(runtime, patient_id=p, practitioner_id=doctor.practitioner_id, facility_id=facility)

    reader = fhir_server.client_for(one_by_one)
    statuses = []
    for p in patients:
        answer = requests.get(f"{fhir_server.url}/fhir/Patient/{p}", headers=reader.extra_headers, timeout=10)
        statuses.append(answer.status_code)
    stopped = statuses.index(next(s for s in statuses if s != 200))
    assert stopped > 0 and 200 not in statuses[stopped:], statuses
    budget = len(_exposed(runtime, one_by_one))

    searcher = fhir_server.client_for(in_one_search)
    answer = requests.get(
        f"{fhir_server.url}/fhir/Appointment",
        params={"patient": ",".join(patients), "_include": "Appointment:patient"},
        headers=searcher.extra_headers,
        timeout=10,
    )
    # Stopped like the reader was, at the same number of patients: nothing more left.
    assert answer.status_code == statuses[stopped] == 401, answer.text
    assert "second factor" in answer.json()["issue"][0]["diagnostics"]
    assert len(_exposed(runtime, in_one_search)) == budget


def test_worklists_are_ones_own_counted_as_lists_and_refused_for_others(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    colleague = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None and colleague.practitioner_id is not None
    mine = register_patient(runtime, facility, family="Garnier")
    link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    booked = fhir_server.client_for(clerk).resource(
        "Appointment",
        status="booked",
        start=start.isoformat(),
        end=(start + dt.timedelta(minutes=20)).isoformat(),
        participant=[
            {"actor": {"reference": f"Patient/{mine.id}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doctor.practitioner_id}"}, "status": "accepted"},
        ],
    )
    booked.save()

    client = fhir_server.client_for(doctor)
    me = f"Practitioner/{doctor.practitioner_id}"
    day = start.date().isoformat()
    appointments = client.resources("Appointment").search(practitioner=me, date=day).fetch()
    assert [a.id for a in appointments] == [booked.id]
    team = client.resources("CareTeam").search(participant=me).include("CareTeam", "subject").fetch_raw()
    assert {e.resource["resourceType"] for e in team.entry} == {"CareTeam", "Patient"}
    assert client.resources("Encounter").search(participant=me, status="in-progress").fetch() == []
    # The same list as Patients (reverse chaining): each patient read through the gate.
    cared = client.resources("Patient").has("CareTeam", "patient", participant=me).fetch()
    assert [p.id for p in cared] == [mine.id]
    rows = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:list", "success", "CareTeam") in rows and (
        "phi:resource:list",
        "success",
        "Encounter",
    ) in rows
    with runtime.session_factory() as session:
        channels = set(
            session.scalars(select(Exposure.channel).where(Exposure.actor_ref == doctor.actor_ref))
        )
    assert "list" in channels

    # Another practitioner's worklist: refused by the gate, and the refusal audited.
    other = f"Practitioner/{colleague.practitioner_id}"
    for resource_type, params in (
        ("CareTeam", {"participant": other}),
        ("Encounter", {"participant": other}),
    ):
        with pytest.raises(Exception, match=r"403|may not"):
            client.execute(resource_type, method="get", params=params)
    with pytest.raises(Exception, match=r"403|may not"):
        client.resources("Patient").has("CareTeam", "patient", participant=other).fetch()
    denied = [r for r in audit_rows(runtime, doctor.account_id) if r[1] == "denied"]
    assert [r[2] for r in denied] == ["CareTeam", "Encounter", "CareTeam"]
    # A week at most; an open range is not a worklist.
    with pytest.raises(OperationOutcome, match="at most"):
        client.execute("Appointment", method="get", params={"practitioner": me, "date": "ge2026-01-01"})

    # The wrong role: billing has no worklist and no chart.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    with pytest.raises(Exception, match=r"403|may not"):
        fhir_server.client_for(billing).execute("CareTeam", method="get", params={"participant": me})
    assert audit_rows(runtime, billing.account_id)[-1][1] == "denied"
