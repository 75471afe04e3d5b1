"""`tracing.recording()` answers as the API's provider says (it reads the API's global first)."""

from __future__ import annotations

import os
import subprocess
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from carnet.operations.tracing import _recording_by_the_api, recording


def _reference() -> bool:
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def test_recording_agrees_with_the_provider_whatever_was_set_before() -> None:
    assert recording() is _reference() is _recording_by_the_api()


def test_recording_once_a_provider_is_installed(spans: InMemorySpanExporter) -> None:
    assert recording() is True
    assert _reference() is True


def _in_fresh_process(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_no_provider_no_recording_and_a_provider_named_by_the_environment() -> None:
    code = (
        "from carnet.operations.tracing import _recording_by_the_api, recording\n"
        "from opentelemetry import trace\n"
        "print(recording(), recording(), type(trace.get_tracer_provider()).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OTEL_PYTHON_TRACER_PROVIDER"}
    assert _in_fresh_process(code, env) == "False False ProxyTracerProvider"
    env["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
    assert _in_fresh_process(code, env) == "True True TracerProvider"
