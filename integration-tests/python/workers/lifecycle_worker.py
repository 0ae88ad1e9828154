"""A Drover worker that uses nothing but nats-py: register, ready, pulse, answer probes.

It runs no routines; it exists to walk the worker lifecycle of docs/protocol.md from a
separate process that a test can SIGKILL. On SIGTERM it sends v1.terminating, stops
pulsing and exits, as a worker that shuts down cleanly does.

    python lifecycle_worker.py NATS_URL WORKER_ID ROUTINE[,ROUTINE...] [LABELS_JSON]
"""

import asyncio
import json
import signal
import sys

import nats


def envelope(key: str, payload: dict) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


async def main() -> None:
    url, worker, routines = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    labels = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    nc = await nats.connect(url)
    reply = await nc.request(
        f"v1.register.{worker}",
        envelope("v1.register", {"workerID": worker, "routines": routines, "labels": labels}),
        timeout=5,
    )
    registered = json.loads(reply.data)["payload"]
    incarnation = registered["incarnation"]
    interval = registered["heartbeatIntervalMs"] / 1000
    status = "INITIALIZING"

    async def pulse(probe_id=None) -> None:
        payload = {"incarnation": incarnation, "status": status, "runs": []}
        if probe_id is not None:
            payload["id"] = probe_id
        await nc.publish(f"v1.heartbeat.give_pulse.{worker}", envelope("v1.heartbeat.give_pulse", payload))

    async def on_inbox(msg) -> None:
        body = json.loads(msg.data)
        if body["payloadKey"] == "v1.heartbeat.check_pulse":
            await pulse(body["payload"]["id"])

    await nc.subscribe(f"v1.worker.{worker}.>", cb=on_inbox)
    await nc.flush()
    await nc.publish(f"v1.ready.{worker}", envelope("v1.ready", {"incarnation": incarnation}))
    status = "IDLE"
    print(json.dumps({"registered": registered}), flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        await pulse()
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
    await nc.publish(
        f"v1.terminating.{worker}",
        envelope("v1.terminating", {"incarnation": incarnation, "reason": "SIGTERM"}),
    )
    await nc.drain()


asyncio.run(main())
