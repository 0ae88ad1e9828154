"""A worker with no tracing at all: nats-py and docs/protocol.md only, for test_traces.py.

It never reads or sends a ``traceparent``, so everything a trace shows about its runs comes
from Drover itself. Each routine publishes log lines about its run (``v1.log``, as requests
so that they are stored before the attempt ends).

- ``trace.flaky`` ``{"failures": N}``: attempts 1..N log ``attempt <n> failing`` and fail
  (retryable); the next logs ``attempt <n> succeeding`` and returns ``{"attempt": n}``.
- ``trace.hang`` ``{"hang_on": WORKER_ID}``: on that worker it logs ``hanging on <w>`` and
  never ends; on any other it logs ``done on <w>`` and returns ``{"worker": w}``.

    DROVER_NATS_URL=... DROVER_WORKER_ID=... python untraced_worker.py

Prints ``ready <workerID>`` once ``v1.ready`` is stored; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

import nats

URL = os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4222")
W = os.environ["DROVER_WORKER_ID"]
ROUTINES = ["trace.flaky", "trace.hang"]


def envelope(key: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


class Failed(Exception):
    pass


async def main() -> None:
    nc = await nats.connect(URL, max_reconnect_attempts=-1)
    runs: dict[tuple[str, int], asyncio.Task[None]] = {}
    status = "INITIALIZING"

    async def stored(key: str, payload: dict[str, Any], msg_id: str | None = None, subject: str | None = None) -> None:
        # As a request, until JetStream's PubAck; the same Nats-Msg-Id every time.
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        while True:
            try:
                reply = await nc.request(subject or f"{key}.{W}", envelope(key, payload), timeout=2, headers=headers)
                if "stream" in json.loads(reply.data):
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)

    async def log(run_id: str, message: str) -> None:
        await stored("v1.log", {"level": "info", "message": message, "runID": run_id, "fields": {"worker": W}})

    async def pulse(probe_id: str | None = None) -> None:
        payload: dict[str, Any] = {"incarnation": incarnation, "status": status, "runs": [{"runID": r, "attempt": a} for r, a in runs]}
        if probe_id:
            payload["id"] = probe_id
        await nc.publish(f"v1.heartbeat.give_pulse.{W}", envelope("v1.heartbeat.give_pulse", payload))

    async def routine(a: dict[str, Any]) -> Any:
        run_id, attempt, params = a["runID"], a["attempt"], a.get("params") or {}
        if a["routineID"] == "trace.flaky":
            if attempt <= params.get("failures", 0):
                await log(run_id, f"attempt {attempt} failing")
                raise Failed(f"attempt {attempt} fails on purpose")
            await log(run_id, f"attempt {attempt} succeeding")
            return {"attempt": attempt}
        if params.get("hang_on") == W:
            await log(run_id, f"hanging on {W}")
            await asyncio.Event().wait()
        await log(run_id, f"done on {W}")
        return {"worker": W}

    async def run(a: dict[str, Any]) -> None:
        ref, tag = {"runID": a["runID"], "attempt": a["attempt"]}, f"{a['runID']}-{a['attempt']}"
        try:
            await stored("v1.routine.starting", ref, f"{tag}-starting")
            try:
                end = {"outcome": "succeeded", "result": await routine(a)}
            except Failed as error:
                end = {"outcome": "failed", "error": {"message": str(error), "type": "Flaky", "retryable": True}}
            await stored("v1.routine.completed", ref | end, f"{tag}-completed")
        finally:
            runs.pop((a["runID"], a["attempt"]), None)

    async def on_inbox(msg: Any) -> None:
        body = json.loads(msg.data)
        key, p = body["payloadKey"], body["payload"]
        if key == "v1.heartbeat.check_pulse":
            await pulse(p["id"])
        elif key == "v1.routine.request_start" and status != "TERMINATING":
            runs[(p["runID"], p["attempt"])] = asyncio.ensure_future(run(p))
        elif key == "v1.routine.cancel" and (task := runs.pop((p["runID"], p["attempt"]), None)):
            task.cancel()
        elif key == "v1.error":
            print("refused:", p["code"], p["message"], flush=True)

    await nc.subscribe(f"v1.worker.{W}.>", cb=on_inbox)
    register = {"workerID": W, "routines": ROUTINES, "capacity": 4, "name": "untraced test worker", "pid": os.getpid()}
    reply = await nc.request(f"v1.register.{W}", envelope("v1.register", register), timeout=5)
    registered = json.loads(reply.data)["payload"]
    incarnation, interval = registered["incarnation"], registered["heartbeatIntervalMs"] / 1000
    await pulse()
    await stored("v1.ready", {"incarnation": incarnation}, f"{W}-{incarnation}-ready")
    print(f"ready {W}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    while not stop.is_set():
        status = "WORKING" if runs else "IDLE"
        await pulse()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    status = "TERMINATING"
    await stored("v1.terminating", {"incarnation": incarnation, "reason": "SIGTERM"}, f"{W}-{incarnation}-terminating")
    for task in runs.values():
        task.cancel()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
