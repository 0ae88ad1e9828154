"""The worker lifecycle with a worker that uses only nats-py (issue: foundation acceptance).

The worker runs as its own process (workers/lifecycle_worker.py) so that it can be killed
with SIGKILL, as a crashed worker would be.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from drover_harness import wait_for, wait_until

INTERVAL_MS = 200
LOST_AFTER_MS = 1000
WORKER = Path(__file__).parent / "workers" / "lifecycle_worker.py"


def envelope(key: str, payload: dict) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


def start_worker(url: str, worker: str, routines: list[str], labels: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, worker, ",".join(routines), json.dumps(labels)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def get_worker(nc, worker: str) -> dict | None:
    reply = await nc.request("v1.registry.get", envelope("v1.registry.get", {"workerID": worker}), timeout=5)
    body = json.loads(reply.data)
    return body["payload"] if body["payloadKey"] == "v1.registry.worker" else None


async def status_of(nc, worker: str) -> str | None:
    record = await get_worker(nc, worker)
    return record["status"] if record else None


async def test_plain_worker_lifecycle(stack):
    s = await stack("registry", "monitor", heartbeat_interval_ms=INTERVAL_MS, lost_after_ms=LOST_AFTER_MS)
    nc = await s.client()
    events: dict[str, list[str]] = {}

    lost_at: dict[str, str] = {}

    async def on_event(msg) -> None:
        payload = json.loads(msg.data)["payload"]
        events.setdefault(payload["workerID"], []).append(payload["status"])
        if payload["status"] == "LOST":
            lost_at[payload["workerID"]] = payload["at"]

    await nc.subscribe("v1.registry.events.*", cb=on_event)
    pulses = []

    async def on_pulse(msg) -> None:
        pulses.append(json.loads(msg.data)["payload"])

    await nc.subscribe("v1.heartbeat.give_pulse.py-a", cb=on_pulse)
    await nc.flush()

    worker = start_worker(s.url, "py-a", ["py.echo", "py.upper"], {"lang": "python", "zone": "b"})
    try:
        await wait_until("py-a is IDLE", lambda: _is(nc, "py-a", "IDLE"), timeout=10)
        await wait_until("py-a pulses", lambda: len(pulses) >= 3, timeout=5)
        assert all(pulse["incarnation"] == 1 for pulse in pulses)

        reply = await nc.request("v1.registry.list", envelope("v1.registry.list", {}), timeout=5)
        listed = {w["workerID"]: w for w in json.loads(reply.data)["payload"]["workers"]}
        assert listed["py-a"]["routines"] == ["py.echo", "py.upper"]
        assert listed["py-a"]["labels"] == {"lang": "python", "zone": "b"}
        assert listed["py-a"]["status"] == "IDLE"

        filtered = await nc.request(
            "v1.registry.list", envelope("v1.registry.list", {"routineID": "py.upper", "labels": {"lang": "python"}}), timeout=5
        )
        assert [w["workerID"] for w in json.loads(filtered.data)["payload"]["workers"]] == ["py-a"]

        # Killed with SIGKILL: LOST within lostAfterMs plus one interval, by the registry's
        # own timestamp of the change.
        killed_at = datetime.now(timezone.utc)
        worker.send_signal(signal.SIGKILL)
        worker.wait(5)
        await wait_until("py-a is LOST", lambda: _is(nc, "py-a", "LOST"), timeout=5)
        await wait_until("LOST event seen", lambda: "py-a" in lost_at, timeout=2)
        lost = datetime.fromisoformat(lost_at["py-a"].replace("Z", "+00:00"))
        took_ms = (lost - killed_at).total_seconds() * 1000
        assert took_ms <= LOST_AFTER_MS + INTERVAL_MS, f"LOST after {took_ms:.0f} ms"
        assert events["py-a"] == ["INITIALIZING", "IDLE", "UNRESPONSIVE", "LOST"]
    finally:
        if worker.poll() is None:
            worker.kill()


async def test_terminating_worker_goes_offline_not_lost(stack):
    s = await stack("registry", "monitor", heartbeat_interval_ms=INTERVAL_MS, lost_after_ms=LOST_AFTER_MS)
    nc = await s.client()
    events: list[str] = []

    async def on_event(msg) -> None:
        events.append(json.loads(msg.data)["payload"]["status"])

    await nc.subscribe("v1.registry.events.py-b", cb=on_event)
    await nc.flush()
    worker = start_worker(s.url, "py-b", ["py.echo"], {})
    try:
        await wait_until("py-b is IDLE", lambda: _is(nc, "py-b", "IDLE"), timeout=10)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(5) == 0
        await wait_until("py-b is OFFLINE", lambda: _is(nc, "py-b", "OFFLINE"), timeout=5)
        # Stays OFFLINE, never LOST, well past lostAfterMs.
        await asyncio.sleep(2 * LOST_AFTER_MS / 1000)
        assert await status_of(nc, "py-b") == "OFFLINE"
        assert events == ["INITIALIZING", "IDLE", "TERMINATING", "OFFLINE"]
        record = await get_worker(nc, "py-b")
        assert record["terminatingReason"] == "SIGTERM"
    finally:
        if worker.poll() is None:
            worker.kill()


async def _is(nc, worker: str, status: str) -> bool:
    return await status_of(nc, worker) == status
