"""Runs end to end: an SDK worker against the real registry, heartbeat-monitor and scheduler."""

from __future__ import annotations

import asyncio
import os
import socket

import drover_worker
from drover_worker import Context, Fail
from sdk_support import Drover, Gate, until

FAST_RETRY = {"initialMs": 1, "multiplier": 1, "maxMs": 1}


async def test_plain_run_succeeds(drover: Drover):
    worker = drover.worker("py-sdk-a", capacity=2, labels={"gpu": "false"}, name="sdk test worker")
    seen: list[Context] = []

    @worker.routine("sdk.echo")
    async def echo(ctx: Context, params: dict) -> dict:
        seen.append(ctx)
        return {"echo": params, "env": ctx.env, "attempt": ctx.attempt}

    await drover.start(worker)
    record = await drover.worker_record("py-sdk-a")
    assert record["routines"] == ["sdk.echo"]
    assert record["labels"] == {"gpu": "false"}
    assert record["capacity"] == 2
    assert record["name"] == "sdk test worker"
    assert record["sdk"] == {"language": "python", "version": drover_worker.__version__}
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["incarnation"] == worker.incarnation == 1

    run_id = await drover.submit("sdk.echo", {"text": "hi"}, env={"MODE": "test"})
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED", done
    assert done["result"] == {"echo": {"text": "hi"}, "env": {"MODE": "test"}, "attempt": 1}
    assert done["workerID"] == "py-sdk-a"
    (ctx,) = seen
    assert (ctx.run_id, ctx.routine_id, ctx.attempt) == (run_id, "sdk.echo", 1)
    assert ctx.traceparent and ctx.traceparent.split("-")[1] == done["traceID"]
    await until("the slot is free", lambda: worker.active_runs == [])
    await drover.wait_worker("py-sdk-a", "IDLE", reportedStatus="IDLE")


async def test_failures_are_retried_until_retries_run_out(drover: Drover):
    worker = drover.worker("py-sdk-retry")
    calls: list[int] = []

    @worker.routine("sdk.flaky")
    async def flaky(ctx: Context, params: None) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt} broke")

    lines = await drover.subscribe("v1.log.py-sdk-retry")
    await drover.start(worker)
    run_id = await drover.submit("sdk.flaky", maxRetries=2, retryBackoff=FAST_RETRY)
    done = await drover.wait_run(run_id)
    # Each failure is also logged with its traceback.
    await until("three error lines", lambda: len(lines) == 3)
    assert all(line["level"] == "error" and line["runID"] == run_id for line in lines)
    assert "ValueError: attempt 1 broke" in lines[0]["fields"]["exception"]
    assert done["status"] == "FAILED" and done["failureReason"] == "retries_exhausted", done
    assert calls == [1, 2, 3]
    assert done["retries"] == 2 and done["attempt"] == 3
    assert done["error"] == {"message": "attempt 3 broke", "type": "ValueError", "retryable": True}


async def test_fail_not_retryable_ends_the_run_at_once(drover: Drover):
    worker = drover.worker("py-sdk-fail")
    calls: list[int] = []

    class CorruptImage(Fail):
        pass

    @worker.routine("sdk.corrupt")
    async def corrupt(ctx: Context, params: None) -> None:
        calls.append(ctx.attempt)
        raise CorruptImage("image is corrupt")

    @worker.routine("sdk.typed")
    async def typed(ctx: Context, params: None) -> None:
        raise Fail("try later", retryable=True, type="Busy")

    await drover.start(worker)
    run_id = await drover.submit("sdk.corrupt", maxRetries=3, retryBackoff=FAST_RETRY)
    done = await drover.wait_run(run_id)
    assert done["status"] == "FAILED" and done["failureReason"] == "error", done
    assert calls == [1]
    assert done["error"] == {"message": "image is corrupt", "type": "CorruptImage", "retryable": False}

    run_id = await drover.submit("sdk.typed", maxRetries=1, retryBackoff=FAST_RETRY)
    done = await drover.wait_run(run_id)
    assert done["failureReason"] == "retries_exhausted" and done["attempt"] == 2, done
    assert done["error"] == {"message": "try later", "type": "Busy", "retryable": True}


async def test_cancel_reaches_the_routine_and_frees_the_slot(drover: Drover):
    worker = drover.worker("py-sdk-cancel", capacity=1)
    completed = await drover.subscribe("v1.routine.completed.py-sdk-cancel")
    started = Gate()
    outcome: dict[str, object] = {}

    @worker.routine("sdk.forever")
    async def forever(ctx: Context, params: None) -> None:
        try:
            await started.wait()  # never opened
        except asyncio.CancelledError:
            outcome["cancelled"] = ctx.cancelled
            outcome["reason"] = ctx.cancel_reason
            raise

    @worker.routine("sdk.quick")
    async def quick(ctx: Context, params: None) -> str:
        return "done"

    await drover.start(worker)
    run_id = await drover.submit("sdk.forever")
    await drover.wait_run(run_id, {"RUNNING"})
    await until("the routine runs", lambda: started.waiting == 1)
    record = await drover.cancel(run_id, reason="user asked")
    assert record["status"] == "CANCELLED" and record["failureReason"] == "cancelled"
    await until("the routine saw CancelledError", lambda: "cancelled" in outcome)
    assert outcome == {"cancelled": True, "reason": "user asked"}
    await until("the slot is free", lambda: worker.active_runs == [])

    # The slot serves the next run (capacity 1), and no completed was sent for the cancelled attempt.
    next_run = await drover.submit("sdk.quick")
    assert (await drover.wait_run(next_run))["status"] == "SUCCEEDED"
    assert [c["runID"] for c in completed] == [next_run]
    assert (await drover.run(run_id))["status"] == "CANCELLED"


async def test_max_exec_time_cancels_the_routine(drover: Drover):
    worker = drover.worker("py-sdk-timeout")
    reasons: list[str | None] = []

    @worker.routine("sdk.slow")
    async def slow(ctx: Context, params: None) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            reasons.append(ctx.cancel_reason)
            raise

    await drover.start(worker)
    run_id = await drover.submit("sdk.slow", maxExecTimeMs=300)
    done = await drover.wait_run(run_id)
    assert done["status"] == "FAILED" and done["failureReason"] == "max_exec_exceeded", done
    await until("the routine was cancelled", lambda: reasons == ["max_exec_exceeded"])


async def test_unknown_routine_is_answered_failed(drover: Drover):
    """An assignment for a routine the worker lacks (the scheduler never sends one, so the test does)."""
    worker = drover.worker("py-sdk-unknown")

    @worker.routine("sdk.known")
    async def known(ctx: Context, params: None) -> None:
        return None

    await drover.start(worker)
    completed = await drover.subscribe("v1.routine.completed.py-sdk-unknown")
    assignment = {"runID": "not-a-real-run", "attempt": 1, "routineID": "sdk.unknown", "params": None}
    await drover.nc.publish(
        "v1.worker.py-sdk-unknown.routine.request_start",
        b'{"payloadKey":"v1.routine.request_start","payload":' + __import__("json").dumps(assignment).encode() + b"}",
    )
    await until("the failed completion", lambda: completed)
    assert completed == [
        {
            "runID": "not-a-real-run",
            "attempt": 1,
            "outcome": "failed",
            "error": {"message": "worker py-sdk-unknown has no routine sdk.unknown", "type": "UnknownRoutine", "retryable": False},
        }
    ]
