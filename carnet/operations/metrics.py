"""Prometheus metrics: what an operator needs to run carnet, and never a patient's data.

Labels are route templates (`/fhir/Patient/{id}`, never the path that was asked), enum values
(audit kinds, outcomes, exposure channels) and status codes: a finite set that names no one.
Counters live in this process; with several workers each is scraped on its own (see OPERATIONS).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from carnet.audit.interfaces import AuditKind, AuditRecord

if TYPE_CHECKING:
    from carnet.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "carnet_http_requests",
    "HTTP answers by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "carnet_http_request_duration_seconds", "Time to answer, by route template", ["route"], registry=REGISTRY
)
IN_FLIGHT = Gauge("carnet_http_requests_in_flight", "Requests being answered now", registry=REGISTRY)
GATE_DECISIONS = Counter(
    "carnet_gate_decisions",
    "Patient-data accesses decided by the gate, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "carnet_audit_events",
    "Audit events appended, by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
AUDIT_APPEND_SECONDS = Histogram(
    "carnet_audit_append_duration_seconds",
    "Time to append to the audit chain (one call)",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EXPOSURES = Counter(
    "carnet_exposures",
    "Patients whose identifying data left the server, by channel",
    ["channel"],
    registry=REGISTRY,
)
CONTAINMENTS = Counter("carnet_containments", "Actors contained by detection", registry=REGISTRY)


# Each metric's child per label values, kept: `labels()` checks and converts its arguments on
# every call (five calls per guarded read). The label values are a finite set (see above).
_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label values."""
    key = (metric, *values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def observe_audit(records: Sequence[AuditRecord], seconds: float) -> None:
    """The audit writer's observer: one append call and what it appended."""
    AUDIT_APPEND_SECONDS.observe(seconds)
    for record in records:
        counted = _counted.get((record.kind, record.outcome))
        if counted is None:
            counted = _counted[(record.kind, record.outcome)] = _counters_of(record)
        for counter in counted:
            counter.inc()


# The counters an event of a kind and outcome increments, found once (a finite set, as above).
_counted: dict[tuple[Any, Any], tuple[Any, ...]] = {}


def _counters_of(record: AuditRecord) -> tuple[Any, ...]:
    kind = AuditKind(record.kind).value
    outcome = record.outcome.value
    counters = [child(AUDIT_EVENTS, kind, outcome)]
    if kind.startswith("phi:"):
        counters.append(child(GATE_DECISIONS, outcome))
    if kind == AuditKind.CONTAINMENT.value:
        counters.append(CONTAINMENTS)
    return tuple(counters)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    child(REQUESTS, route, method, str(status)).inc()
    child(REQUEST_SECONDS, route).observe(seconds)


class RuntimeCollector(Collector):
    """Read at scrape time: the chain's length, its unsigned tail, the pool, Redis."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from carnet.audit.checkpoints import read_head
        from carnet.operations.health import redis_up

        runtime = self.runtime
        try:
            head = read_head(runtime.engine)
            length = float(head[0]) if head else 0.0
            up = 1.0
        except Exception:
            length, up = float("nan"), 0.0
        yield GaugeMetricFamily(
            "carnet_audit_chain_length", "Sequence number of the audit chain head", value=length
        )
        yield GaugeMetricFamily("carnet_database_up", "1 when the database answered this scrape", value=up)
        checkpointer = runtime.checkpointer
        if checkpointer is not None and length == length:
            yield GaugeMetricFamily(
                "carnet_audit_unsigned_tail",
                "Events after the last checkpoint this process signed",
                value=max(0.0, length - checkpointer.last_signed_seq),
            )
        pool: Any = runtime.engine.pool
        for name, method in (("size", "size"), ("checked_out", "checkedout"), ("overflow", "overflow")):
            if hasattr(pool, method):
                yield GaugeMetricFamily(
                    f"carnet_db_pool_{name}", f"Database pool: {name}", value=float(getattr(pool, method)())
                )
        if runtime.settings.redis_url:
            yield GaugeMetricFamily(
                "carnet_redis_up", "1 when Redis answered this scrape", value=float(redis_up(runtime))
            )


def render(runtime: Runtime) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(RuntimeCollector(runtime))
    return generate_latest(REGISTRY) + generate_latest(scrape)


def token_ok(expected: str | None, authorization: str | None) -> bool:
    if not expected or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization.removeprefix("Bearer ").encode(), expected.encode())


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
