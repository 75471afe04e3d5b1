"""Cost of the FHIR search engine: one patient's Observations searched with R4's parameters
against the plain search of the same section, same run, interleaved round by round.

Every variant reads the same section through the gate (one guarded list, audited, counted);
what differs is what the engine does with it: filters (token `system|code`, a date prefix),
`_sort` on two keys, `_elements`, `_summary=count`, and `_include` (a second guarded read: the
Patient). Requests go in-process (Starlette's TestClient, no network) with a physician's
session.

    .venv/bin/python -m benchmarks.fhir_search [--observations 200] [--samples 60] [--sqlite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from urllib.parse import urlencode

from fastapi.testclient import TestClient

from benchmarks._db import bench_runtime
from carnet.app import create_app
from carnet.fhir.resources.observation import observation_input
from carnet.identity import sessions
from carnet.phi.gate import Gate
from tests.factories import link_care, make_facility, make_physician, register_patient

LOINC = "http://loinc.org"
CODES = ("8867-4", "2339-0", "718-7", "8480-6")


def run(observations: int, samples: int, sqlite: bool) -> dict[str, object]:
    with bench_runtime("fhir_search", sqlite=sqlite) as runtime:
        facility = make_facility(runtime)
        doctor = make_physician(runtime, facility)
        assert doctor.practitioner_id is not None and doctor.account_id is not None
        patient = register_patient(runtime, facility, family="Benchmark").id
        link_care(runtime, patient_id=patient, practitioner_id=doctor.practitioner_id, facility_id=facility)
        gate = Gate(runtime, doctor)
        start = dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)
        for n in range(observations):
            gate.record_observation(
                data=observation_input(
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"coding": [{"system": LOINC, "code": CODES[n % len(CODES)]}]},
                        "subject": {"reference": f"Patient/{patient}"},
                        "effectiveDateTime": (start + dt.timedelta(hours=7 * n)).isoformat(),
                        "valueQuantity": {"value": 60 + n % 40, "unit": "1"},
                    }
                )
            )
        with runtime.session_factory.begin() as session:
            issued = sessions.open_session(
                session,
                account_id=doctor.account_id,
                privileged=False,
                second_factor_method="totp",
                address="127.0.0.1",
                user_agent="benchmarks.fhir_search",
            )
        client = TestClient(create_app(runtime), base_url="http://localhost:8000")
        client.cookies.set("carnet_session", issued.token)
        base = {"patient": patient, "_count": "20"}
        variants = {
            "plain": base,
            "filtered+sorted": {
                **base,
                "code": f"{LOINC}|8867-4,{LOINC}|2339-0",
                "date": "ge2026-02-01",
                "_sort": "code,-date",
            },
            "_elements": {**base, "_elements": "code,valueQuantity"},
            "_summary=count": {**base, "_summary": "count"},
            "_include=Observation:subject": {**base, "_include": "Observation:subject"},
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _round in range(samples):
            for name, params in variants.items():
                began = time.perf_counter()
                answer = client.get(f"/fhir/Observation?{urlencode(params)}")
                times[name].append(time.perf_counter() - began)
                assert answer.status_code == 200, answer.text
        plain = statistics.median(times["plain"])
        return {
            "database": "sqlite" if sqlite else "postgresql",
            "observations": observations,
            "samples": samples,
            "load_average": os.getloadavg(),
            "median_ms": {name: round(statistics.median(t) * 1000, 2) for name, t in times.items()},
            "ratio_to_plain": {name: round(statistics.median(t) / plain, 2) for name, t in times.items()},
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--observations", type=int, default=200)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.observations, args.samples, args.sqlite), indent=2))


if __name__ == "__main__":
    main()
