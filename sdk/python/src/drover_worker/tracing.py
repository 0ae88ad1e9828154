"""Optional OpenTelemetry support: continue the run's trace when ``opentelemetry`` is importable.

Drover sends every directive about a run with the run's W3C ``traceparent`` (and
``tracestate``) in the NATS headers. With the OpenTelemetry API installed, the routine runs
inside a span that is a child of that context (``routine <routineID>``), log lines become
span events, and child requests carry the *current* span's ``traceparent``, so children
sit under the parent's execution span. Without it, all of this is a no-op and child
requests forward the ``traceparent`` the assignment arrived with, so the child still joins
the run's trace.

Set ``DROVER_OTEL_DISABLED=1`` to ignore an installed OpenTelemetry.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from ._version import __version__

try:  # pragma: no cover - depends on the environment
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    _trace = None  # type: ignore[assignment]
    _PROPAGATOR = None
    AVAILABLE = False

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def enabled() -> bool:
    """Whether spans are made: OpenTelemetry is importable and not disabled by the environment."""
    return AVAILABLE and os.environ.get("DROVER_OTEL_DISABLED", "").lower() not in ("1", "true", "yes")


def trace_headers(headers: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` from NATS headers (either may be ``None``)."""
    if not headers:
        return None, None
    return headers.get(TRACEPARENT), headers.get(TRACESTATE)


@contextmanager
def run_span(
    routine_id: str,
    run_id: str,
    attempt: int,
    worker_id: str,
    traceparent: str | None,
    tracestate: str | None,
) -> Iterator[Any]:
    """Runs the body inside the routine's execution span (a no-op without OpenTelemetry)."""
    if not enabled():
        yield None
        return
    carrier = {}
    if traceparent:
        carrier[TRACEPARENT] = traceparent
    if tracestate:
        carrier[TRACESTATE] = tracestate
    parent = _PROPAGATOR.extract(carrier)
    tracer = _trace.get_tracer("drover_worker", __version__)
    with tracer.start_as_current_span(
        f"routine {routine_id}",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "drover.run_id": run_id,
            "drover.attempt": attempt,
            "drover.routine_id": routine_id,
            "drover.worker_id": worker_id,
        },
    ) as span:
        yield span


def assignment_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The trace headers an assignment carried, sent again on the directives about its attempt."""
    headers = {}
    if traceparent:
        headers[TRACEPARENT] = traceparent
    if tracestate:
        headers[TRACESTATE] = tracestate
    return headers


def child_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """Trace headers for a child request: the current span's context when there is one,
    otherwise the ``traceparent``/``tracestate`` the run's assignment carried."""
    if enabled():
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if carrier.get(TRACEPARENT):
            return carrier
    headers: dict[str, str] = {}
    if traceparent:
        headers[TRACEPARENT] = traceparent
        if tracestate:
            headers[TRACESTATE] = tracestate
    return headers


def log_event(level: str, message: str, fields: Mapping[str, Any] | None) -> None:
    """Adds a log line as an event of the current span, if one is recording."""
    if not enabled():
        return
    span = _trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {"log.severity": level}
    for key, value in (fields or {}).items():
        attributes[f"log.fields.{key}"] = value if isinstance(value, (str, bool, int, float)) else str(value)
    span.add_event(message, attributes)
