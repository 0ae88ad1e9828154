"""Pieces of the SDK that need no running stack: payload checks, child matching, log levels."""

from __future__ import annotations

import json
import logging
import pytest

from drover_worker import Context, ProtocolViolation, Worker, protocol
from drover_worker.testing import RecordingRuntime
from drover_worker.children import ChildWaiter, ChildWaiters, build_spec
from drover_worker.logs import level_name, normalize_level


def test_encode_checks_field_names_and_size():
    body = protocol.encode("v1.routine.starting", {"runID": "r1", "attempt": 1})
    assert json.loads(body) == {"payloadKey": "v1.routine.starting", "payload": {"runID": "r1", "attempt": 1}}
    with pytest.raises(ProtocolViolation, match="missing attempt"):
        protocol.encode("v1.routine.starting", {"runID": "r1"})
    with pytest.raises(ProtocolViolation, match="unknown field.*runId"):
        protocol.encode("v1.routine.completed", {"runID": "r1", "attempt": 1, "outcome": "succeeded", "runId": "x"})
    with pytest.raises(ProtocolViolation, match="not JSON"):
        protocol.encode("v1.routine.completed", {"runID": "r1", "attempt": 1, "outcome": "succeeded", "result": {1, 2}})
    with pytest.raises(ProtocolViolation, match="over the 262144 limit"):
        protocol.encode("v1.routine.completed", {"runID": "r1", "attempt": 1, "outcome": "succeeded", "result": "x" * 262144})


def test_identifiers():
    assert protocol.check_worker_id("resizer-1_A") == "resizer-1_A"
    for bad in ("", "a.b", "a b", "x" * 65):
        with pytest.raises(ProtocolViolation):
            protocol.check_worker_id(bad)
    assert protocol.check_routine_id("images.resize")
    for bad in ("", "images.", ".x", "a..b", "a b", "a" * 129):
        with pytest.raises(ProtocolViolation):
            protocol.check_routine_id(bad)
    assert protocol.check_local_run_id("thumb 1 — ü")
    for bad in ("", "a\nb", "x" * 257):
        with pytest.raises(ProtocolViolation):
            protocol.check_local_run_id(bad)
    assert protocol.timestamp().endswith("Z") and len(protocol.timestamp()) == 24


def test_worker_arguments_are_checked():
    with pytest.raises(ProtocolViolation):
        Worker("bad id")
    with pytest.raises(ValueError):
        Worker("w", capacity=0)
    with pytest.raises(ProtocolViolation):
        Worker("w", labels={"gpu": True})  # type: ignore[dict-item]
    worker = Worker("w")
    with pytest.raises(TypeError, match="async"):
        worker.add_routine("a.b", lambda ctx, params: None)  # type: ignore[arg-type]

    @worker.routine("a.b")
    async def handler(ctx: Context, params: None) -> None:
        return None

    with pytest.raises(ValueError, match="already"):
        worker.add_routine("a.b", handler)
    assert worker.routines == ["a.b"] and worker.status == "INITIALIZING"


def _ctx(run_id: str) -> Context:
    return Context(RecordingRuntime(), {"runID": run_id, "attempt": 1, "routineID": "p.r"})


async def test_a_completion_overtaking_the_reply_is_kept_for_its_waiter():
    waiters = ChildWaiters()
    # Two parents on one worker use the same localRunID.
    first = ChildWaiter(build_spec("parent-1", "c.r", None, "step", {}), {}, 1)
    second = ChildWaiter(build_spec("parent-2", "c.r", None, "step", {}), {}, 1)
    waiters.add(first)
    waiters.add(second)
    waiters.on_completed({"runID": "child-2", "localRunID": "step", "outcome": "succeeded", "result": 2})
    assert not first.future.done() and not second.future.done()
    waiters.accepted(first, "child-1")
    waiters.accepted(second, "child-2")  # its completion came first
    assert second.future.result()["result"] == 2 and not first.future.done()
    waiters.on_completed({"runID": "child-1", "localRunID": "step", "outcome": "failed", "status": "FAILED"})
    assert first.future.result()["status"] == "FAILED"
    waiters.remove(first)
    waiters.remove(second)
    assert waiters.pending() == [] and waiters._early == {} and waiters._by_local == {}


def test_child_spec_takes_protocol_and_snake_case_fields():
    spec = build_spec("p", "c.r", {"x": 1}, "one", {"max_retries": 2, "maxExecTimeMs": 50, "env": {"A": "b"}, "idempotency_key": None})
    assert spec == {
        "routineID": "c.r",
        "parentRunID": "p",
        "localRunID": "one",
        "params": {"x": 1},
        "maxRetries": 2,
        "maxExecTimeMs": 50,
        "env": {"A": "b"},
    }
    with pytest.raises(ProtocolViolation, match="env"):
        build_spec("p", "c.r", None, "one", {"env": {"A": 1}})


def test_log_levels():
    assert [level_name(n) for n in (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)] == [
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "error",
    ]
    assert normalize_level("WARNING") == "warn" and normalize_level("info") == "info"
    with pytest.raises(ValueError):
        normalize_level("loud")


def test_context_cancel_state():
    ctx = _ctx("r")
    assert not ctx.cancelled and not ctx.waiting_on_children
    ctx.cancel_event.set()
    assert ctx.cancelled
