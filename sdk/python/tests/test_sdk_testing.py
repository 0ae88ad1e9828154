"""drover_worker.testing: routines like the examples', run without a broker."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from drover_worker import ChildFailed, Context, DroverLogHandler, Fail
from drover_worker.testing import ChildFailure, RoutineEnvironment

# ---------------------------------------------------------------- routines (as in examples/)

logger = logging.getLogger("sdk-tests.testing")


async def wordcount(ctx: Context, params: dict) -> dict:
    """examples/python-worker's py.wordcount."""
    text = params.get("text") if isinstance(params, dict) else None
    if not isinstance(text, str):
        raise Fail("params.text must be a string")
    words = re.findall(r"[\w']+", text.lower())
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    await ctx.log("info", f"counted {len(words)} words", unique=len(counts))
    return {"words": len(words), "unique": len(counts), "top": [list(item) for item in top]}


async def report(ctx: Context, params: dict) -> dict:
    """examples/python-workflow's py.report: one child per item, gathered."""
    items: list[str] = params["items"]
    await ctx.log("info", f"report of {len(items)} items, attempt {ctx.attempt}")
    fetched = await asyncio.gather(
        *(ctx.run_child("py.fetch", {"item": item}, local_id=f"fetch-{index}", max_retries=2) for index, item in enumerate(items))
    )
    return {"items": len(fetched), "total_bytes": sum(f["bytes"] for f in fetched), "fetched": list(fetched)}


def fetch(routine: str, params: dict, local_id: str) -> dict:
    """What py.fetch returns, answered by the test instead of a child run."""
    return {"item": params["item"], "bytes": 100 * len(params["item"])}


# ---------------------------------------------------------------- outcomes


async def test_a_result_is_reported_as_succeeded():
    env = RoutineEnvironment(params={"text": "the cat and the hat"}, run_id="run-7", attempt=3)
    outcome = await env.run(wordcount)
    assert outcome.succeeded and not outcome.failed and not outcome.cancelled
    assert outcome.result == {"words": 5, "unique": 4, "top": [["the", 2], ["and", 1], ["cat", 1]]}
    assert outcome.completed == {"runID": "run-7", "attempt": 3, "outcome": "succeeded", "result": outcome.result}
    # starting goes out first, then exactly one completed, as a worker sends them.
    assert [key for key, _ in env.runtime.sent] == ["v1.routine.starting", "v1.routine.completed"]
    assert env.runtime.sent[0][1] == {"runID": "run-7", "attempt": 3}


async def test_the_context_carries_the_assignment():
    seen: dict[str, Any] = {}

    async def look(ctx: Context, params: Any) -> str:
        seen.update(
            run_id=ctx.run_id,
            attempt=ctx.attempt,
            routine_id=ctx.routine_id,
            params=params,
            env=ctx.env,
            parent=ctx.parent_run_id,
            max_exec=ctx.max_exec_time_ms,
            worker=ctx.worker,
        )
        return ctx.env["REGION"]

    env = RoutineEnvironment(
        params=[1, 2], env={"REGION": "eu"}, attempt=2, routine_id="py.look", parent_run_id="p-1", max_exec_time_ms=500
    )
    outcome = await env.run(look)
    assert outcome.result == "eu"
    assert seen == {
        "run_id": "test-run",
        "attempt": 2,
        "routine_id": "py.look",
        "params": [1, 2],
        "env": {"REGION": "eu"},
        "parent": "p-1",
        "max_exec": 500,
        "worker": None,
    }


async def test_exceptions_become_failures_as_the_worker_reports_them():
    outcome = await RoutineEnvironment(params={"text": 42}).run(wordcount)
    assert outcome.failed
    assert outcome.error == {"message": "params.text must be a string", "type": "Fail", "retryable": False}

    async def broken(ctx: Context, params: dict) -> None:
        return params["missing"]

    env = RoutineEnvironment(params={})
    outcome = await env.run(broken)
    assert outcome.completed == {
        "runID": "test-run",
        "attempt": 1,
        "outcome": "failed",
        "error": {"message": "'missing'", "type": "KeyError", "retryable": True},
    }
    # Any other exception is also logged with its traceback, as on a worker.
    [line] = env.logs
    assert line["level"] == "error" and line["message"] == "routine test.routine raised KeyError: 'missing'"
    assert "KeyError: 'missing'" in line["fields"]["exception"]

    async def not_json(ctx: Context, params: None) -> object:
        return {1, 2}

    outcome = await RoutineEnvironment().run(not_json)
    assert outcome.error is not None and outcome.error["type"] == "InvalidResult" and outcome.error["retryable"] is False


async def test_log_lines_are_captured_with_the_run():
    handler = DroverLogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    async def chatty(ctx: Context, params: dict) -> None:
        await ctx.log("warning", "resizing", width=params["width"], path=Path("/tmp/x"))
        logger.info("almost out of %s", "memory", extra={"free_mb": 12})
        await asyncio.to_thread(logger.debug, "from a thread")

    try:
        env = RoutineEnvironment(params={"width": 640}, run_id="run-logs")
        logger.info("outside any run: not captured")
        outcome = await env.run(chatty)
    finally:
        logger.removeHandler(handler)
    assert outcome.succeeded and outcome.result is None
    assert [(line["level"], line["message"]) for line in env.logs] == [
        ("warn", "resizing"),
        ("info", "almost out of memory"),
        ("debug", "from a thread"),
    ]
    assert all(line["runID"] == "run-logs" and line["timestamp"].endswith("Z") for line in env.logs)
    assert env.logs[0]["fields"] == {"width": 640, "path": "/tmp/x"}
    assert env.logs[1]["fields"] == {"logger": "sdk-tests.testing", "free_mb": 12}


async def test_an_unknown_log_level_is_the_callers_error():
    async def loud(ctx: Context, params: None) -> None:
        await ctx.log("loud", "hello")

    outcome = await RoutineEnvironment().run(loud)
    assert outcome.error is not None and outcome.error["type"] == "ValueError"
    assert "unknown log level 'loud'" in outcome.error["message"]


# ---------------------------------------------------------------- children


async def test_child_requests_are_answered_by_the_test():
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    env = RoutineEnvironment(params={"items": ["ab", "cde"]}, run_id="parent-1", traceparent=traceparent)
    env.on_child("py.fetch", fetch)
    outcome = await env.run(report)
    assert outcome.succeeded, outcome.error
    assert outcome.result == {
        "items": 2,
        "total_bytes": 500,
        "fetched": [{"item": "ab", "bytes": 200}, {"item": "cde", "bytes": 300}],
    }
    assert [(r.routine, r.params, r.local_id) for r in env.child_requests] == [
        ("py.fetch", {"item": "ab"}, "fetch-0"),
        ("py.fetch", {"item": "cde"}, "fetch-1"),
    ]
    # The request is the wire payload a worker sends, trace context included.
    assert env.child_requests[0].spec == {
        "routineID": "py.fetch",
        "parentRunID": "parent-1",
        "localRunID": "fetch-0",
        "params": {"item": "ab"},
        "maxRetries": 2,
    }
    assert env.child_requests[0].headers["traceparent"].split("-")[1] == "a" * 32


async def test_a_failed_child_fails_the_parent_unless_it_is_caught():
    env = RoutineEnvironment(params={"items": ["a", "b"]})
    env.on_child("py.fetch", lambda routine, params, local_id: ChildFailure("no such item") if params["item"] == "b" else fetch(routine, params, local_id))
    outcome = await env.run(report)
    assert outcome.failed and outcome.error is not None
    assert outcome.error["type"] == "ChildFailed" and outcome.error["retryable"] is False
    assert "no such item" in outcome.error["message"]

    caught: list[ChildFailed] = []

    async def tolerant(ctx: Context, params: None) -> str:
        try:
            return await ctx.run_child("py.flaky", None, local_id="only")
        except ChildFailed as failed:
            caught.append(failed)
            return "fallback"

    async def flaky(routine: str, params: None, local_id: str) -> str:
        raise Fail("upstream down", retryable=True, type="Upstream")

    env = RoutineEnvironment(children=flaky)  # answers any child routine
    outcome = await env.run(tolerant)
    assert outcome.result == "fallback"
    [failed] = caught
    assert (failed.status, failed.failure_reason, failed.local_run_id, failed.routine_id) == ("FAILED", "error", "only", "py.flaky")
    assert failed.error == {"message": "upstream down", "type": "Upstream", "retryable": True}


async def test_children_are_memoized_across_attempts():
    calls: list[str] = []

    def count(routine: str, params: Any, local_id: str) -> str:
        calls.append(local_id)
        return f"{local_id} done"

    async def two_steps(ctx: Context, params: None) -> list[str]:
        first = await ctx.run_child("py.step", None, local_id="step-1")
        if ctx.attempt == 1:
            raise RuntimeError("crashed between the steps")
        return [first, await ctx.run_child("py.step", None, local_id="step-2")]

    env = RoutineEnvironment()
    env.on_child("py.step", count)
    assert (await env.run(two_steps)).failed
    env.attempt = 2  # Drover retries the run: the same child comes back, not run again
    outcome = await env.run(two_steps)
    assert outcome.completed == {"runID": "test-run", "attempt": 2, "outcome": "succeeded", "result": ["step-1 done", "step-2 done"]}
    assert calls == ["step-1", "step-2"]
    assert [r.local_id for r in env.child_requests] == ["step-1", "step-1", "step-2"]


async def test_a_child_without_an_answer_is_reported():
    async def lonely(ctx: Context, params: None) -> None:
        await ctx.run_child("py.nobody", None, local_id="x")

    outcome = await RoutineEnvironment().run(lonely)
    assert outcome.error is not None and outcome.error["type"] == "LookupError"
    assert "env.on_child('py.nobody'" in outcome.error["message"]


# ---------------------------------------------------------------- cancellation


async def test_cancellation_is_observed_by_the_routine():
    entered, release = asyncio.Event(), asyncio.Event()
    observed: list[tuple[bool, str | None]] = []

    async def slow_child(routine: str, params: Any, local_id: str) -> str:
        entered.set()
        await release.wait()
        return "too late"

    async def waits(ctx: Context, params: None) -> str:
        try:
            return await ctx.run_child("py.slow", None, local_id="slow")
        except asyncio.CancelledError:
            observed.append((ctx.cancelled, ctx.cancel_reason))
            raise

    env = RoutineEnvironment()
    env.on_child("py.slow", slow_child)
    running = asyncio.ensure_future(env.run(waits))
    await asyncio.wait_for(entered.wait(), 5)
    assert env.context is not None and env.context.waiting_on_children  # a worker would say HANGING
    env.cancel("cancelled on request")
    outcome = await asyncio.wait_for(running, 5)
    assert outcome.cancelled and outcome.outcome == "cancelled" and outcome.completed is None
    assert outcome.cancel_reason == "cancelled on request"
    assert observed == [(True, "cancelled on request")]
    assert not env.context.waiting_on_children
    # No completed for a cancelled attempt: the run has moved on.
    assert [key for key, _ in env.runtime.sent] == ["v1.routine.starting"]


async def test_a_cancel_before_the_run_stops_it_at_once():
    started: list[int] = []

    async def never(ctx: Context, params: None) -> None:
        started.append(ctx.attempt)

    env = RoutineEnvironment()
    env.cancel("max_exec_exceeded")
    outcome = await env.run(never)
    assert outcome.cancelled and outcome.cancel_reason == "max_exec_exceeded"
    assert started == []
    assert (await env.run(never)).succeeded and started == [1]  # the cancel was for one run only


async def test_a_routine_that_raises_cancelled_error_itself_fails_retryably():
    async def gives_up(ctx: Context, params: None) -> None:
        raise asyncio.CancelledError

    outcome = await RoutineEnvironment().run(gives_up)
    assert outcome.error == {"message": "the routine was cancelled", "type": "CancelledError", "retryable": True}


async def test_the_routine_must_be_async():
    def plain(ctx: Context, params: None) -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        await RoutineEnvironment().run(plain)  # type: ignore[arg-type]
