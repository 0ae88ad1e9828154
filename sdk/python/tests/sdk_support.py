"""Helpers for the SDK tests: a plain-NATS Drover client, a worker factory, a cuttable TCP proxy.

The client side deliberately uses nothing from the SDK: runs are submitted and inspected
with plain nats-py requests, as any client would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Iterable

from nats.aio.client import Client as NatsClient

from drover_harness import Stack, wait_for, wait_until
from drover_worker import Worker

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
#: Codes that would mean the SDK sent something the services consider malformed.
MALFORMED = {"invalid_json", "schema_violation", "payload_key_mismatch", "payload_too_large", "invalid_subject", "worker_id_mismatch"}

log = logging.getLogger("sdk-tests")


def envelope(key: str, payload: dict) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


class Drover:
    """A running stack plus a plain nats-py client of it, and the SDK workers a test starts."""

    def __init__(self, stack: Stack, nc: NatsClient):
        self.stack = stack
        self.nc = nc
        self.workers: list[Worker] = []
        self.worker_errors: list[dict] = []  # every v1.error sent to any worker

    @property
    def url(self) -> str:
        return self.stack.url

    async def watch_errors(self) -> None:
        async def on_error(msg) -> None:
            self.worker_errors.append(json.loads(msg.data)["payload"])

        await self.nc.subscribe("v1.worker.*.error", cb=on_error)
        await self.nc.flush()

    def malformed_errors(self) -> list[dict]:
        return [e for e in self.worker_errors if e.get("code") in MALFORMED]

    async def request(self, subject: str, key: str, payload: dict, timeout: float = 5) -> tuple[str, dict]:
        reply = await self.nc.request(subject, envelope(key, payload), timeout=timeout)
        body = json.loads(reply.data)
        return body["payloadKey"], body["payload"]

    async def submit(self, routine: str, params: Any = None, **spec: Any) -> str:
        key, payload = await self.request(
            "v1.routine.request_start", "v1.routine.request_start", {"routineID": routine, "params": params, **spec}
        )
        assert key == "v1.routine.accepted", payload
        return payload["runID"]

    async def run(self, run_id: str) -> dict:
        key, payload = await self.request("v1.run.get", "v1.run.get", {"runID": run_id})
        assert key == "v1.run.record", payload
        return payload

    async def wait_run(self, run_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 15) -> dict:
        wanted = set(statuses)

        async def probe() -> dict | None:
            record = await self.run(run_id)
            return record if record["status"] in wanted else None

        return await wait_for(f"run {run_id} to be {'/'.join(sorted(wanted))}", probe, timeout)

    async def runs_of(self, routine: str, count: int) -> list[dict]:
        """The runs of ``routine``, once ``v1.run.list`` lists ``count`` of them. (A run that
        is being written can be missing from one answer of v1.run.list, so this polls.)"""

        async def probe() -> list[dict] | None:
            _, page = await self.request("v1.run.list", "v1.run.list", {"routineID": routine})
            return page["runs"] if len(page["runs"]) == count else None

        return await wait_for(f"{count} run(s) of {routine} listed", probe)

    async def cancel(self, run_id: str, reason: str | None = None) -> dict:
        payload = {"runID": run_id}
        if reason:
            payload["reason"] = reason
        key, record = await self.request("v1.run.cancel", "v1.run.cancel", payload)
        assert key == "v1.run.record", record
        return record

    async def worker_record(self, worker_id: str) -> dict | None:
        key, payload = await self.request("v1.registry.get", "v1.registry.get", {"workerID": worker_id})
        return payload if key == "v1.registry.worker" else None

    async def wait_worker(self, worker_id: str, status: str, timeout: float = 10, **fields: Any) -> dict:
        async def probe() -> dict | None:
            record = await self.worker_record(worker_id)
            if record and record["status"] == status and all(record.get(k) == v for k, v in fields.items()):
                return record
            return None

        return await wait_for(f"worker {worker_id} to be {status}", probe, timeout)

    def worker(self, worker_id: str, url: str | None = None, **options: Any) -> Worker:
        """A Worker on this stack (not started); stopped at teardown if the test did not."""
        options.setdefault("request_timeout", 1.0)
        worker = Worker(worker_id, nats_url=url or self.url, **options)
        self.workers.append(worker)
        return worker

    async def start(self, worker: Worker) -> Worker:
        """Starts a worker and waits until the registry has it ready (IDLE, or already WORKING)."""
        await asyncio.wait_for(worker.start(), 15)

        async def ready() -> bool:
            record = await self.worker_record(worker.worker_id)
            return bool(record) and record["incarnation"] == worker.incarnation and record["status"] in ("IDLE", "WORKING")

        await wait_until(f"worker {worker.worker_id} to be ready", ready)
        return worker

    async def subscribe(self, subject: str) -> list[dict]:
        """Collects the payloads of every message on ``subject`` from now on."""
        seen: list[dict] = []

        async def collect(msg) -> None:
            seen.append(json.loads(msg.data)["payload"])

        await self.nc.subscribe(subject, cb=collect)
        await self.nc.flush()
        return seen

    async def close(self) -> None:
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.stop(grace=0), 10)
            except Exception as error:  # teardown goes on
                log.warning("could not stop %s: %r", worker.worker_id, error)
        await self.nc.close()


class Gate:
    """An asyncio.Event that counts who waited on it: lets a test hold routines and release them."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0

    async def wait(self) -> None:
        self.waiting += 1
        try:
            await self.event.wait()
        finally:
            self.waiting -= 1

    def open(self) -> None:
        self.event.set()


class TcpProxy:
    """A TCP proxy in front of NATS that a test can cut (a network partition) and restore.

    Cut, it drops every connection and stops listening, so reconnection attempts are refused.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> "TcpProxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})

    async def cut(self) -> None:
        """Drops every connection and stops listening until :meth:`restore`."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Listens again on the same port."""
        await self.start()

    async def close(self) -> None:
        await self.cut()


async def until(what: str, predicate: Callable[[], Any], timeout: float = 10) -> None:
    """``wait_until`` re-exported so tests import their waits from one place."""
    await wait_until(what, predicate, timeout)
