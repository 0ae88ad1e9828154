"""Every example under examples/ works: each runs as its own process against a real stack
(registry, heartbeat-monitor, scheduler) and completes runs submitted with plain nats-py.

The workflow example also shows what Drover promises a workflow whose worker dies: the
parent is placed again, and its retried attempt gets the children that already ran back
from memoization instead of running them again.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from conformance.support import EXAMPLES_DIR, Drover, WorkerProcess, python_program, rust_program
from drover_harness import Stack, request_failed, wait_for, wait_until

INTERVAL_MS = 200
LOST_AFTER_MS = 1000


class Examples:
    """A stack, a plain client, and the example processes a test starts."""

    def __init__(self, stack: Stack, drover: Drover):
        self.stack = stack
        self.drover = drover
        self.workers: list[WorkerProcess] = []

    def spawn(self, label: str, argv: list[str], **env: str) -> WorkerProcess:
        worker = WorkerProcess(label, argv, {"DROVER_NATS_URL": self.stack.url, **env}, self.stack.log_dir)
        worker.spawn()
        self.workers.append(worker)
        return worker

    async def spawn_ready(self, worker_id: str, argv: list[str], **env: str) -> WorkerProcess:
        """Starts an example with ``DROVER_WORKER_ID=worker_id`` and waits until it is IDLE."""
        worker = self.spawn(worker_id, argv, DROVER_WORKER_ID=worker_id, **env)
        await self.drover.wait_worker(
            worker_id,
            lambda r: r["status"] == "IDLE" and r.get("pid") in (None, worker.pid),
            "to be IDLE",
            timeout=20,
        )
        return worker


@pytest.fixture
async def examples(request: pytest.FixtureRequest, stack) -> AsyncIterator[Examples]:
    s = await stack("registry", "monitor", "scheduler", heartbeat_interval_ms=INTERVAL_MS, lost_after_ms=LOST_AFTER_MS)
    drover = await Drover.connect(s)
    e = Examples(s, drover)
    try:
        yield e
    finally:
        for worker in e.workers:
            worker.kill()
        failed = request_failed(request)
        if failed:
            for worker in e.workers:
                worker.dump_log(80)
        await drover.close()
    assert drover.malformed_errors() == [], f"Drover refused messages of an example: {drover.malformed_errors()}"


async def stop_gracefully(drover: Drover, worker: WorkerProcess, worker_id: str) -> None:
    assert await worker.stop() == 0, worker.log_tail()
    await drover.wait_status(worker_id, "OFFLINE", timeout=5)


async def test_rust_example_worker(examples: Examples):
    drover = examples.drover
    logs = await drover.collect("v1.log.*")
    worker = examples.spawn("drover-example-worker", rust_program("drover-example-worker"))

    # Without DROVER_WORKER_ID the worker calls itself example-<hostname>-<pid>.
    async def registered() -> dict | None:
        _, page = await drover.request("v1.registry.list", {})
        mine = [w for w in page["workers"] if w.get("pid") == worker.pid and w["status"] == "IDLE"]
        return mine[0] if mine else None

    record = await wait_for("the example worker to be IDLE", registered, timeout=20)
    worker_id = record["workerID"]
    assert worker_id.startswith("example-") and worker_id.endswith(f"-{worker.pid}"), worker_id
    assert record["capacity"] == 8
    assert sorted(record["routines"]) == ["demo.greet", "demo.thumbnail", "demo.workflow"]
    assert record["sdk"]["language"] == "rust"

    images = ["cat.png", "dog.png", "fox.png"]
    workflow = await drover.submit("demo.workflow", {"images": images, "width": 320})
    greet = await drover.submit("demo.greet", {"name": "ada"})
    done = await drover.wait_run(workflow, {"SUCCEEDED"})
    assert done["result"] == {
        "thumbnails": [{"image": image, "width": 320, "url": f"thumbs/320/{image}"} for image in images]
    }
    assert (await drover.wait_run(greet, {"SUCCEEDED"}))["result"] == {"greeting": "hello, ada"}

    children = sorted(
        (r for r in await drover.runs_of("demo.thumbnail") if r.get("parentRunID") == workflow),
        key=lambda r: r["localRunID"],
    )
    assert [c["localRunID"] for c in children] == ["thumb-0", "thumb-1", "thumb-2"]
    assert [c["params"] for c in children] == [{"image": image, "width": 320} for image in images]
    assert all(c["status"] == "SUCCEEDED" and c["attempt"] == 1 for c in children)

    # tracing::info! inside the routines reached Drover as v1.log lines of their runs.
    def workflow_lines() -> list[str]:
        return [line["message"] for line in logs if line.get("runID") == workflow and line["level"] == "info"]

    await wait_until(
        "the workflow's log lines about every image",
        lambda: all(sum(image in message for message in workflow_lines()) >= 2 for image in images),
        timeout=5,
    )
    for child in children:
        await wait_until(
            f"a log line of thumbnail run {child['runID']}",
            lambda: any(line.get("runID") == child["runID"] for line in logs),
            timeout=5,
        )
    await stop_gracefully(drover, worker, worker_id)


async def test_python_worker_example(examples: Examples):
    drover = examples.drover
    worker = await examples.spawn_ready("py-example", python_program(EXAMPLES_DIR / "python-worker" / "worker.py"))
    echo = await drover.submit("py.echo", {"a": [1, 2, {"b": None}]})
    count = await drover.submit("py.wordcount", {"text": "The cat and the hat. The end!"})
    bad = await drover.submit("py.wordcount", {"text": 42}, maxRetries=2)
    assert (await drover.wait_run(echo, {"SUCCEEDED"}))["result"] == {"a": [1, 2, {"b": None}]}
    assert (await drover.wait_run(count, {"SUCCEEDED"}))["result"] == {
        "words": 7,
        "unique": 5,
        "top": [["the", 3], ["and", 1], ["cat", 1]],
    }
    failed = await drover.wait_run(bad, {"FAILED"})
    assert failed["attempt"] == 1 and failed["failureReason"] == "error"
    await stop_gracefully(drover, worker, "py-example")


async def test_plain_python_example(examples: Examples):
    drover = examples.drover
    worker = await examples.spawn_ready("plain-example", python_program(EXAMPLES_DIR / "plain-python" / "worker.py"))
    assert "ready plain-example" in worker.log_contents()
    texts = ["hello drover", "ünïcode ok", "x" * 1000, "", "MiXeD 123"]
    run_ids = [await drover.submit("plain.upper", {"text": text}) for text in texts]
    bad = await drover.submit("plain.upper", {"nope": 1})
    records = await asyncio.gather(*(drover.wait_run(run_id, {"SUCCEEDED"}) for run_id in run_ids))
    assert [r["result"] for r in records] == [{"text": text.upper()} for text in texts]
    failed = await drover.wait_run(bad, {"FAILED"})
    assert failed["error"]["retryable"] is False
    await stop_gracefully(drover, worker, "plain-example")


async def test_python_workflow_survives_a_killed_parent_worker(examples: Examples):
    """The parent runs on a worker with capacity 1 (so its children cannot run there) and the
    children on a second worker. The parent's worker is killed once two of four children
    have finished; a replacement (same workerID, new incarnation) retries the parent, which
    asks for the same four children again and gets the finished two memoized."""
    drover = examples.drover
    program = python_program(EXAMPLES_DIR / "python-workflow" / "workflow.py")
    logs = await drover.collect("v1.log.*")
    child_requests = await drover.collect("v1.routine.request_start.wf-parent")

    parent_worker = await examples.spawn_ready("wf-parent", program, DROVER_CAPACITY="1")
    await examples.spawn_ready("wf-children", program, DROVER_CAPACITY="4")

    items = ["alpha", "beta", "gamma", "delta"]
    fast = {"alpha": 100, "beta": 100}  # the others take 3 s: still running at the kill
    run_id = await drover.submit(
        "py.report",
        {"items": items, "ms": 3000, "ms_by_item": fast},
        conditions={"workerIDs": ["wf-parent"]},
    )
    # Waiting on its children, and running nothing else: HANGING.
    hanging = await drover.wait_status("wf-parent", "HANGING")
    assert [r["runID"] for r in hanging["runs"]] == [run_id] and hanging["runs"][0]["waiting"]

    async def children() -> dict[str, dict]:
        return {r["localRunID"]: r for r in await drover.runs_of("py.fetch") if r.get("parentRunID") == run_id}

    async def two_done_two_running() -> bool:
        status = {local: r["status"] for local, r in (await children()).items()}
        return status == {"fetch-0": "SUCCEEDED", "fetch-1": "SUCCEEDED", "fetch-2": "RUNNING", "fetch-3": "RUNNING"}

    await wait_until("two children done, two running", two_done_two_running, timeout=5)
    parent_worker.kill()
    await examples.spawn_ready("wf-parent", program, DROVER_CAPACITY="1")

    record = await drover.wait_run(run_id, {"SUCCEEDED"}, timeout=15)
    assert record["attempt"] == 2 and record["reassignments"] == 1 and record["retries"] == 0, record
    fetched = record["result"]["fetched"]
    assert [f["item"] for f in fetched] == items
    assert record["result"]["items"] == 4
    assert record["result"]["total_bytes"] == sum(f["bytes"] for f in fetched)

    # Both attempts asked for all four children: eight requests, four runs, each run once.
    requested = sorted((r["parentRunID"], r["localRunID"]) for r in child_requests)
    assert requested == sorted([(run_id, f"fetch-{i}") for i in range(4)] * 2)
    runs = await children()
    assert sorted(runs) == ["fetch-0", "fetch-1", "fetch-2", "fetch-3"]
    for local, child in runs.items():
        assert child["status"] == "SUCCEEDED" and child["attempt"] == 1, (local, child)
        assert child["workerID"] == "wf-children"
    executions = [line["fields"]["item"] for line in logs if line["message"].startswith("fetching ")]
    assert sorted(executions) == sorted(items), f"children executed: {executions}"
    reports = [line["message"] for line in logs if line.get("runID") == run_id and line["message"].startswith("report")]
    assert reports == ["report of 4 items, attempt 1", "report of 4 items, attempt 2"]
