"""A Python SDK worker that exports its spans over OTLP/HTTP, for test_traces.py.

It sets up the OpenTelemetry SDK as an application would: a tracer provider named after
the worker, a batch processor and the OTLP/HTTP exporter, all configured by the standard
``OTEL_*`` variables (endpoint, batch delay).

- ``trace.parent`` ``{"children": N}``: asks for N children ``trace.block`` at once
  (``local_id`` ``block-<i>``) and returns their results.
- ``trace.block``: logs ``blocking`` and waits until Drover cancels it.
- ``trace.ask_rust`` ``{"name": s}``: asks for the child ``demo.greet`` (a Rust worker's
  routine) and returns its result.

    DROVER_NATS_URL=... DROVER_WORKER_ID=... OTEL_EXPORTER_OTLP_ENDPOINT=... python traced_sdk_worker.py

Prints ``ready <workerID>`` once ready; SIGTERM stops it and flushes its spans.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from drover_worker import Context, Worker

URL = os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4222")
WORKER_ID = os.environ["DROVER_WORKER_ID"]
CAPACITY = int(os.environ.get("DROVER_CAPACITY", "8"))

provider = TracerProvider(resource=Resource.create({"service.name": "drover-test-python-worker"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)

worker = Worker(WORKER_ID, nats_url=URL, capacity=CAPACITY)


@worker.routine("trace.parent")
async def parent(ctx: Context, params: dict) -> list[Any]:
    await ctx.log("info", "asking for children", children=params["children"])
    return await asyncio.gather(
        *(ctx.run_child("trace.block", {"index": i}, local_id=f"block-{i}") for i in range(params["children"]))
    )


@worker.routine("trace.block")
async def block(ctx: Context, params: dict) -> None:
    await ctx.log("info", "blocking", index=params["index"])
    await asyncio.Event().wait()


@worker.routine("trace.ask_rust")
async def ask_rust(ctx: Context, params: dict) -> Any:
    await ctx.log("info", "asking the rust worker")
    greeting = await ctx.run_child("demo.greet", {"name": params["name"]}, local_id="greet")
    await ctx.log("info", "the rust worker answered")
    return greeting


async def main() -> None:
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(worker.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop(grace=2, reason="SIGTERM")))
    ready = asyncio.ensure_future(worker.wait_ready())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        print(f"ready {WORKER_ID}", flush=True)
    await running
    await asyncio.to_thread(provider.shutdown)
    print("stopped", flush=True)


asyncio.run(main())
