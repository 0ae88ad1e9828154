"""Helpers for test_conformance.py and test_examples.py: a plain nats-py Drover client, and
worker programs run as processes whose output is kept in a log file.

Nothing here uses an SDK: runs are submitted and inspected with plain requests, as any
client would (docs/protocol.md section 8).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from nats.aio.client import Client as NatsClient

from drover_harness import REPO, GiveUp, ManagedProcess, Stack, bin_dir, wait_for

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

#: Error codes that mean a worker sent something Drover considers malformed.
MALFORMED = frozenset(
    {"invalid_json", "schema_violation", "payload_key_mismatch", "payload_too_large", "invalid_subject", "worker_id_mismatch"}
)

CONFORMANCE_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO / "examples"


def envelope(key: str, payload: Mapping[str, Any]) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


class Drover:
    """A plain nats-py client of a running stack (section 8 of the protocol)."""

    def __init__(self, stack: Stack, nc: NatsClient):
        self.stack = stack
        self.nc = nc
        self.worker_errors: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, stack: Stack) -> "Drover":
        drover = cls(stack, await stack.client())
        drover.worker_errors = await drover.collect("v1.worker.*.error")
        return drover

    async def close(self) -> None:
        await self.nc.close()

    @property
    def url(self) -> str:
        return self.stack.url

    def malformed_errors(self) -> list[dict[str, Any]]:
        """Refusals of messages a worker sent that broke the protocol."""
        return [error for error in self.worker_errors if error.get("code") in MALFORMED]

    async def request(self, subject: str, payload: Mapping[str, Any], timeout: float = 5) -> tuple[str, Any]:
        """A request on ``subject`` whose payload key is the subject: reply key and payload."""
        reply = await self.nc.request(subject, envelope(subject, payload), timeout=timeout)
        body = json.loads(reply.data)
        return body["payloadKey"], body["payload"]

    async def submit(self, routine: str, params: Any = None, **spec: Any) -> str:
        """``v1.routine.request_start``: the new run's runID."""
        key, payload = await self.request("v1.routine.request_start", {"routineID": routine, "params": params, **spec})
        assert key == "v1.routine.accepted", payload
        return payload["runID"]

    async def run(self, run_id: str) -> dict[str, Any]:
        key, payload = await self.request("v1.run.get", {"runID": run_id})
        assert key == "v1.run.record", payload
        return payload

    async def wait_run(self, run_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 15) -> dict[str, Any]:
        """Polls ``v1.run.get`` until the run is in one of ``statuses``; its record.

        A run that ends in a status that was not asked for stops the wait at once."""
        wanted = set(statuses)

        async def probe() -> dict[str, Any] | None:
            record = await self.run(run_id)
            if record["status"] in wanted:
                return record
            if record["status"] in TERMINAL:
                raise GiveUp(f"run {run_id} ended {record['status']}, not {'/'.join(sorted(wanted))}: {record}")
            return None

        return await wait_for(f"run {run_id} to be {'/'.join(sorted(wanted))}", probe, timeout)

    async def cancel(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        payload = {"runID": run_id} | ({"reason": reason} if reason else {})
        key, record = await self.request("v1.run.cancel", payload)
        assert key == "v1.run.record", record
        return record

    async def runs_of(self, routine: str) -> list[dict[str, Any]]:
        """Every run of ``routine`` (``v1.run.list``, newest first)."""
        key, page = await self.request("v1.run.list", {"routineID": routine, "limit": 1000})
        assert key == "v1.run.records", page
        return page["runs"]

    async def worker(self, worker_id: str) -> dict[str, Any] | None:
        key, payload = await self.request("v1.registry.get", {"workerID": worker_id})
        return payload if key == "v1.registry.worker" else None

    async def wait_worker(
        self, worker_id: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10
    ) -> dict[str, Any]:
        """Polls ``v1.registry.get`` until ``check(record)``; the record."""

        async def probe() -> dict[str, Any] | None:
            record = await self.worker(worker_id)
            return record if record is not None and check(record) else None

        return await wait_for(f"worker {worker_id} {what}", probe, timeout)

    async def wait_status(self, worker_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
        return await self.wait_worker(worker_id, lambda r: r["status"] == status, f"to be {status}", timeout)

    async def collect(self, subject: str) -> list[dict[str, Any]]:
        """Every payload published on ``subject`` from now on, in a list that keeps growing."""
        seen: list[dict[str, Any]] = []

        async def on_message(msg: Any) -> None:
            seen.append(json.loads(msg.data)["payload"])

        await self.nc.subscribe(subject, cb=on_message)
        await self.nc.flush()
        return seen


class WorkerProcess(ManagedProcess):
    """A worker program in its own process, its stdout and stderr in ``log_path``."""

    def __init__(self, worker_id: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path):
        super().__init__(worker_id, list(argv), env, log_dir / f"worker-{worker_id}.log")
        self.worker_id = worker_id

    async def wait_line(self, text: str, timeout: float = 15) -> None:
        """Waits until the output holds ``text``, failing at once if the process exits."""

        def seen() -> bool:
            if text in self.log_contents():
                return True
            if not self.is_running():
                raise GiveUp(f"{self.label} exited ({self.returncode}) before printing {text!r}:\n{self.log_tail()}")
            return False

        try:
            await wait_for(f"{self.label} to print {text!r}", seen, timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; output:\n{self.log_tail()}") from None

    async def wait_ready(self, timeout: float = 20) -> None:
        await self.wait_line(f"ready {self.worker_id}", timeout)

    async def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then the exit code (``None`` if it did not exit in time)."""
        self.terminate()
        return await self.wait_exit(timeout)


def python_program(path: Path, *args: str) -> list[str]:
    return [sys.executable, str(path), *args]


def rust_program(name: str, *args: str) -> list[str]:
    binary = bin_dir() / name
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} not found: run `cargo build --workspace --bins` first")
    return [str(binary), *args]

