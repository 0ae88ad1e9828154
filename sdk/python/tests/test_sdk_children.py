"""Child runs with Context.run_child: HANGING while waiting, memoization, failures, traces."""

from __future__ import annotations

import asyncio

import pytest

from drover_worker import ChildFailed, Context, Fail
from sdk_support import Drover, Gate, TcpProxy, until


async def test_parent_waits_on_children_and_is_hanging(drover: Drover, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DROVER_OTEL_DISABLED", "1")  # the plain path: forward the traceparent
    parent_worker = drover.worker("py-sdk-parent", capacity=1)
    child_worker = drover.worker("py-sdk-children", capacity=2)
    gate = Gate()

    @parent_worker.routine("sdk.workflow")
    async def workflow(ctx: Context, params: dict) -> dict:
        results = await asyncio.gather(
            *(ctx.run_child("sdk.square", {"n": n}, local_id=f"square-{n}") for n in params["numbers"])
        )
        return {"squares": results}

    @child_worker.routine("sdk.square")
    async def square(ctx: Context, params: dict) -> int:
        await gate.wait()
        return params["n"] ** 2

    await drover.start(parent_worker)
    await drover.start(child_worker)
    run_id = await drover.submit("sdk.workflow", {"numbers": [2, 3]})
    await until("both children run", lambda: gate.waiting == 2)
    record = await drover.wait_worker("py-sdk-parent", "HANGING", reportedStatus="HANGING")
    assert record["runs"][0]["runID"] == run_id and record["runs"][0]["waiting"] is True
    assert parent_worker.status == "HANGING"
    await drover.wait_worker("py-sdk-children", "WORKING")

    gate.open()
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED", done
    assert done["result"] == {"squares": [4, 9]}
    children = await drover.runs_of("sdk.square", 2)
    assert {c["parentRunID"] for c in children} == {run_id}
    assert {c["localRunID"] for c in children} == {"square-2", "square-3"}
    # Without OpenTelemetry the parent forwards the traceparent it was given: one trace.
    assert {c["traceID"] for c in children} == {done["traceID"]}
    await drover.wait_worker("py-sdk-parent", "IDLE")


async def test_children_on_one_worker_memoized_across_parent_retries(drover: Drover):
    worker = drover.worker("py-sdk-family", capacity=3)
    child_calls: list[str] = []
    parent_attempts: list[int] = []

    @worker.routine("sdk.parent")
    async def parent(ctx: Context, params: None) -> dict:
        parent_attempts.append(ctx.attempt)
        first = await ctx.run_child("sdk.child", "a", local_id="step-1", max_retries=0)
        if ctx.attempt == 1:
            raise RuntimeError("crash after the first child")  # retryable: the parent runs again
        try:
            await ctx.run_child("sdk.child", "boom", local_id="step-2")
        except ChildFailed as failed:
            return {"first": first, "failed": [failed.status, failed.failure_reason, failed.error, failed.local_run_id]}
        raise AssertionError("the second child should fail")

    @worker.routine("sdk.child")
    async def child(ctx: Context, params: str) -> str:
        child_calls.append(params)
        if params == "boom":
            raise Fail("no such thing")
        return params.upper()

    await drover.start(worker)
    run_id = await drover.submit("sdk.parent", maxRetries=1, retryBackoff={"initialMs": 1, "multiplier": 1, "maxMs": 1})
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED", done
    assert parent_attempts == [1, 2]
    # The first child ran once: attempt 2 got its memoized result.
    assert child_calls == ["a", "boom"]
    assert done["result"] == {
        "first": "A",
        "failed": ["FAILED", "error", {"message": "no such thing", "type": "Fail", "retryable": False}, "step-2"],
    }


async def test_uncaught_child_failure_fails_the_parent_without_retry(drover: Drover):
    worker = drover.worker("py-sdk-uncaught", capacity=2)
    attempts: list[int] = []

    @worker.routine("sdk.parent")
    async def parent(ctx: Context, params: None) -> None:
        attempts.append(ctx.attempt)
        await ctx.run_child("sdk.bad", None, local_id="bad")

    @worker.routine("sdk.bad")
    async def bad(ctx: Context, params: None) -> None:
        raise KeyError("missing")

    await drover.start(worker)
    run_id = await drover.submit("sdk.parent", maxRetries=3)
    done = await drover.wait_run(run_id)
    assert done["status"] == "FAILED" and done["failureReason"] == "error", done
    assert attempts == [1]
    assert done["error"]["type"] == "ChildFailed" and done["error"]["retryable"] is False


async def test_run_child_checks_its_arguments(drover: Drover):
    worker = drover.worker("py-sdk-args", capacity=1)
    errors: list[str] = []

    @worker.routine("sdk.parent")
    async def parent(ctx: Context, params: None) -> list[str]:
        for kwargs in ({"local_id": ""}, {"local_id": "x", "maxRetrys": 1}, {"local_id": "x", "parentRunID": "p"}):
            with pytest.raises(ValueError) as raised:
                await ctx.run_child("sdk.child", None, **kwargs)
            errors.append(str(raised.value))
        with pytest.raises(ValueError):
            await ctx.run_child("bad routine id", None, local_id="x")
        return errors

    await drover.start(worker)
    done = await drover.wait_run(await drover.submit("sdk.parent"))
    assert done["status"] == "SUCCEEDED", done
    assert "localRunID" in errors[0] and "maxRetrys" in errors[1] and "parentRunID" in errors[2]


async def test_child_end_missed_while_cut_off_is_recovered(drover_with):
    """The forwarded completion is core NATS: lost while the parent's worker is cut off. After
    reconnecting, the worker asks for its waiting children again and hears the end."""
    drover = await drover_with(lost_after_ms=30000)
    proxy = await TcpProxy(drover.stack.nats.port).start()
    parent_worker = drover.worker("py-sdk-cut-parent", url=proxy.url, child_poll_interval=60)
    child_worker = drover.worker("py-sdk-cut-child")
    gate = Gate()

    @parent_worker.routine("sdk.parent")
    async def parent(ctx: Context, params: None) -> str:
        return await ctx.run_child("sdk.child", None, local_id="the-child")

    @child_worker.routine("sdk.child")
    async def child(ctx: Context, params: None) -> str:
        await gate.wait()
        return "child result"

    try:
        await drover.start(parent_worker)
        await drover.start(child_worker)
        run_id = await drover.submit("sdk.parent")
        await until("the child runs", lambda: gate.waiting == 1)
        await proxy.cut()
        gate.open()
        (child_run,) = await drover.runs_of("sdk.child", 1)
        await drover.wait_run(child_run["runID"])  # ended while the parent could not hear
        await proxy.restore()
        done = await drover.wait_run(run_id)
        assert done["status"] == "SUCCEEDED" and done["result"] == "child result", done
        assert parent_worker.incarnation == 1
    finally:
        await parent_worker.stop(grace=0)  # while it can still say goodbye
        await proxy.close()

