"""carnet's FHIR search driven by a JavaScript client nobody here wrote: fhir-kit-client from
npm, run with the machine's Node.js (a search paged through its `next` links, a read, and
`_summary=count`). The client is installed into var/node from the pinned lock file
(`make js-clients`, or here when missing); the test skips, saying so, only when npm cannot
reach its registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_search import RESULTS, _clinic

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "js"
NODE_DIR = ROOT / "var" / "node"
UNREACHABLE = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "network")


@pytest.fixture(scope="session")
def node_clients() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js and npm are part of the machine (docs/FHIR.md): install them")
    if not (NODE_DIR / "node_modules" / "fhir-kit-client").is_dir():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, NODE_DIR / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            if any(word in done.stderr for word in UNREACHABLE):
                pytest.skip("npm cannot reach its registry: fhir-kit-client is not installed")
            pytest.fail(f"npm ci failed: {done.stderr[-500:]}")
    script = NODE_DIR / "search.mjs"
    shutil.copy(HERE / "search.mjs", script)  # resolved against var/node/node_modules
    return script


def test_fhir_kit_client_searches_pages_and_reads(fhir_server: Server, node_clients: Path) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, patient, _ins = _clinic(fhir_server)
    headers = fhir_server.client_for(doctor).extra_headers
    before = len(audit_rows(runtime, doctor.account_id))
    done = subprocess.run(
        ["node", str(node_clients)],
        env={
            **os.environ,
            "CARNET_FHIR": f"{fhir_server.url}/fhir",
            "CARNET_HEADERS": json.dumps(headers),
            "CARNET_PATIENT": patient,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["pages"] == 3 and seen["total"] == len(RESULTS) == seen["counted"]
    assert len(set(seen["ids"])) == len(RESULTS)
    assert [d[:10] for d in seen["dates"]] == sorted(r[2][:10] for r in RESULTS)
    assert seen["patient"] == {"resourceType": "Patient", "id": patient}
    # Each page, the read and the count went through the gate, audited as what they are.
    rows = audit_rows(runtime, doctor.account_id)[before:]
    assert rows == [("phi:resource:read", "success", "Observation")] * 3 + [
        ("phi:resource:read", "success", "Patient"),
        ("phi:resource:read", "success", "Observation"),
    ]
