"""Trace context: the routine's span continues the run's trace, and children sit under it."""

from __future__ import annotations

import pytest

from drover_worker import Context, tracing
from sdk_support import Drover

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is not installed")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans():
    """The global tracer provider (set once per process) with an in-memory exporter."""
    if not isinstance(trace.get_tracer_provider(), otel_sdk.TracerProvider):
        provider = otel_sdk.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def parse(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


async def test_routine_spans_continue_the_run_trace(drover: Drover, spans: InMemorySpanExporter):
    worker = drover.worker("py-sdk-otel", capacity=2)
    seen: dict[str, tuple[str | None, str]] = {}

    @worker.routine("sdk.otel.parent")
    async def parent(ctx: Context, params: None) -> str:
        current = trace.get_current_span().get_span_context()
        seen["parent"] = (ctx.traceparent, format(current.span_id, "016x"))
        await ctx.log("info", "about to ask for a child")
        return await ctx.run_child("sdk.otel.child", None, local_id="only")

    @worker.routine("sdk.otel.child")
    async def child(ctx: Context, params: None) -> str:
        current = trace.get_current_span().get_span_context()
        seen["child"] = (ctx.traceparent, format(current.span_id, "016x"))
        return "ok"

    child_requests: list[dict[str, str]] = []

    async def on_request(msg) -> None:
        child_requests.append(dict(msg.headers or {}))

    await drover.nc.subscribe("v1.routine.request_start.py-sdk-otel", cb=on_request)
    await drover.start(worker)
    run_id = await drover.submit("sdk.otel.parent")
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED" and done["result"] == "ok", done

    finished = {span.name: span for span in spans.get_finished_spans()}
    parent_span, child_span = finished["routine sdk.otel.parent"], finished["routine sdk.otel.child"]
    run_trace, dispatch_span = parse(seen["parent"][0])
    # The parent's span is a child of the context its assignment carried, in the run's trace.
    assert format(parent_span.context.trace_id, "032x") == run_trace == done["traceID"]
    assert format(parent_span.parent.span_id, "016x") == dispatch_span
    assert parent_span.attributes["drover.run_id"] == run_id
    assert [event.name for event in parent_span.events] == ["about to ask for a child"]
    # The child request carried the parent span's context, so the child's span descends from it.
    assert child_requests and all(
        parse(headers["traceparent"]) == (run_trace, format(parent_span.context.span_id, "016x")) for headers in child_requests
    )
    assert format(child_span.context.trace_id, "032x") == run_trace
    assert parse(seen["child"][0])[0] == run_trace


def test_without_opentelemetry_children_forward_the_assignment_context(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DROVER_OTEL_DISABLED", "1")
    assert not tracing.enabled()
    assert tracing.child_headers("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "k=v") == {
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "tracestate": "k=v",
    }
    assert tracing.child_headers(None, None) == {}
