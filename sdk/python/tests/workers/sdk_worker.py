"""An SDK worker in its own process, for tests that signal it.

    python sdk_worker.py NATS_URL WORKER_ID GRACE_SECONDS

Routine ``sdk.wait_file``: waits until the file named by ``params["path"]`` exists, then
returns ``{"waited": path}``. The process runs ``Worker.run_forever``, so SIGTERM stops it
gracefully.
"""

import asyncio
import logging
import os
import sys

from drover_worker import Context, Worker

url, worker_id, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
worker = Worker(worker_id, nats_url=url, request_timeout=1.0)


@worker.routine("sdk.wait_file")
async def wait_file(ctx: Context, params: dict) -> dict:
    print(f"running {ctx.run_id}", flush=True)
    while not os.path.exists(params["path"]):
        await asyncio.sleep(0.02)
    return {"waited": params["path"]}


worker.run_forever(grace=grace)
print("exited cleanly", flush=True)
