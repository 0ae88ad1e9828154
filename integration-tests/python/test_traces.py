"""Every run is one trace (DESIGN §8), checked with a real OTLP/HTTP receiver (otlp_receiver.py).

The four services, the workers and the ``drover`` CLI export to the receiver
(``OTEL_EXPORTER_OTLP_ENDPOINT``, batches every 100 ms). Each scenario waits until the spans
it expects have arrived and the exporters have gone quiet, then checks the run's trace: one
root, no orphan, and this tree:

    drover.submit                  the CLI, when the client traces
    └ drover.intake                the scheduler; a child's sits under its parent's drover.execute
       ├ drover.enqueue
       └ drover.run                drover.status, drover.attempts, drover.retries, drover.reassignments
          ├ drover.attempt         one per attempt: drover.attempt, drover.worker_id, drover.outcome
          │  ├ drover.execute      a traced worker's execution span, its log lines as events
          │  ├ drover.logs         the log-collector's record of an untraced worker's lines
          │  └ drover.worker.*     the heartbeat-monitor's and registry's decisions
          └ drover.retry_backoff   between a failed attempt and its retry

Workers: the Rust example worker (``drover-example-worker``, traced by the Rust SDK), a
Python SDK worker that exports with the OpenTelemetry SDK (workers/traced_sdk_worker.py),
and a plain-NATS worker with no tracing at all (workers/untraced_worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

import pytest

from conformance.support import Drover, WorkerProcess, python_program, rust_program
from drover_harness import Stack, bin_dir, patient, request_failed, wait_until
from otlp_receiver import OtlpReceiver, Span

INTERVAL_MS = 200
LOST_AFTER_MS = 1000
WORKERS = Path(__file__).parent / "workers"
SERVICES = ("registry", "monitor", "scheduler", "log-collector")
#: Outcomes whose attempt span carries error status.
ERROR_OUTCOMES = {"failed", "timed_out", "worker_lost", "not_acknowledged"}
#: OTEL_* variables that would make a process export: cleared for the no-endpoint test.
OTEL_EXPORT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
)


@dataclass
class Cli:
    """What one ``drover`` command did."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Traced:
    """A stack exporting to ``receiver``, a plain client, and the workers a test starts."""

    def __init__(self, stack: Stack, drover: Drover, receiver: OtlpReceiver, otel_env: dict[str, str]):
        self.stack = stack
        self.drover = drover
        self.receiver = receiver
        self.otel_env = otel_env
        self.workers: list[WorkerProcess] = []

    async def worker(self, worker_id: str, argv: list[str], **env: str) -> WorkerProcess:
        """Starts a worker program with the stack's OTEL settings and waits until it is IDLE."""
        worker = WorkerProcess(
            worker_id,
            argv,
            {"DROVER_NATS_URL": self.stack.url, "DROVER_WORKER_ID": worker_id, "RUST_LOG": "info", **self.otel_env, **env},
            self.stack.log_dir,
        )
        worker.spawn()
        self.workers.append(worker)
        await self.drover.wait_worker(
            worker_id,
            lambda r: r["status"] == "IDLE" and r.get("pid") in (None, worker.pid),
            "to be IDLE",
            timeout=20,
        )
        return worker

    async def rust_worker(self, worker_id: str) -> WorkerProcess:
        return await self.worker(worker_id, rust_program("drover-example-worker"))

    async def untraced_worker(self, worker_id: str) -> WorkerProcess:
        return await self.worker(worker_id, python_program(WORKERS / "untraced_worker.py"))

    async def python_worker(self, worker_id: str, capacity: int = 8) -> WorkerProcess:
        return await self.worker(
            worker_id, python_program(WORKERS / "traced_sdk_worker.py"), DROVER_CAPACITY=str(capacity)
        )

    async def cli(self, *args: str, timeout: float = 30) -> Cli:
        """Runs ``drover <args>`` against the stack, exporting like the services."""
        process = await asyncio.create_subprocess_exec(
            str(bin_dir() / "drover"),
            *args,
            env={**os.environ, "DROVER_NATS_URL": self.stack.url, **self.otel_env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), patient(timeout))
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise
        return Cli(process.returncode if process.returncode is not None else -1, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def start_traced(
    stack_factory, request: pytest.FixtureRequest, receiver: OtlpReceiver, otel_env: dict[str, str]
) -> AsyncIterator[Traced]:
    """The services (and later the workers) with ``otel_env``; worker logs and what the
    receiver holds are printed if the test failed."""
    s = await stack_factory(*SERVICES, heartbeat_interval_ms=INTERVAL_MS, lost_after_ms=LOST_AFTER_MS, env=otel_env)
    drover = await Drover.connect(s)
    traced = Traced(s, drover, receiver, otel_env)
    try:
        yield traced
    finally:
        for worker in traced.workers:
            worker.kill()
        failed = request_failed(request)
        if failed:
            for worker in traced.workers:
                worker.dump_log(80)
            print(receiver.summary())
            for trace_id in receiver.trace_ids():
                if len(receiver.spans(trace_id)) > 1:
                    print(receiver.tree(trace_id))
        await drover.close()


@pytest.fixture
async def traced(request: pytest.FixtureRequest, stack) -> AsyncIterator[Traced]:
    with OtlpReceiver() as receiver:
        async with start_traced(stack, request, receiver, receiver.env(batch_delay_ms=100)) as t:
            yield t


# ---------------------------------------------------------------------------------------
# Looking at a run's spans
# ---------------------------------------------------------------------------------------


def of_run(run_id: str, name: Optional[str] = None) -> Callable[[Span], bool]:
    """A predicate: a span about ``run_id`` (named ``name`` if given)."""
    return lambda s: s.attr("drover.run_id") == run_id and (name is None or s.name == name)


def attempts_of(rx: OtlpReceiver, run_id: str) -> list[Span]:
    return sorted(rx.find(of_run(run_id, "drover.attempt")), key=lambda s: s.attr("drover.attempt", 0))


def has_run(rx: OtlpReceiver, run_id: str, attempts: int) -> bool:
    """The run's span and ``attempts`` attempt spans have arrived."""
    return bool(rx.find(of_run(run_id, "drover.run"))) and len(attempts_of(rx, run_id)) >= attempts


def executions(rx: OtlpReceiver, attempt: Span) -> list[Span]:
    return rx.children(attempt, "drover.execute")


def logged(rx: OtlpReceiver, trace_id: str, line: str) -> bool:
    """Whether a drover.logs span of the trace holds ``line`` as an event."""
    return any(s.has_event(line) for s in rx.find(lambda s: s.name == "drover.logs", trace_id))


async def settled(rx: OtlpReceiver, what: str, ready: Callable[[OtlpReceiver], bool], timeout: float = 15) -> None:
    """Waits until ``ready`` holds, then until the exporters have gone quiet."""
    await rx.wait_until(what, ready, timeout)
    await rx.wait_quiet()


@dataclass
class RunTrace:
    """The scheduler's spans of one run, checked against the contract."""

    intake: Span
    run: Span
    attempts: list[Span]
    backoffs: list[Span]


def check_run(
    rx: OtlpReceiver,
    run_id: str,
    status: str,
    outcomes: list[str],
    workers: Optional[list[str]] = None,
    retries: int = 0,
    reassignments: int = 0,
) -> RunTrace:
    """The run's intake, enqueue, run, attempt and backoff spans, with their links and
    attributes; every departure from the contract is listed in one failure."""
    runs = rx.find(of_run(run_id, "drover.run"))
    assert len(runs) == 1, f"{len(runs)} drover.run spans for {run_id}\n{rx.summary()}"
    run = runs[0]
    problems: list[str] = []

    def expect(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    intake = rx.parent(run)
    expect(intake is not None and intake.name == "drover.intake", "drover.run is not under a drover.intake")
    if intake is not None:
        expect(intake.kind == "server", f"drover.intake is of kind {intake.kind}, not server")
        expect(intake.attr("drover.run_id") == run_id, f"drover.intake has drover.run_id {intake.attr('drover.run_id')!r}")
        expect(
            intake.attr("drover.routine_id") == run.attr("drover.routine_id"),
            f"drover.intake has drover.routine_id {intake.attr('drover.routine_id')!r}",
        )
        enqueue = rx.children(intake, "drover.enqueue")
        expect(len(enqueue) == 1, f"{len(enqueue)} drover.enqueue spans under the intake")

    for key, wanted in [
        ("drover.status", status),
        ("drover.attempts", len(outcomes)),
        ("drover.retries", retries),
        ("drover.reassignments", reassignments),
    ]:
        expect(run.attr(key) == wanted, f"drover.run has {key} {run.attr(key)!r}, not {wanted!r}")
    expect((run.status == "error") == (status == "FAILED"), f"drover.run has span status {run.status} for {status}")

    attempts = attempts_of(rx, run_id)
    numbers = [a.attr("drover.attempt") for a in attempts]
    expect(numbers == list(range(1, len(outcomes) + 1)), f"attempt spans numbered {numbers}, {len(outcomes)} expected")
    got_outcomes = [a.attr("drover.outcome") for a in attempts]
    expect(got_outcomes == outcomes, f"attempt outcomes {got_outcomes}, not {outcomes}")
    if workers is not None:
        got_workers = [a.attr("drover.worker_id") for a in attempts]
        expect(got_workers == workers, f"attempts on workers {got_workers}, not {workers}")
    for attempt in attempts:
        label = f"attempt {attempt.attr('drover.attempt')}"
        outcome = attempt.attr("drover.outcome")
        expect(attempt.parent_span_id == run.span_id, f"{label} is not under its drover.run")
        expect(
            (attempt.status == "error") == (outcome in ERROR_OUTCOMES),
            f"{label} ended {outcome} with span status {attempt.status}",
        )
        expect(attempt.attr("drover.routine_id") == run.attr("drover.routine_id"), f"{label} has no drover.routine_id")
        events = [e.name for e in attempt.events]
        expect("assigned" in events, f"{label} has no 'assigned' event ({events})")
        if outcome in ("succeeded", "failed", "worker_lost"):
            expect("started" in events, f"{label} has no 'started' event ({events})")
        if outcome != "succeeded":
            expect(bool(attempt.attr("drover.reason")), f"{label} ended {outcome} without a drover.reason")

    backoffs = sorted(rx.children(run, "drover.retry_backoff"), key=lambda s: s.start_ns)
    expect(len(backoffs) == retries, f"{len(backoffs)} drover.retry_backoff spans for {retries} retries")
    for index, (backoff, before, after) in enumerate(zip(backoffs, attempts, attempts[1:]), 1):
        # Times come from the run record (milliseconds): allow for the rounding.
        slack = 2_000_000
        expect(
            before.end_ns - slack <= backoff.start_ns <= backoff.end_ns <= after.start_ns + slack,
            f"retry_backoff {index} is not between attempts {index} and {index + 1}",
        )
    assert not problems, f"run {run_id}: " + "; ".join(problems) + "\n" + rx.tree(run.trace_id)
    assert intake is not None
    return RunTrace(intake, run, attempts, backoffs)


def roots_between(rx: OtlpReceiver, start_ns: int, end_ns: int) -> list[Span]:
    return [s for s in rx.roots() if start_ns <= s.start_ns <= end_ns]


# ---------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------


async def test_a_cli_submit_with_wait_is_one_trace(traced: Traced):
    rx = traced.receiver
    await traced.rust_worker("rust-a")
    began = time.time_ns()
    done = await traced.cli("submit", "demo.greet", "--params", '{"name": "ada"}', "--wait", "--json")
    ended = time.time_ns()
    assert done.code == 0, done
    record = done.json()
    run_id = record["runID"]
    assert record["status"] == "SUCCEEDED" and record["result"] == {"greeting": "hello, ada"}

    def complete(r: OtlpReceiver) -> bool:
        attempts = attempts_of(r, run_id)
        return has_run(r, run_id, 1) and bool(executions(r, attempts[0]))

    await settled(rx, f"the spans of run {run_id}", complete)
    trace_id = record["traceID"]
    root = rx.assert_one_tree(trace_id)
    tree = rx.tree(trace_id)
    assert (root.name, root.service) == ("drover.submit", "drover-cli"), tree
    got = check_run(rx, run_id, "SUCCEEDED", ["succeeded"], workers=["rust-a"])
    assert got.run.trace_id == trace_id
    assert got.intake.parent_span_id == root.span_id, f"the intake is not under drover.submit\n{tree}"
    [execute] = executions(rx, got.attempts[0])
    assert execute.has_event("greeting ada"), f"the routine's log line is not an event of drover.execute\n{tree}"

    # One trace: every span of the CLI and every span about the run are in it, and nothing
    # else started a trace while the CLI waited (its polls, the worker's pulses).
    assert rx.traces_with(lambda s: s.service == "drover-cli") == [trace_id], rx.summary()
    assert rx.traces_with(lambda s: s.name == "drover.submit") == [trace_id], rx.summary()
    assert rx.traces_with(lambda s: s.attr("drover.run_id") == run_id) == [trace_id], rx.summary()
    others = [s.describe() for s in roots_between(rx, began, ended) if s.trace_id != trace_id]
    assert others == [], f"root spans made while `drover submit --wait` ran: {others}"


async def test_a_run_retried_twice_on_an_untraced_worker(traced: Traced):
    rx, drover = traced.receiver, traced.drover
    await traced.untraced_worker("flaky-w")
    backoff = {"initialMs": 300, "multiplier": 1.0, "maxMs": 300}
    run_id = await drover.submit("trace.flaky", {"failures": 2}, maxRetries=2, retryBackoff=backoff)
    record = await drover.wait_run(run_id, {"SUCCEEDED"})
    assert record["attempt"] == 3 and record["retries"] == 2, record

    lines = ["attempt 1 failing", "attempt 2 failing", "attempt 3 succeeding"]

    def complete(r: OtlpReceiver) -> bool:
        return has_run(r, run_id, 3) and all(logged(r, record["traceID"], line) for line in lines)

    await settled(rx, f"the spans of run {run_id}", complete)
    root = rx.assert_one_tree(record["traceID"])
    tree = rx.tree(record["traceID"])
    got = check_run(rx, run_id, "SUCCEEDED", ["failed", "failed", "succeeded"], workers=["flaky-w"] * 3, retries=2)
    assert root.span_id == got.intake.span_id, f"the intake is not the root of a run submitted untraced\n{tree}"
    assert not rx.find(lambda s: s.name == "drover.execute", record["traceID"]), tree
    for attempt, line in zip(got.attempts, lines):
        logs = rx.children(attempt, "drover.logs")
        assert any(span.has_event(line) for span in logs), f"{line!r} is not an event under its attempt\n{tree}"


async def test_a_run_whose_worker_is_killed_completes_on_another(traced: Traced):
    rx, drover = traced.receiver, traced.drover
    doomed = await traced.untraced_worker("lost-a")
    run_id = await drover.submit("trace.hang", {"hang_on": "lost-a"})
    await drover.wait_run(run_id, {"RUNNING"})
    await traced.untraced_worker("lost-b")
    doomed.kill()
    record = await drover.wait_run(run_id, {"SUCCEEDED"}, timeout=15)
    assert record["attempt"] == 2 and record["reassignments"] == 1 and record["workerID"] == "lost-b", record

    lines = ["hanging on lost-a", "done on lost-b"]

    def complete(r: OtlpReceiver) -> bool:
        if not (has_run(r, run_id, 2) and all(logged(r, record["traceID"], line) for line in lines)):
            return False
        return any(s.name.startswith("drover.worker.") for s in r.children(attempts_of(r, run_id)[0]))

    await settled(rx, f"the spans of run {run_id}", complete)
    rx.assert_one_tree(record["traceID"])
    tree = rx.tree(record["traceID"])
    got = check_run(
        rx, run_id, "SUCCEEDED", ["worker_lost", "succeeded"], workers=["lost-a", "lost-b"], reassignments=1
    )
    decisions = {s.name for s in rx.children(got.attempts[0]) if s.name.startswith("drover.worker.")}
    assert decisions & {"drover.worker.lost", "drover.worker.unresponsive"}, f"why attempt 1 ended is not in the trace\n{tree}"
    for attempt, line in zip(got.attempts, lines):
        assert any(s.has_event(line) for s in rx.children(attempt, "drover.logs")), f"{line!r} not under its attempt\n{tree}"


async def test_a_cancelled_workflow_with_children(traced: Traced):
    rx, drover = traced.receiver, traced.drover
    await traced.python_worker("py-wf")
    submitted = await traced.cli("submit", "trace.parent", "--params", '{"children": 2}')
    assert submitted.code == 0, submitted
    parent_id = submitted.stdout.strip()

    async def children() -> list[dict[str, Any]]:
        return [r for r in await drover.runs_of("trace.block") if r.get("parentRunID") == parent_id]

    async def both_running() -> bool:
        return sorted(r["status"] for r in await children()) == ["RUNNING", "RUNNING"]

    await wait_until("both children RUNNING", both_running)
    cancelled = await traced.cli("runs", "cancel", parent_id, "--reason", "test")
    assert cancelled.code == 0, cancelled
    parent = await drover.wait_run(parent_id, {"CANCELLED"})
    child_ids = [r["runID"] for r in await children()]
    for child in child_ids:
        await drover.wait_run(child, {"CANCELLED"})

    def complete(r: OtlpReceiver) -> bool:
        return all(has_run(r, run, 1) for run in [parent_id, *child_ids])

    await settled(rx, "the spans of the workflow", complete)
    trace_id = parent["traceID"]
    root = rx.assert_one_tree(trace_id)
    tree = rx.tree(trace_id)
    assert root.name == "drover.submit", tree
    top = check_run(rx, parent_id, "CANCELLED", ["cancelled"], workers=["py-wf"])
    [execute] = executions(rx, top.attempts[0]) or [None]
    assert execute is not None, f"the parent's drover.execute is missing\n{tree}"
    for child in child_ids:
        got = check_run(rx, child, "CANCELLED", ["cancelled"], workers=["py-wf"])
        assert got.run.trace_id == trace_id, tree
        assert execute in rx.ancestors(got.intake), f"child {child} is not under the parent's drover.execute\n{tree}"
        [child_execute] = executions(rx, got.attempts[0]) or [None]
        assert child_execute is not None and child_execute.has_event("blocking"), tree


async def test_a_python_parent_with_a_rust_child_is_one_trace(traced: Traced):
    rx = traced.receiver
    await traced.python_worker("py-parent")
    await traced.rust_worker("rust-child")
    done = await traced.cli("submit", "trace.ask_rust", "--params", '{"name": "grace"}', "--wait", "--json")
    assert done.code == 0, done
    record = done.json()
    assert record["result"] == {"greeting": "hello, grace"}
    run_id, trace_id = record["runID"], record["traceID"]

    def child_run(r: OtlpReceiver) -> Optional[Span]:
        found = r.find(lambda s: s.name == "drover.run" and s.attr("drover.routine_id") == "demo.greet", trace_id)
        return found[0] if found else None

    def complete(r: OtlpReceiver) -> bool:
        child = child_run(r)
        if not (has_run(r, run_id, 1) and child is not None and has_run(r, child.attr("drover.run_id"), 1)):
            return False
        return bool(executions(r, attempts_of(r, child.attr("drover.run_id"))[0]))

    await settled(rx, "the spans of the parent and its child", complete)
    root = rx.assert_one_tree(trace_id)
    tree = rx.tree(trace_id)
    assert root.name == "drover.submit", tree
    parent = check_run(rx, run_id, "SUCCEEDED", ["succeeded"], workers=["py-parent"])
    [py_execute] = executions(rx, parent.attempts[0]) or [None]
    assert py_execute is not None and py_execute.has_event("asking the rust worker"), tree
    child_id = child_run(rx).attr("drover.run_id")
    child = check_run(rx, child_id, "SUCCEEDED", ["succeeded"], workers=["rust-child"])
    assert py_execute in rx.ancestors(child.intake), f"the child's intake is not under the Python drover.execute\n{tree}"
    [rust_execute] = executions(rx, child.attempts[0]) or [None]
    assert rust_execute is not None and rust_execute.has_event("greeting grace"), tree
    assert rx.traces_with(lambda s: s.service == "drover-cli") == [trace_id], rx.summary()
    assert rx.traces_with(lambda s: s.attr("drover.run_id") in (run_id, child_id)) == [trace_id], rx.summary()


async def test_without_an_endpoint_nothing_is_exported(request: pytest.FixtureRequest, stack, monkeypatch: pytest.MonkeyPatch):
    for name in OTEL_EXPORT_VARS:
        monkeypatch.delenv(name, raising=False)
    # Listening where an exporter with no endpoint would send by default, if that port is free.
    try:
        receiver = OtlpReceiver(port=4318).start()
    except OSError:
        receiver = OtlpReceiver().start()
    with receiver:
        async with start_traced(stack, request, receiver, {}) as t:
            await t.rust_worker("rust-quiet")
            done = await t.cli("submit", "demo.greet", "--params", '{"name": "nobody"}', "--wait", "--json")
            assert done.code == 0, done
            assert done.json()["status"] == "SUCCEEDED"
            await asyncio.sleep(patient(1.0))  # a window in which nothing may arrive
            assert receiver.requests == 0, receiver.summary()
