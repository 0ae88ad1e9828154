"""One conformance suite, run against three kinds of worker that implement the same routines.

- ``rust``: the Rust SDK (examples/conformance-rust, binary ``drover-conformance-worker``);
- ``python-sdk``: the Python SDK (conformance/sdk_worker.py);
- ``plain``: no SDK, nats-py and docs/protocol.md only (conformance/plain_worker.py).

Each program takes ``NATS_URL WORKER_ID CAPACITY GRACE_SECONDS``, prints ``ready <id>``
when ready, and stops gracefully on SIGTERM. The routines (see each program):
``conf.echo``, ``conf.flaky``, ``conf.fatal``, ``conf.sleep`` (which prints
``sleep cancelled <runID>`` when it is stopped), ``conf.parent``.

Every test runs once per kind, against its own stack (registry, heartbeat-monitor,
scheduler; pulses every 200 ms, LOST after 1 s), and fails if Drover refused any message
of the worker as malformed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator

import pytest

from conformance.support import CONFORMANCE_DIR, Drover, WorkerProcess, python_program, rust_program
from drover_harness import Stack, request_failed, wait_until

INTERVAL_MS = 200
LOST_AFTER_MS = 1000

KINDS = ["rust", "python-sdk", "plain"]


def program(kind: str, *args: str) -> list[str]:
    if kind == "rust":
        return rust_program("drover-conformance-worker", *args)
    if kind == "python-sdk":
        return python_program(CONFORMANCE_DIR / "sdk_worker.py", *args)
    if kind == "plain":
        return python_program(CONFORMANCE_DIR / "plain_worker.py", *args)
    raise ValueError(kind)


class Conformance:
    """A stack, a plain client of it, and worker processes of one kind."""

    def __init__(self, kind: str, stack: Stack, drover: Drover):
        self.kind = kind
        self.stack = stack
        self.drover = drover
        self.workers: list[WorkerProcess] = []
        self._ids = itertools.count(1)

    async def spawn(self, capacity: int = 1, grace: float = 10) -> WorkerProcess:
        """Starts a worker of this kind and waits until it is ready (and the registry says so)."""
        worker_id = f"{self.kind}-{next(self._ids)}"
        argv = program(self.kind, self.stack.url, worker_id, str(capacity), str(grace))
        worker = WorkerProcess(worker_id, argv, {"RUST_LOG": "info"}, self.stack.log_dir)
        worker.spawn()
        self.workers.append(worker)
        await worker.wait_ready()
        await self.drover.wait_status(worker_id, "IDLE")
        return worker

    async def spawn_many(self, count: int, **options) -> list[WorkerProcess]:
        return list(await asyncio.gather(*(self.spawn(**options) for _ in range(count))))


@pytest.fixture(params=KINDS)
async def conf(request: pytest.FixtureRequest, stack) -> AsyncIterator[Conformance]:
    s = await stack("registry", "monitor", "scheduler", heartbeat_interval_ms=INTERVAL_MS, lost_after_ms=LOST_AFTER_MS)
    drover = await Drover.connect(s)
    c = Conformance(request.param, s, drover)
    try:
        yield c
    finally:
        for worker in c.workers:
            worker.kill()
        failed = request_failed(request)
        if failed:
            for worker in c.workers:
                worker.dump_log(80)
        await drover.close()
    assert drover.malformed_errors() == [], f"Drover refused messages of the {c.kind} worker: {drover.malformed_errors()}"


async def idle_again(drover: Drover, worker_id: str) -> None:
    """The registry and the worker's own pulses agree that it holds nothing."""
    await drover.wait_worker(
        worker_id,
        lambda r: r["status"] == "IDLE" and r.get("reportedStatus") == "IDLE" and not r["runs"],
        "to be IDLE by its own account",
    )


async def test_plain_run(conf: Conformance):
    worker = await conf.spawn()
    params = {"text": "hello", "n": [1, 2.5, None, True], "nested": {"ü": "ß"}}
    run_id = await conf.drover.submit("conf.echo", params)
    record = await conf.drover.wait_run(run_id, {"SUCCEEDED"})
    assert record["result"] == params
    assert record["attempt"] == 1
    assert record["workerID"] == worker.worker_id


async def test_failure_and_retry(conf: Conformance):
    await conf.spawn(capacity=2)
    fast = {"initialMs": 50, "multiplier": 1, "maxMs": 50}
    flaky = await conf.drover.submit("conf.flaky", {"succeed_on_attempt": 2}, maxRetries=2, retryBackoff=fast)
    fatal = await conf.drover.submit("conf.fatal", {}, maxRetries=3, retryBackoff=fast)

    flaky_record, fatal_record = await asyncio.gather(
        conf.drover.wait_run(flaky, {"SUCCEEDED"}), conf.drover.wait_run(fatal, {"FAILED"})
    )
    assert flaky_record["attempt"] == 2
    assert flaky_record["retries"] == 1
    assert flaky_record["result"] == {"attempt": 2}

    assert fatal_record["attempt"] == 1, "a non-retryable failure must not be retried"
    assert fatal_record["failureReason"] == "error"
    assert fatal_record["error"]["retryable"] is False
    assert fatal_record["error"]["message"]


async def test_cancel(conf: Conformance):
    worker = await conf.spawn(capacity=1)
    run_id = await conf.drover.submit("conf.sleep", {"ms": 10_000})
    await conf.drover.wait_run(run_id, {"RUNNING"})
    started = asyncio.get_running_loop().time()
    record = await conf.drover.cancel(run_id)
    assert record["status"] == "CANCELLED"
    assert record["failureReason"] == "cancelled"
    # The worker stopped the routine, and its own pulses no longer list the attempt.
    await worker.wait_line(f"sleep cancelled {run_id}", timeout=3)
    await idle_again(conf.drover, worker.worker_id)
    echo = await conf.drover.submit("conf.echo", {"after": "cancel"}, conditions={"workerIDs": [worker.worker_id]})
    after = await conf.drover.wait_run(echo, {"SUCCEEDED"})
    assert after["result"] == {"after": "cancel"}
    assert asyncio.get_running_loop().time() - started < 5, "the cancelled sleep held the worker"
    assert (await conf.drover.run(run_id))["status"] == "CANCELLED"


async def test_timeout(conf: Conformance):
    worker = await conf.spawn(capacity=1)
    run_id = await conf.drover.submit("conf.sleep", {"ms": 10_000}, maxExecTimeMs=500)
    record = await conf.drover.wait_run(run_id, {"FAILED"}, timeout=5)
    assert record["failureReason"] == "max_exec_exceeded"
    assert record["attempt"] == 1
    await worker.wait_line(f"sleep cancelled {run_id}", timeout=3)
    await idle_again(conf.drover, worker.worker_id)


async def test_child_run(conf: Conformance):
    worker = await conf.spawn(capacity=2)
    run_id = await conf.drover.submit("conf.parent", {"child": {"greeting": "hi", "list": [1, 2]}})
    record = await conf.drover.wait_run(run_id, {"SUCCEEDED"})
    assert record["result"] == {"child": {"greeting": "hi", "list": [1, 2]}}
    children = [r for r in await conf.drover.runs_of("conf.echo") if r.get("parentRunID") == run_id]
    assert len(children) == 1
    child = children[0]
    assert child["localRunID"] == "child-1"
    assert child["status"] == "SUCCEEDED"
    assert child["workerID"] == worker.worker_id


async def test_kill_then_reassignment(conf: Conformance):
    first, second = await conf.spawn_many(2, capacity=1)
    by_id = {first.worker_id: first, second.worker_id: second}
    run_id = await conf.drover.submit("conf.sleep", {"ms": 2000})
    running = await conf.drover.wait_run(run_id, {"RUNNING"})
    victim = by_id.pop(running["workerID"])
    (survivor,) = by_id.values()

    victim.kill()
    record = await conf.drover.wait_run(run_id, {"SUCCEEDED"}, timeout=15)
    assert record["workerID"] == survivor.worker_id
    assert record["reassignments"] >= 1
    assert record["retries"] == 0, "a lost worker is a reassignment, not a failed attempt"
    assert record["result"] == {"slept": 2000}
    assert (await conf.drover.worker(victim.worker_id))["status"] == "LOST"


async def test_graceful_shutdown(conf: Conformance):
    worker = await conf.spawn(capacity=1, grace=10)
    events = await conf.drover.collect(f"v1.registry.events.{worker.worker_id}")
    run_id = await conf.drover.submit("conf.sleep", {"ms": 1000})
    await conf.drover.wait_run(run_id, {"RUNNING"})

    worker.terminate()
    await conf.drover.wait_status(worker.worker_id, "TERMINATING", timeout=5)
    record = await conf.drover.wait_run(run_id, {"SUCCEEDED"})
    assert record["attempt"] == 1 and record["reassignments"] == 0
    assert record["workerID"] == worker.worker_id
    assert record["result"] == {"slept": 1000}
    assert await worker.wait_exit(10) == 0, worker.log_tail()
    await conf.drover.wait_status(worker.worker_id, "OFFLINE", timeout=5)
    await wait_until("the OFFLINE event", lambda: any(e["status"] == "OFFLINE" for e in events), timeout=2)
    statuses = [e["status"] for e in events]
    assert "TERMINATING" in statuses and "LOST" not in statuses, statuses
    assert statuses.index("TERMINATING") < statuses.index("OFFLINE"), statuses


async def test_shutdown_past_the_grace_period(conf: Conformance):
    """A run that outlives the grace period is abandoned without a completion, and placed
    again once the worker is OFFLINE: a reassignment, not a failed attempt."""
    first, second = await conf.spawn_many(2, capacity=1, grace=0.3)
    by_id = {first.worker_id: first, second.worker_id: second}
    run_id = await conf.drover.submit("conf.sleep", {"ms": 1500})
    running = await conf.drover.wait_run(run_id, {"RUNNING"})
    leaving = by_id.pop(running["workerID"])
    (staying,) = by_id.values()

    leaving.terminate()
    assert await leaving.wait_exit(5) == 0, leaving.log_tail()
    record = await conf.drover.wait_run(run_id, {"SUCCEEDED"}, timeout=15)
    assert record["workerID"] == staying.worker_id
    assert record["reassignments"] >= 1 and record["retries"] == 0, record
    assert record["result"] == {"slept": 1500}
    assert (await conf.drover.worker(leaving.worker_id))["status"] == "OFFLINE"
