"""A workflow on the Python SDK: a parent routine that fans out to child runs and gathers them.

Routines (one worker runs both; give it a capacity of at least 2, since a waiting parent
keeps its slot):

- ``py.report`` ``{"items": ["a", "b"], "ms": 1000, "ms_by_item": {"b": 3000}}``: one child
  ``py.fetch`` per item, all at once, then ``{"items": N, "total_bytes": ..., "fetched": [...]}``.
  While it waits for them the worker is HANGING (if it runs nothing else).
- ``py.fetch`` ``{"item": "a", "ms": 1000}``: "fetches" the item for ``ms`` milliseconds and
  returns ``{"item": "a", "bytes": ...}``.

    DROVER_NATS_URL=nats://127.0.0.1:4222 python workflow.py

Environment: ``DROVER_NATS_URL``, ``DROVER_WORKER_ID`` (default ``py-workflow-<host>-<pid>``;
the SDK reads it), ``DROVER_CAPACITY`` (default 4).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket

from drover_worker import Context, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

worker = Worker(
    f"py-workflow-{socket.gethostname().split('.')[0]}-{os.getpid()}",  # DROVER_WORKER_ID wins
    nats_url=os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4222"),
    capacity=int(os.environ.get("DROVER_CAPACITY", "4")),
    name="python workflow example",
)


@worker.routine("py.report")
async def report(ctx: Context, params: dict) -> dict:
    items: list[str] = params["items"]
    default_ms = params.get("ms", 1000)
    ms_by_item: dict[str, int] = params.get("ms_by_item", {})
    await ctx.log("info", f"report of {len(items)} items, attempt {ctx.attempt}")
    # One child per item, all at once. The localRunID is the item's position: deterministic,
    # so when this run is retried it gets the same children back, and those that already
    # finished are not run again (their results come back at once).
    fetched = await asyncio.gather(
        *(
            ctx.run_child("py.fetch", {"item": item, "ms": ms_by_item.get(item, default_ms)}, local_id=f"fetch-{index}")
            for index, item in enumerate(items)
        )
    )
    await ctx.log("info", "all items fetched")
    return {"items": len(fetched), "total_bytes": sum(f["bytes"] for f in fetched), "fetched": fetched}


@worker.routine("py.fetch")
async def fetch(ctx: Context, params: dict) -> dict:
    item = params["item"]
    await ctx.log("info", f"fetching {item}", item=item)
    await asyncio.sleep(params.get("ms", 1000) / 1000)  # a cancel from Drover stops this
    size = int(hashlib.sha256(item.encode()).hexdigest()[:4], 16)  # the same every time
    await ctx.log("info", f"fetched {item}", item=item, bytes=size)
    return {"item": item, "bytes": size}


if __name__ == "__main__":
    worker.run_forever(grace=30)
