"""The conformance routines with no SDK: nats-py and docs/protocol.md only, for test_conformance.py.

    python plain_worker.py NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]

(or DROVER_NATS_URL, DROVER_WORKER_ID, DROVER_CAPACITY, DROVER_GRACE_SECONDS). Prints
``ready <workerID>`` once ``v1.ready`` is stored; SIGTERM or SIGINT stops it gracefully,
then it exits 0. Section numbers (§) refer to docs/protocol.md.

Beyond examples/plain-python, this worker requests child runs (§6), stops cancelled
attempts (§5.4), reports HANGING while every run it holds waits on children (§4), and on
shutdown finishes held runs within the grace period, abandoning the rest without a
``completed`` (§4.4).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, Awaitable, Callable

import nats
from nats.aio.msg import Msg


def setting(index: int, env: str, default: str | None = None) -> str:
    value = sys.argv[index] if len(sys.argv) > index else os.environ.get(env, default)
    if value is None:
        sys.exit("usage: plain_worker.py NATS_URL WORKER_ID [CAPACITY] [GRACE_SECONDS]")
    return value


URL = setting(1, "DROVER_NATS_URL", "nats://127.0.0.1:4222")
W = setting(2, "DROVER_WORKER_ID")
CAPACITY = int(setting(3, "DROVER_CAPACITY", "2"))
GRACE = float(setting(4, "DROVER_GRACE_SECONDS", "10"))


def envelope(key: str, payload: dict[str, Any]) -> bytes:
    """§1: every body is ``{"payloadKey": ..., "payload": ...}``."""
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


class RoutineFailed(Exception):
    """Raised by a routine: the attempt ends ``failed`` with this error (§5.3)."""

    def __init__(self, message: str, error_type: str, retryable: bool):
        super().__init__(message)
        self.error = {"message": message, "type": error_type, "retryable": retryable}


class Run:
    """What a routine gets: the assignment (§5.1), and a way to run children (§6)."""

    def __init__(self, worker: "PlainWorker", assignment: dict[str, Any]):
        self.worker = worker
        self.run_id: str = assignment["runID"]
        self.attempt: int = assignment["attempt"]
        self.routine_id: str = assignment["routineID"]
        self.params: Any = assignment.get("params")
        self.waiting = 0  # children being waited on: HANGING when every run waits

    async def run_child(self, routine: str, params: Any, local_id: str) -> Any:
        """§6: request the child on v1.routine.request_start.<w>, wait for its forwarded end."""
        self.waiting += 1
        try:
            spec = {"routineID": routine, "params": params, "parentRunID": self.run_id, "localRunID": local_id}
            reply = await self.worker.request(f"v1.routine.request_start.{W}", envelope("v1.routine.request_start", spec))
            body = json.loads(reply.data)
            if body["payloadKey"] != "v1.routine.accepted":
                raise RoutineFailed(f"child refused: {body['payload']}", "ChildRefused", True)
            child_run_id = body["payload"]["runID"]
            completed = await self.worker.child_end(child_run_id)
            self.worker.children.pop(child_run_id, None)
        finally:
            self.waiting -= 1
        if completed["outcome"] != "succeeded":
            # A failed child is memoized: retrying the parent would get the same failure.
            raise RoutineFailed(f"child {local_id} ended {completed.get('status')}", "ChildFailed", False)
        return completed.get("result")


# ---------------------------------------------------------------------------- routines


async def echo(run: Run) -> Any:
    return run.params


async def flaky(run: Run) -> Any:
    succeed_on = run.params.get("succeed_on_attempt", 1)
    if run.attempt < succeed_on:
        raise RoutineFailed(f"attempt {run.attempt} fails; attempt {succeed_on} will succeed", "Flaky", True)
    return {"attempt": run.attempt}


async def fatal(run: Run) -> Any:
    raise RoutineFailed("this routine always fails", "Fatal", False)


async def sleep(run: Run) -> Any:
    try:
        await asyncio.sleep(run.params["ms"] / 1000)  # a cancel cancels the task (§5.4)
    except asyncio.CancelledError:
        print(f"sleep cancelled {run.run_id}", flush=True)  # the test reads this line
        raise
    return {"slept": run.params["ms"]}


async def parent(run: Run) -> Any:
    return {"child": await run.run_child("conf.echo", run.params.get("child"), "child-1")}


ROUTINES: dict[str, Callable[[Run], Awaitable[Any]]] = {
    "conf.echo": echo,
    "conf.flaky": flaky,
    "conf.fatal": fatal,
    "conf.sleep": sleep,
    "conf.parent": parent,
}


# ---------------------------------------------------------------------------- the worker


class PlainWorker:
    def __init__(self, nc: Any):
        self.nc = nc
        self.incarnation = 0
        self.interval = 5.0
        self.status = "INITIALIZING"
        self.runs: dict[tuple[str, int], tuple[Run, asyncio.Task[None]]] = {}
        self.children: dict[str, asyncio.Future[dict[str, Any]]] = {}  # child runID -> its end
        self.stop = asyncio.Event()
        self.registering = False

    async def request(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> Msg:
        """A request retried until answered (NATS or a service may be away for a moment)."""
        while True:
            try:
                return await self.nc.request(subject, body, timeout=2, headers=headers)
            except Exception:
                await asyncio.sleep(0.2)

    async def stored(self, key: str, payload: dict[str, Any], msg_id: str) -> None:
        """§3: publish as a request until JetStream's PubAck, with one Nats-Msg-Id throughout."""
        while True:
            reply = await self.request(f"{key}.{W}", envelope(key, payload), {"Nats-Msg-Id": msg_id})
            if "stream" in json.loads(reply.data):
                return
            await asyncio.sleep(0.2)

    def child_end(self, child_run_id: str) -> asyncio.Future[dict[str, Any]]:
        """The forwarded completion of a child; it may have arrived before the accepted reply."""
        return self.children.setdefault(child_run_id, asyncio.get_running_loop().create_future())

    def derived_status(self) -> str:
        if self.status == "TERMINATING" or self.status == "INITIALIZING":
            return self.status
        if not self.runs:
            return "IDLE"
        return "HANGING" if all(run.waiting for run, _ in self.runs.values()) else "WORKING"

    async def pulse(self, probe_id: str | None = None) -> None:
        """§4.3: incarnation, status, and the attempts held; the probe's id when answering one."""
        payload: dict[str, Any] = {
            "incarnation": self.incarnation,
            "status": self.derived_status(),
            "runs": [{"runID": r, "attempt": a} for r, a in self.runs],
        }
        if probe_id is not None:
            payload["id"] = probe_id
        await self.nc.publish(f"v1.heartbeat.give_pulse.{W}", envelope("v1.heartbeat.give_pulse", payload))

    async def register(self) -> None:
        """§4.1 register, §4.3 pulse at once, §4.2 ready (stored)."""
        if self.registering:
            return
        self.registering = True
        self.status = "INITIALIZING"
        register = {"workerID": W, "routines": list(ROUTINES), "capacity": CAPACITY, "pid": os.getpid(), "name": "plain conformance worker"}
        reply = await self.request(f"v1.register.{W}", envelope("v1.register", register))
        registered = json.loads(reply.data)["payload"]
        self.incarnation = registered["incarnation"]
        self.interval = registered["heartbeatIntervalMs"] / 1000
        self.runs.clear()  # §4.1: a new incarnation forgets what the old one ran
        await self.pulse()
        await self.stored("v1.ready", {"incarnation": self.incarnation}, f"{W}-{self.incarnation}-ready")
        self.status = "READY"
        self.registering = False

    async def execute(self, run: Run) -> None:
        """§5.2 starting, the routine, §5.3 exactly one completed (none once cancelled)."""
        ref = {"runID": run.run_id, "attempt": run.attempt}
        tag = f"{run.run_id}-{run.attempt}"
        try:
            await self.stored("v1.routine.starting", ref, f"{tag}-starting")
            try:
                end = {"outcome": "succeeded", "result": await ROUTINES[run.routine_id](run)}
            except RoutineFailed as failed:
                end = {"outcome": "failed", "error": failed.error}
            except Exception as error:  # an unexpected error: retryable, like the SDKs
                end = {"outcome": "failed", "error": {"message": repr(error), "type": type(error).__name__, "retryable": True}}
            await self.stored("v1.routine.completed", ref | end, f"{tag}-completed")
        finally:
            self.runs.pop((run.run_id, run.attempt), None)

    async def on_inbox(self, msg: Msg) -> None:
        """§3: everything Drover sends to v1.worker.<w>.>"""
        body = json.loads(msg.data)
        key, p = body["payloadKey"], body["payload"]
        if key == "v1.heartbeat.check_pulse":
            await self.pulse(p["id"])
        elif key == "v1.routine.request_start":
            if self.status == "TERMINATING":
                return  # §4.4: not started, not acknowledged: Drover places it again
            if p["routineID"] not in ROUTINES:  # §5.3: failed, no starting needed
                error = {"message": f"no routine {p['routineID']}", "type": "UnknownRoutine", "retryable": False}
                ref = {"runID": p["runID"], "attempt": p["attempt"], "outcome": "failed", "error": error}
                asyncio.ensure_future(self.stored("v1.routine.completed", ref, f"{p['runID']}-{p['attempt']}-completed"))
                return
            run = Run(self, p)
            self.runs[(run.run_id, run.attempt)] = (run, asyncio.ensure_future(self.execute(run)))
        elif key == "v1.routine.cancel":  # §5.4: stop the attempt; its slot is free already
            held = self.runs.pop((p["runID"], p["attempt"]), None)
            if held is not None:
                held[1].cancel()
        elif key == "v1.routine.completed":  # §6: a child's end, forwarded
            future = self.child_end(p["runID"])
            if not future.done():
                future.set_result(p)
        elif key == "v1.routine.starting":  # §6: a child started; nothing to do
            pass
        elif key == "v1.error":  # §9
            if p["code"] == "stale_attempt":  # §5.3: drop that attempt
                details = p.get("details") or {}
                held = self.runs.pop((details.get("runID"), details.get("attempt")), None)
                if held is not None:
                    held[1].cancel()
            elif p["code"] in ("unknown_worker", "not_registered", "stale_incarnation"):
                refused = (p.get("details") or {}).get("incarnation")
                if self.status != "TERMINATING" and (refused is None or refused >= self.incarnation):
                    asyncio.ensure_future(self.register())  # §4.3: register again
            else:
                print(f"refused: {p['code']}: {p['message']}", file=sys.stderr, flush=True)

    async def serve(self) -> None:
        await self.nc.subscribe(f"v1.worker.{W}.>", cb=self.on_inbox)  # §4.2: before ready
        await self.nc.flush()
        await self.register()
        print(f"ready {W}", flush=True)
        while not self.stop.is_set():
            await self.pulse()
            try:
                await asyncio.wait_for(self.stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
        # §4.4: terminating, then held runs get the grace period while pulses go on.
        self.status = "TERMINATING"
        await self.stored("v1.terminating", {"incarnation": self.incarnation, "reason": "SIGTERM"}, f"{W}-{self.incarnation}-terminating")
        deadline = asyncio.get_running_loop().time() + GRACE
        while self.runs and asyncio.get_running_loop().time() < deadline:
            await self.pulse()
            tasks = [task for _, task in self.runs.values()]
            await asyncio.wait(tasks, timeout=min(self.interval, max(deadline - asyncio.get_running_loop().time(), 0)))
        for _, task in list(self.runs.values()):  # out of time: abandoned, placed again elsewhere
            task.cancel()
        await self.nc.drain()  # quiet from now on: OFFLINE


async def main() -> None:
    worker = PlainWorker(await nats.connect(URL, max_reconnect_attempts=-1))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop.set)
    await worker.serve()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
