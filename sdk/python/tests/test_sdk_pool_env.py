"""A worker under a supervisor such as ``drover pool``: its workerID and the labels ``pool``
and ``group`` come from the environment, and SIGTERM stops ``Worker.run()`` gracefully."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drover_worker import ProtocolViolation, Worker, pool_env
from sdk_support import Drover

POOL_WORKER = Path(__file__).parent / "workers" / "pool_worker.py"
SDK_SOURCE = Path(__file__).resolve().parents[1] / "src"

POOL = {"DROVER_WORKER_ID": "demo-py-2", "DROVER_POOL_ID": "demo", "DROVER_POOL_GROUP": "py"}


def test_the_environment_wins_over_the_code():
    worker_id, labels = pool_env.apply("in-code", {"pool": "mine", "gpu": "false"}, POOL)
    assert worker_id == "demo-py-2"
    assert labels == {"pool": "demo", "group": "py", "gpu": "false"}


def test_without_the_variables_the_code_holds():
    code_labels = {"pool": "mine"}
    assert pool_env.apply("in-code", code_labels, {}) == ("in-code", {"pool": "mine"})
    empty = {"DROVER_WORKER_ID": "", "DROVER_POOL_ID": "", "DROVER_POOL_GROUP": ""}
    assert pool_env.apply("in-code", code_labels, empty) == ("in-code", {"pool": "mine"})
    assert code_labels == {"pool": "mine"}, "the caller's labels are not changed"
    with pytest.raises(ProtocolViolation, match="invalid workerID 'a.b'"):
        pool_env.apply("a.b", {}, {})


def test_an_invalid_worker_id_in_the_environment_names_the_variable():
    # The id in code is fine; the supervisor's is not, and it is the one that counts.
    with pytest.raises(ProtocolViolation, match=r"DROVER_WORKER_ID: invalid workerID 'demo\.py\.1'"):
        pool_env.apply("in-code", {}, {"DROVER_WORKER_ID": "demo.py.1"})


def test_the_worker_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch):
    for name, value in POOL.items():
        monkeypatch.setenv(name, value)
    worker = Worker("in-code", labels={"group": "mine"})
    assert worker.worker_id == "demo-py-2"
    assert worker.labels == {"pool": "demo", "group": "py"}
    monkeypatch.setenv("DROVER_WORKER_ID", "not one token")
    with pytest.raises(ProtocolViolation, match="DROVER_WORKER_ID"):
        Worker("in-code")


async def test_a_pooled_worker_registers_as_told_and_sigterm_stops_run_gracefully(drover: Drover, tmp_path: Path):
    events: list[dict] = []

    async def on_event(msg) -> None:
        events.append(json.loads(msg.data)["payload"])

    await drover.nc.subscribe("v1.registry.events.*", cb=on_event)
    env = {
        **os.environ,
        **POOL,
        "DROVER_NATS_URL": drover.url,
        # This tree's SDK, whichever one the interpreter has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SDK_SOURCE), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, str(POOL_WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        record = await drover.wait_worker("demo-py-2", "IDLE")
        assert record["labels"] == {"pool": "demo", "group": "py"}
        assert record["pid"] == process.pid
        assert await drover.worker_record("named-in-code") is None

        release = tmp_path / "release"
        run_id = await drover.submit("sdk.wait_file", {"path": str(release)})
        await drover.wait_run(run_id, {"RUNNING"})
        process.send_signal(signal.SIGTERM)
        record = await drover.wait_worker("demo-py-2", "TERMINATING")
        assert record["terminatingReason"] == "SIGTERM"
        assert process.poll() is None, "the worker must wait for its run"
        release.touch()
        done = await drover.wait_run(run_id)
        assert done["status"] == "SUCCEEDED", done
        assert await asyncio.to_thread(process.wait, 10) == 0
        await drover.wait_worker("demo-py-2", "OFFLINE")
        statuses = [event["status"] for event in events if event.get("workerID") == "demo-py-2"]
        assert "LOST" not in statuses, statuses
        assert {event.get("workerID") for event in events} == {"demo-py-2"}, events
        assert b"exited cleanly" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
