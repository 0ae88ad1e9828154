"""The console under test: a stack with ``drover-console``, a client of its HTTP API, and
Python SDK workers in the test's own event loop.

Used by test_console_browser.py and test_console_api.py. The console is started by the
harness (:class:`drover_harness.Stack`, ``"console"``) with the four services it reads
from and a token, so that its actions are enabled; everything here talks to it on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Awaitable, Callable, Iterable, Optional

from drover_harness import Stack, wait_for
from drover_worker import Worker

#: The console's token in these tests: what signing in and ``Authorization: Bearer`` present.
TOKEN = "console-test-token"
#: What the console needs running: it reads the buckets and asks the services.
SERVICES = ("registry", "monitor", "scheduler", "log-collector", "console")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
#: The SDK workers here share the test's process with a browser driver or schemathesis, and
#: nothing here is about losing a worker: a pause of the event loop must not make it LOST.
LOST_AFTER_MS = 5000


async def start_console(stack_factory: Callable[..., Awaitable[Stack]], token: Optional[str] = TOKEN) -> Stack:
    """NATS, the four services and the console (with ``token`` unless ``None``), all ready."""
    args = {"console": ["--token", token]} if token else None
    return await stack_factory(*SERVICES, service_args=args, lost_after_ms=LOST_AFTER_MS)


class ConsoleApi:
    """A JSON client of the console's ``/api/v1`` (and of its pages, for status codes).

    Requests run on a thread, so that the event loop, and the SDK workers in it, keep going.
    """

    def __init__(self, base_url: str, token: Optional[str] = TOKEN):
        host = urllib.parse.urlsplit(base_url).hostname
        if host != "127.0.0.1":
            raise ValueError(f"the console tests talk to 127.0.0.1 only, not {base_url}")
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _exchange(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str, str]:
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read().decode()

    async def request(
        self, method: str, path: str, body: Any = None, *, auth: bool = True, headers: Optional[dict[str, str]] = None
    ) -> tuple[int, str, str]:
        """Any request: status, content type and body text. ``auth`` sends the bearer token."""
        sent = dict(headers or {})
        if auth and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        return await asyncio.to_thread(self._exchange, method, path, body, sent)

    async def json(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> tuple[int, Any]:
        """A request to the API: status and the JSON body (which every answer of the API has)."""
        status, content_type, text = await self.request(method, path, body, auth=auth)
        assert content_type.startswith("application/json"), f"{method} {path}: {status} {content_type}: {text[:500]}"
        return status, json.loads(text)

    async def get(self, path: str) -> Any:
        """``GET /api/v1<path>``, which must answer 200."""
        status, body = await self.json("GET", f"/api/v1{path}")
        assert status == 200, f"GET /api/v1{path}: {status} {body}"
        return body

    async def submit(self, routine: str, params: Any = None, **spec: Any) -> str:
        """Submits a run through the API with the token; its runID."""
        status, body = await self.json("POST", "/api/v1/runs", {"routineID": routine, "params": params, **spec})
        assert status == 201, f"submit {routine}: {status} {body}"
        return body["runID"]

    async def run(self, run_id: str) -> dict:
        """The run's full record (the console asks the scheduler)."""
        return await self.get(f"/runs/{run_id}")

    async def wait_run(self, run_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 15) -> dict:
        """Waits until the run is in one of ``statuses``; its record."""
        wanted = set(statuses)

        async def probe() -> Optional[dict]:
            record = await self.run(run_id)
            return record if record["status"] in wanted else None

        return await wait_for(f"run {run_id} to be {'/'.join(sorted(wanted))}", probe, timeout)

    async def wait_listed(self, run_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 15) -> dict:
        """Waits until the console's own index lists the run in one of ``statuses`` (what its
        pages and listings show); its summary."""
        wanted = set(statuses)

        async def probe() -> Optional[dict]:
            page = await self.get(f"/runs?q={run_id}")
            return page["runs"][0] if page["runs"] and page["runs"][0]["status"] in wanted else None

        return await wait_for(f"the console to list run {run_id} as {'/'.join(sorted(wanted))}", probe, timeout)

    async def wait_worker(self, worker_id: str, status: str = "IDLE", timeout: float = 15) -> dict:
        """Waits until the console knows the worker with ``status``; its record."""

        async def probe() -> Optional[dict]:
            code, record = await self.json("GET", f"/api/v1/workers/{worker_id}")
            return record if code == 200 and record["status"] == status else None

        return await wait_for(f"the console to show worker {worker_id} {status}", probe, timeout)


async def start_worker(stack: Stack, api: ConsoleApi, worker: Worker) -> Worker:
    """Starts an SDK worker in this event loop and waits until the console shows it IDLE."""
    await asyncio.wait_for(worker.start(), 15)
    await api.wait_worker(worker.worker_id, "IDLE")
    return worker


async def stop_workers(workers: Iterable[Worker]) -> None:
    """Stops workers at once (teardown); a worker that cannot stop does not stop the others."""
    for worker in workers:
        try:
            await asyncio.wait_for(worker.stop(grace=0), 10)
        except Exception as error:  # teardown goes on
            print(f"could not stop worker {worker.worker_id}: {error!r}")
