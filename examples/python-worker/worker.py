"""A small Drover worker on the Python SDK (sdk/python, package drover-worker).

Routines:

- ``py.echo``: returns its params unchanged.
- ``py.wordcount``: ``{"text": "the cat and the hat"}`` ->
  ``{"words": 5, "unique": 4, "top": [["the", 2], ["and", 1], ["cat", 1]]}``.

    DROVER_NATS_URL=nats://127.0.0.1:4222 python worker.py

Its workerID is ``py-example-<host>-<pid>``, or ``DROVER_WORKER_ID`` when set: the SDK reads
it, and under ``drover pool`` ``DROVER_POOL_ID`` and ``DROVER_POOL_GROUP`` too, which it
registers as the labels ``pool`` and ``group``. SIGTERM or Ctrl-C stops it gracefully: runs
it holds get 30 seconds to finish, then it exits 0.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections import Counter
from typing import Any

from drover_worker import Context, Fail, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

worker = Worker(
    f"py-example-{socket.gethostname().split('.')[0]}-{os.getpid()}",  # DROVER_WORKER_ID wins
    nats_url=os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4222"),
    capacity=4,
    name="python example worker",
)


@worker.routine("py.echo")
async def echo(ctx: Context, params: Any) -> Any:
    await ctx.log("info", "echoing", attempt=ctx.attempt)
    return params


@worker.routine("py.wordcount")
async def wordcount(ctx: Context, params: dict) -> dict:
    text = params.get("text") if isinstance(params, dict) else None
    if not isinstance(text, str):
        raise Fail("params.text must be a string")  # not retried: the same input fails again
    words = re.findall(r"[\w']+", text.lower())
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    await ctx.log("info", f"counted {len(words)} words", unique=len(counts))
    return {"words": len(words), "unique": len(counts), "top": [list(item) for item in top]}


if __name__ == "__main__":
    worker.run_forever(grace=30)
