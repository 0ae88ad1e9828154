"""An SDK worker as ``drover pool`` runs it, for tests that signal it.

    DROVER_NATS_URL=... DROVER_WORKER_ID=... DROVER_POOL_ID=... DROVER_POOL_GROUP=... python pool_worker.py

The workerID in code is ``named-in-code`` and no URL is given; the SDK takes the
environment's workerID and NATS URL instead, and
labels the worker with its pool and group. The process runs ``asyncio.run(worker.run())``
with no signal handling of its own: SIGTERM is the SDK's. Routine ``sdk.wait_file`` waits
until the file ``params["path"]`` exists.
"""

import asyncio
import logging
import os

from drover_worker import Context, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
# No URL in code: the SDK takes DROVER_NATS_URL, as under the pool.
worker = Worker("named-in-code", labels={"pool": "set-in-code"})


@worker.routine("sdk.wait_file")
async def wait_file(ctx: Context, params: dict) -> dict:
    while not os.path.exists(params["path"]):
        await asyncio.sleep(0.02)
    return {"waited": params["path"]}


asyncio.run(worker.run(grace=20))
print("exited cleanly", flush=True)
