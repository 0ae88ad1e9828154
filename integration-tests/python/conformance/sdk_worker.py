"""The conformance routines on the Python SDK (drover_worker), for test_conformance.py.

    python sdk_worker.py NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]

(or DROVER_NATS_URL, DROVER_WORKER_ID, DROVER_CAPACITY, DROVER_GRACE_SECONDS). Prints
``ready <workerID>`` once registered and ready; SIGTERM or SIGINT stops it gracefully
(held runs get the grace period), then it exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from drover_worker import Context, Fail, Worker


def setting(index: int, env: str, default: str | None = None) -> str:
    value = sys.argv[index] if len(sys.argv) > index else os.environ.get(env, default)
    if value is None:
        sys.exit("usage: sdk_worker.py NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]")
    return value


URL = setting(1, "DROVER_NATS_URL", "nats://127.0.0.1:4222")
WORKER_ID = setting(2, "DROVER_WORKER_ID")
CAPACITY = int(setting(3, "DROVER_CAPACITY", "2"))
GRACE = float(setting(4, "DROVER_GRACE_SECONDS", "10"))

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
worker = Worker(WORKER_ID, nats_url=URL, capacity=CAPACITY, request_timeout=1.0)


@worker.routine("conf.echo")
async def echo(ctx: Context, params: Any) -> Any:
    return params


@worker.routine("conf.flaky")
async def flaky(ctx: Context, params: dict) -> dict:
    succeed_on = params.get("succeed_on_attempt", 1)
    if ctx.attempt < succeed_on:
        raise Fail(f"attempt {ctx.attempt} fails; attempt {succeed_on} will succeed", retryable=True, type="Flaky")
    return {"attempt": ctx.attempt}


@worker.routine("conf.fatal")
async def fatal(ctx: Context, params: Any) -> None:
    raise Fail("this routine always fails", type="Fatal")  # Fail is not retryable by default


@worker.routine("conf.sleep")
async def sleep(ctx: Context, params: dict) -> dict:
    # A cancel from Drover cancels this task: CancelledError out of the sleep.
    try:
        await asyncio.sleep(params["ms"] / 1000)
    except asyncio.CancelledError:
        print(f"sleep cancelled {ctx.run_id}", flush=True)  # the test reads this line
        raise
    return {"slept": params["ms"]}


@worker.routine("conf.parent")
async def parent(ctx: Context, params: dict) -> dict:
    child = await ctx.run_child("conf.echo", params.get("child"), local_id="child-1")
    return {"child": child}


async def main() -> None:
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(worker.run())
    stopping: list[asyncio.Future[None]] = []

    def on_signal() -> None:
        if not stopping:
            stopping.append(asyncio.ensure_future(worker.stop(grace=GRACE, reason="SIGTERM")))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    ready = asyncio.ensure_future(worker.wait_ready())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        print(f"ready {WORKER_ID}", flush=True)
    else:
        ready.cancel()  # the worker stopped (or failed) before it was ready
    await running
    print("stopped", flush=True)


asyncio.run(main())
