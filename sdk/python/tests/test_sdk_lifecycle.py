"""Logs, graceful shutdown, NATS outages and registrations that end."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from drover_worker import Context, DroverLogHandler
from sdk_support import Drover, Gate, TcpProxy, until

WORKER_SCRIPT = Path(__file__).parent / "workers" / "sdk_worker.py"


async def test_logs_are_published_with_the_run(drover: Drover):
    worker = drover.worker("py-sdk-logs")
    lines = await drover.subscribe("v1.log.py-sdk-logs")
    logger = logging.getLogger("sdk-tests.routine")
    logger.setLevel(logging.DEBUG)
    handler = DroverLogHandler()
    logger.addHandler(handler)

    @worker.routine("sdk.logs")
    async def logs(ctx: Context, params: dict) -> None:
        await ctx.log("info", "resizing", width=params["width"], path=Path("/tmp/x"))
        logger.warning("almost out of %s", "memory", extra={"free_mb": 12})
        await asyncio.gather(asyncio.to_thread(logger.debug, "from a thread"))
        try:
            raise KeyError("oops")
        except KeyError:
            logger.exception("it broke")

    try:
        await drover.start(worker)
        logger.info("outside any run: not shipped")
        run_id = await drover.submit("sdk.logs", {"width": 640})
        assert (await drover.wait_run(run_id))["status"] == "SUCCEEDED"
        await until("four log lines", lambda: len(lines) >= 4)
    finally:
        logger.removeHandler(handler)
    by_message = {line["message"]: line for line in lines}
    assert set(by_message) == {"resizing", "almost out of memory", "from a thread", "it broke"}
    assert all(line["runID"] == run_id and line["timestamp"].endswith("Z") for line in lines)
    assert by_message["resizing"]["level"] == "info"
    assert by_message["resizing"]["fields"] == {"width": 640, "path": "/tmp/x"}
    assert by_message["almost out of memory"]["level"] == "warn"
    assert by_message["almost out of memory"]["fields"] == {"logger": "sdk-tests.routine", "free_mb": 12}
    assert by_message["from a thread"]["level"] == "debug"
    assert by_message["it broke"]["level"] == "error"
    assert "KeyError: 'oops'" in by_message["it broke"]["fields"]["exception"]


async def test_async_with_starts_the_worker_and_stops_it_gracefully(drover: Drover):
    worker = drover.worker("py-sdk-with")
    gate, leave = Gate(), asyncio.Event()
    entered: list[object] = []

    @worker.routine("sdk.with")
    async def held(ctx: Context, params: dict) -> dict:
        await gate.wait()
        return params

    async def application() -> None:
        async with worker as started:
            entered.append(started)
            await leave.wait()

    task = asyncio.ensure_future(application())
    await until("the block is entered", lambda: entered == [worker])
    assert worker.is_ready and worker.incarnation == 1  # entering is start(): registered and ready
    await drover.wait_worker("py-sdk-with", "IDLE")
    run_id = await drover.submit("sdk.with", {"x": 1})
    await until("the routine runs", lambda: gate.waiting == 1)
    leave.set()
    # Leaving the block is stop(): TERMINATING while the held run finishes.
    await drover.wait_worker("py-sdk-with", "TERMINATING")
    assert not task.done()
    gate.open()
    await asyncio.wait_for(task, 10)
    assert worker.status == "TERMINATING" and not worker.is_ready
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED" and done["result"] == {"x": 1}, done
    await drover.wait_worker("py-sdk-with", "OFFLINE")


async def test_a_cancelled_async_with_block_stops_the_worker_at_once(drover: Drover):
    worker = drover.worker("py-sdk-with-cancel")
    gate = Gate()
    cancelled: list[str | None] = []

    @worker.routine("sdk.with.hold")
    async def hold(ctx: Context, params: None) -> None:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(ctx.cancel_reason)
            raise

    async def application() -> None:
        async with worker:
            await asyncio.Event().wait()

    task = asyncio.ensure_future(application())
    await until("the worker is ready", lambda: worker.is_ready)
    await drover.submit("sdk.with.hold")
    await until("the routine runs", lambda: gate.waiting == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert cancelled == ["worker stopping: grace period over"]  # no grace period
    await drover.wait_worker("py-sdk-with-cancel", "OFFLINE")


async def test_sigterm_lets_the_run_finish_then_goes_offline(drover: Drover, tmp_path: Path):
    events: list[str] = []

    async def on_event(msg) -> None:
        events.append(json.loads(msg.data)["payload"]["status"])

    await drover.nc.subscribe("v1.registry.events.py-sdk-term", cb=on_event)
    process = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), drover.url, "py-sdk-term", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await drover.wait_worker("py-sdk-term", "IDLE")
        release = tmp_path / "release"
        run_id = await drover.submit("sdk.wait_file", {"path": str(release)})
        await drover.wait_run(run_id, {"RUNNING"})
        process.send_signal(signal.SIGTERM)
        record = await drover.wait_worker("py-sdk-term", "TERMINATING")
        assert record["terminatingReason"] == "SIGTERM"
        assert process.poll() is None, "the worker must wait for its run"
        release.touch()
        done = await drover.wait_run(run_id)
        assert done["status"] == "SUCCEEDED" and done["result"] == {"waited": str(release)}, done
        assert await asyncio.to_thread(process.wait, 10) == 0
        await drover.wait_worker("py-sdk-term", "OFFLINE")
        assert "TERMINATING" in events and events[-1] == "OFFLINE" and "LOST" not in events, events
        assert b"exited cleanly" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


async def test_run_outliving_the_grace_period_is_placed_again(drover: Drover):
    leaving = drover.worker("py-sdk-leaving")
    completed = await drover.subscribe("v1.routine.completed.py-sdk-leaving")
    gate = Gate()
    cancelled: list[str | None] = []

    @leaving.routine("sdk.long")
    async def long_a(ctx: Context, params: None) -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(ctx.cancel_reason)
            raise
        return "never"

    await drover.start(leaving)
    run_id = await drover.submit("sdk.long")
    await drover.wait_run(run_id, {"RUNNING"})
    await until("the routine runs", lambda: gate.waiting == 1)

    await leaving.stop(grace=0.3)
    assert cancelled == ["worker stopping: grace period over"]
    assert completed == []  # no completion: the run is placed again, no retry spent

    taking_over = drover.worker("py-sdk-taking-over")

    @taking_over.routine("sdk.long")
    async def long_b(ctx: Context, params: None) -> str:
        return f"finished attempt {ctx.attempt}"

    await drover.start(taking_over)
    await drover.wait_worker("py-sdk-leaving", "OFFLINE")
    done = await drover.wait_run(run_id)
    assert done["status"] == "SUCCEEDED" and done["workerID"] == "py-sdk-taking-over", done
    assert done["result"] == "finished attempt 2"
    assert done["retries"] == 0 and done["reassignments"] == 1


async def test_assignment_arriving_while_terminating_is_not_started(drover: Drover):
    worker = drover.worker("py-sdk-late", capacity=2)
    starting = await drover.subscribe("v1.routine.starting.py-sdk-late")
    gate = Gate()
    probes = await drover.subscribe("v1.heartbeat.give_pulse.py-sdk-late")

    @worker.routine("sdk.hold")
    async def hold(ctx: Context, params: None) -> None:
        await gate.wait()

    await drover.start(worker)
    run_id = await drover.submit("sdk.hold")
    await drover.wait_run(run_id, {"RUNNING"})
    stopping = asyncio.ensure_future(worker.stop(grace=10))
    await drover.wait_worker("py-sdk-late", "TERMINATING")
    late = {"runID": "late-run", "attempt": 1, "routineID": "sdk.hold"}
    await drover.nc.publish(
        "v1.worker.py-sdk-late.routine.request_start",
        json.dumps({"payloadKey": "v1.routine.request_start", "payload": late}).encode(),
    )
    # The inbox is handled in order: once a later probe is answered, the assignment was seen.
    await drover.nc.publish(
        "v1.worker.py-sdk-late.heartbeat.check_pulse",
        json.dumps({"payloadKey": "v1.heartbeat.check_pulse", "payload": {"id": "after-late"}}).encode(),
    )
    await until("the probe is answered", lambda: any(p.get("id") == "after-late" for p in probes))
    assert worker.active_runs == [(run_id, 1)]
    assert all(p["status"] == "TERMINATING" for p in probes if p.get("id") == "after-late")
    gate.open()
    await stopping
    assert (await drover.wait_run(run_id))["status"] == "SUCCEEDED"
    assert [s["runID"] for s in starting] == [run_id]


async def test_completion_survives_a_nats_restart(drover_with):
    # A long lostAfterMs: the worker must not be declared lost while NATS is away.
    drover = await drover_with(lost_after_ms=30000)
    worker = drover.worker("py-sdk-outage")
    gate = Gate()

    @worker.routine("sdk.gated")
    async def gated(ctx: Context, params: None) -> str:
        await gate.wait()
        return f"done by incarnation {ctx.worker.incarnation}"

    await drover.start(worker)
    run_id = await drover.submit("sdk.gated")
    await drover.wait_run(run_id, {"RUNNING"})
    await until("the routine runs", lambda: gate.waiting == 1)

    await drover.stack.nats.stop()
    await until("the worker sees the outage", lambda: not worker._session.runtime.link.connected.is_set())
    gate.open()  # the routine ends while NATS is down: its completion must wait and retry
    await until("the routine returned", lambda: gate.waiting == 0)
    await drover.stack.restart_nats()
    # The attempt is let go only once its completion has a PubAck: it is stored.
    await until("the completion is stored", lambda: worker.active_runs == [])

    # (The scheduler takes its time to resume reading directives after a NATS restart.)
    done = await drover.wait_run(run_id, timeout=20)
    assert done["status"] == "SUCCEEDED", done
    assert done["result"] == "done by incarnation 1" and done["attempt"] == 1
    assert worker.incarnation == 1
    await drover.wait_worker("py-sdk-outage", "IDLE")


async def test_worker_cut_off_until_lost_registers_again(drover: Drover):
    proxy = await TcpProxy(drover.stack.nats.port).start()
    worker = drover.worker("py-sdk-cut", url=proxy.url, capacity=1)
    gate = Gate()
    cancelled: list[tuple[int, str | None]] = []

    @worker.routine("sdk.gated")
    async def gated(ctx: Context, params: None) -> int:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append((ctx.attempt, ctx.cancel_reason))
            raise
        return ctx.attempt

    try:
        await drover.start(worker)
        run_id = await drover.submit("sdk.gated")
        await drover.wait_run(run_id, {"RUNNING"})
        await proxy.cut()  # a partition: the services still see NATS, the worker does not
        await drover.wait_worker("py-sdk-cut", "LOST")
        await proxy.restore()
        # Back: its pulses are refused (not_registered), it registers again, and the run,
        # taken back when it was lost, comes to it again as attempt 2, which supersedes the
        # attempt 1 it was still running.
        await drover.wait_worker("py-sdk-cut", "WORKING", incarnation=2)
        await until("attempt 1 is superseded", lambda: cancelled == [(1, "superseded by attempt 2")])
        assert worker.active_runs == [(run_id, 2)] and worker.incarnation == 2
        gate.open()
        done = await drover.wait_run(run_id)
        assert done["status"] == "SUCCEEDED" and done["result"] == 2 and done["attempt"] == 2, done
        await drover.wait_worker("py-sdk-cut", "IDLE")
    finally:
        await worker.stop(grace=0)  # while it can still say goodbye
        await proxy.close()


async def test_run_finished_after_being_placed_elsewhere_is_refused_as_stale(drover: Drover):
    proxy = await TcpProxy(drover.stack.nats.port).start()
    cut_off = drover.worker("py-sdk-orphan", url=proxy.url)
    gate = Gate()
    finished: list[str] = []

    async def gated(ctx: Context, params: None) -> str:
        await gate.wait()
        finished.append(ctx.worker.worker_id)
        return ctx.worker.worker_id

    cut_off.add_routine("sdk.gated", gated)
    try:
        await drover.start(cut_off)
        run_id = await drover.submit("sdk.gated")
        await drover.wait_run(run_id, {"RUNNING"})
        await proxy.cut()
        await drover.wait_worker("py-sdk-orphan", "LOST")
        other = drover.worker("py-sdk-other")
        other.add_routine("sdk.gated", gated)
        await drover.start(other)
        await drover.wait_run(run_id, {"RUNNING"})  # attempt 2, on the other worker
        await proxy.restore()
        await drover.wait_worker("py-sdk-orphan", "IDLE", incarnation=2)
        # The cut-off worker kept running attempt 1: it finishes, and its completion is refused.
        gate.open()
        done = await drover.wait_run(run_id)
        assert done["status"] == "SUCCEEDED" and done["result"] == "py-sdk-other" and done["attempt"] == 2, done
        await until("both copies finished", lambda: sorted(finished) == ["py-sdk-orphan", "py-sdk-other"])
        await until(
            "the stale completion is refused",
            lambda: any(
                e["code"] == "stale_attempt" and e["details"]["runID"] == run_id and e["details"]["attempt"] == 1
                for e in drover.worker_errors
            ),
        )
        assert (await drover.run(run_id))["status"] == "SUCCEEDED"
    finally:
        await cut_off.stop(grace=0)
        await proxy.close()
