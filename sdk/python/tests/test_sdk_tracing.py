"""Trace context: the execution span continues the attempt's trace, every line about the run
is an event on it, and children sit under it."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from drover_harness import wait_until
from drover_worker import Context, DroverLogHandler, tracing
from sdk_support import Drover, Gate

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


def executions(spans: InMemorySpanExporter, run_id: str | None = None) -> list:
    """The ended execution spans (of one run, if given)."""
    return [
        span
        for span in spans.get_finished_spans()
        if span.name == "drover.execute" and run_id in (None, span.attributes["drover.run_id"])
    ]


def own_traceparent(span) -> str:
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


async def record_logs(drover: Drover, worker_id: str) -> list[tuple[dict, str | None]]:
    """Every ``v1.log`` message of a worker from now on: its payload and its traceparent."""
    seen: list[tuple[dict, str | None]] = []

    async def on_log(msg) -> None:
        seen.append((json.loads(msg.data)["payload"], (msg.headers or {}).get("traceparent")))

    await drover.nc.subscribe(f"v1.log.{worker_id}", cb=on_log)
    await drover.nc.flush()
    return seen


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

    by_routine = {span.attributes["drover.routine_id"]: span for span in executions(spans)}
    parent_span, child_span = by_routine["sdk.otel.parent"], by_routine["sdk.otel.child"]
    run_trace, dispatch_span = parse(seen["parent"][0])
    # The parent's span is a child of the context its assignment carried, in the run's trace.
    assert format(parent_span.context.trace_id, "032x") == run_trace == done["traceID"]
    assert format(parent_span.parent.span_id, "016x") == dispatch_span
    assert parent_span.attributes["drover.run_id"] == run_id
    assert parent_span.attributes["drover.attempt"] == 1
    assert parent_span.attributes["drover.worker_id"] == "py-sdk-otel"
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


async def test_every_line_about_a_run_is_an_event_on_its_execution_span(drover: Drover, spans: InMemorySpanExporter):
    worker = drover.worker("py-sdk-lines")
    handler = DroverLogHandler()
    routine_log = logging.getLogger("sdk.tracing.routine")
    routine_log.addHandler(handler)
    routine_log.setLevel(logging.INFO)
    lines = await record_logs(drover, "py-sdk-lines")

    @worker.routine("sdk.otel.fails")
    async def fails(ctx: Context, params: None) -> None:
        await ctx.log("info", "about to fail", step=1)
        routine_log.info("from logging")
        await asyncio.to_thread(routine_log.warning, "from a thread")
        raise KeyError("missing")

    try:
        await drover.start(worker)
        run_id = await drover.submit("sdk.otel.fails")
        assert (await drover.wait_run(run_id))["status"] == "FAILED"
        await wait_until("the execution span ended", lambda: executions(spans, run_id))
    finally:
        routine_log.removeHandler(handler)
    [span] = executions(spans, run_id)
    names = [event.name for event in span.events]
    # The routine's exception is logged while its span is open, so it is an event on it.
    assert names == ["about to fail", "from logging", "from a thread", "routine sdk.otel.fails raised KeyError: 'missing'"], names
    assert span.events[0].attributes["log.fields.step"] == 1
    assert span.events[-1].attributes["log.severity"] == "error"

    # Each v1.log message names the span its line is recorded on: the collector leaves it.
    await wait_until("four lines on v1.log", lambda: len(lines) >= 4)
    assert sorted(line["message"] for line, _ in lines) == sorted(names)
    assert {traceparent for _, traceparent in lines} == {own_traceparent(span)}


async def test_a_cancellation_is_an_event_on_the_execution_span(drover: Drover, spans: InMemorySpanExporter):
    worker = drover.worker("py-sdk-cancel-span")
    held = Gate()

    @worker.routine("sdk.otel.forever")
    async def forever(ctx: Context, params: None) -> None:
        await held.wait()  # never opened

    await drover.start(worker)
    run_id = await drover.submit("sdk.otel.forever")
    await drover.wait_run(run_id, {"RUNNING"})
    await wait_until("the routine runs", lambda: held.waiting == 1)
    await drover.cancel(run_id, reason="user asked")
    await wait_until("the execution span ended", lambda: executions(spans, run_id))
    [span] = executions(spans, run_id)
    assert [event.name for event in span.events] == [
        "attempt cancelled: user asked; its outcome is not reported"
    ], span.events


async def test_without_tracing_log_lines_carry_no_trace_context(
    drover: Drover, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DROVER_OTEL_DISABLED", "1")
    worker = drover.worker("py-sdk-untraced")
    lines = await record_logs(drover, "py-sdk-untraced")

    @worker.routine("sdk.otel.untraced")
    async def untraced(ctx: Context, params: None) -> None:
        await ctx.log("info", "a line")
        raise KeyError("missing")

    await drover.start(worker)
    run_id = await drover.submit("sdk.otel.untraced")
    assert (await drover.wait_run(run_id))["status"] == "FAILED"
    await wait_until("two lines on v1.log", lambda: len(lines) >= 2)
    assert [traceparent for _, traceparent in lines] == [None, None]
    assert executions(spans, run_id) == []
