"""Rotation under load through the real gate: a physician keeps opening charts (authorized,
decrypted, audited in the same transaction) in another worker while `carnet keys rotate
--reencrypt` runs as its own process."""

from __future__ import annotations

import random
import subprocess
import threading
import time

from carnet.phi.gate import Gate
from carnet.runtime import Runtime, build_runtime
from tests import factories as f
from tests.crypto.helpers import CARNET, cli_env, insert_patients, make_patients


def test_gate_reads_keep_working_while_keys_rotate(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    # One front-desk account per registration: one account registering many trips detection.
    charts = [f.register_patient(runtime, facility, family=f"Rotation{i}") for i in range(6)]
    for chart in charts:
        f.link_care(
            runtime, patient_id=chart.id, practitioner_id=doctor.practitioner_id, facility_id=facility
        )
    insert_patients(runtime, make_patients(300, facility, seed=4))  # so re-encryption takes many batches
    reader = build_runtime(runtime.settings)
    before = {c.id: Gate(reader, doctor).read_patient(patient_id=c.id) for c in charts}
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def read_loop() -> None:
        nonlocal reads
        rng = random.Random(1)
        while not stop.is_set():
            chart = rng.choice(charts)
            try:
                if Gate(reader, doctor).read_patient(patient_id=chart.id) != before[chart.id]:
                    failures.append("a chart changed during rotation")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            reads += 1

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        time.sleep(0.2)
        started = reads
        result = subprocess.run(
            [str(CARNET), "keys", "rotate", "--reencrypt", "--batch-size", "25"],
            env=cli_env(runtime),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        during = reads - started
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    try:
        assert result.returncode == 0, result.stderr
        assert failures == []
        assert during > 0
        # A worker started after the rotation (only the new key file, new data keys) agrees.
        fresh = build_runtime(runtime.settings)
        try:
            assert {c.id: Gate(fresh, doctor).read_patient(patient_id=c.id) for c in charts} == before
        finally:
            fresh.close()
    finally:
        reader.close()
