"""OpenTelemetry traces: a span per request and per gate step, with no patient data in them.

Span names are route templates and step names; attributes are enum values, counts and status
codes only. Nothing is exported unless CARNET_OTEL_EXPORTER says where (`console`, or `otlp`
when the OTLP exporter package is installed); tests install an in-memory exporter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER

TRACER = trace.get_tracer("carnet")
_configured = False

Attribute = str | int | bool


def recording() -> bool:
    """Whether spans go anywhere: a tracer provider was installed (`configure`, or a test's).
    Without one, the API's spans are non-recording and carry an invalid context: creating and
    entering them records nothing, so the hot paths skip them.

    `trace.get_tracer_provider()` reads `os.environ` on every call while no provider is set
    (seven calls, three times a read): the provider set is read first, and the environment
    variable that names one is read when this module is imported (the API loads the provider
    it names on its first use: set at start, as the API means it)."""
    provider = trace._TRACER_PROVIDER  # the API's global, None until one is set
    if provider is None:
        if not _PROVIDER_FROM_ENVIRONMENT:
            return False
        provider = trace.get_tracer_provider()
    return not isinstance(provider, _DEFAULT_PROVIDERS)


_DEFAULT_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_PROVIDER_FROM_ENVIRONMENT = OTEL_PYTHON_TRACER_PROVIDER in os.environ


def _recording_by_the_api() -> bool:
    return not isinstance(trace.get_tracer_provider(), _DEFAULT_PROVIDERS)


if not hasattr(trace, "_TRACER_PROVIDER"):  # an API without that global: ask it every time
    recording = _recording_by_the_api


@contextmanager
def gate_step(step: str, **attributes: Attribute) -> Iterator[trace.Span]:
    """A span for one step of the gate (policy, load, exposure, audit...).

    The gate kernel calls this around each step; attribute values must be enum values, counts
    or booleans (never names, identifiers of patients, or query values)."""
    if not recording():
        yield trace.INVALID_SPAN
        return
    with TRACER.start_as_current_span(f"gate.{step}", attributes=attributes, record_exception=False) as span:
        yield span


def configure(exporter: str | None) -> None:
    """Install a tracer provider once per process (the API's default records nothing)."""
    global _configured
    if _configured or not exporter:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )

        span_exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"unknown trace exporter {exporter!r} (console or otlp)")
    provider = TracerProvider(resource=Resource.create({"service.name": "carnet"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def finished_step(step: str, seconds: float, **attributes: Attribute) -> None:
    """A gate step already done (timed by its caller): recorded as a span that ended now."""
    import time

    if not recording():
        return
    end = time.time_ns()
    span = TRACER.start_span(f"gate.{step}", start_time=end - int(seconds * 1e9), attributes=attributes)
    span.end(end_time=end)
