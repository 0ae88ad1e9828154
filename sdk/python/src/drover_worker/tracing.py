"""Optional OpenTelemetry support: continue the run's trace when ``opentelemetry`` is importable.

Drover sends every directive about an attempt with that attempt's span context, W3C
``traceparent`` (and ``tracestate``) in the NATS headers. With the OpenTelemetry API
installed, the attempt runs inside its execution span ``drover.execute``, a child of that
context, with the attributes ``drover.run_id``, ``drover.routine_id``, ``drover.attempt`` and
``drover.worker_id``. Every line about the run is an event on it (or on the span current in
the routine, which descends from it): ``ctx.log`` lines, records shipped by
:class:`~drover_worker.DroverLogHandler`, and the SDK's own notes about the attempt (a
routine's exception, a cancellation, a completion not stored yet or refused).

While the execution span records, the ``v1.log`` messages about its run carry the span's
``traceparent``: that tells the log-collector the lines are on the trace already. Otherwise
they carry no trace context, and the log-collector records them under the attempt's span.

Child requests carry the *current* span's ``traceparent``, so children sit under the parent's
execution span. Without OpenTelemetry all of this is a no-op and child requests forward the
``traceparent`` the assignment arrived with, so the child still joins the run's trace.

Set ``DROVER_OTEL_DISABLED=1`` to ignore an installed OpenTelemetry.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, NamedTuple

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


#: The name of an attempt's execution span.
EXECUTION_SPAN = "drover.execute"


class _Execution(NamedTuple):
    """The execution span the current task runs in, and what its run's ``v1.log`` messages carry."""

    run_id: str
    span: Any
    headers: dict[str, str]


_EXECUTION: ContextVar[_Execution | None] = ContextVar("drover_execution_span", default=None)


@contextmanager
def execution_span(
    routine_id: str,
    run_id: str,
    attempt: int,
    worker_id: str,
    traceparent: str | None,
    tracestate: str | None,
) -> Iterator[Any]:
    """Runs the body inside the attempt's execution span (``None`` without OpenTelemetry)."""
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
        EXECUTION_SPAN,
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "drover.run_id": run_id,
            "drover.routine_id": routine_id,
            "drover.attempt": attempt,
            "drover.worker_id": worker_id,
        },
    ) as span:
        headers: dict[str, str] = {}
        if span.is_recording():
            _PROPAGATOR.inject(headers)  # the span is current here
        token = _EXECUTION.set(_Execution(run_id, span, headers))
        try:
            yield span
        finally:
            _EXECUTION.reset(token)


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


def log_headers(run_id: str | None) -> dict[str, str]:
    """Trace headers for a ``v1.log`` message about ``run_id``: the execution span's context
    when the line is recorded on it (see :func:`log_event`), otherwise none."""
    execution = _EXECUTION.get()
    if execution is None or run_id is None or execution.run_id != run_id:
        return {}
    if not execution.span.is_recording():  # ended: a task the routine left behind
        return {}
    return dict(execution.headers)


def log_event(level: str, message: str, fields: Mapping[str, Any] | None, run_id: str | None = None) -> None:
    """Adds a log line as an event of the current span if it records, else of the execution
    span the task runs in. A line about another run than that execution's is left alone."""
    if not enabled():
        return
    execution = _EXECUTION.get()
    if execution is not None and run_id is not None and execution.run_id != run_id:
        return
    span = _trace.get_current_span()
    if not span.is_recording():
        if execution is None:
            return
        span = execution.span
    note(span, level, message, fields)


def note(span: Any, level: str, message: str, fields: Mapping[str, Any] | None = None) -> None:
    """Adds a line as an event of ``span`` (an execution span, or ``None``) if it still records."""
    if span is None or not span.is_recording():
        return
    attributes: dict[str, Any] = {"log.severity": level}
    for key, value in (fields or {}).items():
        attributes[f"log.fields.{key}"] = value if isinstance(value, (str, bool, int, float)) else str(value)
    span.add_event(message, attributes)
