"""The console's HTTP API keeps to its own OpenAPI document: schemathesis makes requests for
every operation of ``/api/v1/openapi.json`` and checks each answer: never a server error, a
documented status code and content type, a body that fits the response's schema.

Against a real stack (nats-server, the four services, the console with a token), a real pool
(``drover pool run`` with one example worker, so that the pool operations answer too) and a
Python SDK worker with a few seeded runs. Each operation gets one request that must succeed
(on a seeded record), then generated ones, valid and invalid; half of the valid ones name a
runID, workerID, pool, group or routine that exists, so that the checks see real records
and not only refusals. Only 127.0.0.1 is ever asked.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, AsyncIterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from console_support import TOKEN, ConsoleApi, start_console, start_worker, stop_workers
from drover_harness import ServiceProcess, Stack, bin_dir, request_failed, wait_for
from drover_worker import Context, Fail, Worker

#: Generated requests per operation and generation mode: enough to reach every branch the
#: schema describes, few enough that the whole test takes well under a minute.
EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
WORKER = "api-worker"
POOL = "apipool"
GROUP = "example"

POOL_TOML = """\
pool = "{pool}"
max_restarts = 20
max_restarts_period = "60s"

[groups.{group}]
command = "{command}"
size = 1
min = 0
max = 2
stop_grace = "5s"
"""


class Seeded:
    """The stack, the console's API, and records that exist."""

    def __init__(self, stack: Stack, api: ConsoleApi):
        self.stack = stack
        self.api = api
        self.finished: list[str] = []  # ended runs: echo, echo (with a key), parent, fail
        self.pending = ""  # a run no worker can take
        self.children: list[str] = []  # the parent's
        self.worker_ids: list[str] = []

    @property
    def run_ids(self) -> list[str]:
        return [*self.finished, self.pending, *self.children]

    def known(self) -> dict[str, list[Any]]:
        """Values that name what exists, by the name of the field they go in."""
        return {
            "runID": self.run_ids,
            "workerID": self.worker_ids,
            "poolID": [POOL],
            "group": [GROUP],
            "target": [0, 1, 2],  # within the group's bounds
            "routineID": ["api.echo"],  # a routine with a worker
        }

    def successes(self) -> dict[str, dict[str, Any]]:
        """A request for each operation that must succeed: the arguments of ``operation.Case``."""
        echo, _, parent, _ = self.finished
        return {
            "GET /api/v1/overview": {},
            "GET /api/v1/runs": {"query": {"status": "SUCCEEDED", "limit": "2"}},
            "POST /api/v1/runs": {"body": {"routineID": "api.echo", "params": {"from": "schemathesis"}}},
            "GET /api/v1/runs/{runID}": {"path_parameters": {"runID": parent}},
            "GET /api/v1/runs/{runID}/children": {"path_parameters": {"runID": parent}},
            "GET /api/v1/runs/{runID}/logs": {"path_parameters": {"runID": parent}, "query": {"limit": "10"}},
            "POST /api/v1/runs/{runID}/cancel": {"path_parameters": {"runID": self.pending}, "body": {"reason": "test"}},
            "POST /api/v1/runs/{runID}/resubmit": {"path_parameters": {"runID": echo}},
            "GET /api/v1/workers": {"query": {"pool": POOL}},
            "GET /api/v1/workers/{workerID}": {"path_parameters": {"workerID": WORKER}},
            "GET /api/v1/workers/{workerID}/logs": {"path_parameters": {"workerID": WORKER}, "query": {"since": "10m"}},
            "GET /api/v1/pools": {},
            "GET /api/v1/pools/{poolID}": {"path_parameters": {"poolID": POOL}},
            "POST /api/v1/pools/{poolID}/scale": {"path_parameters": {"poolID": POOL}, "body": {"group": GROUP, "target": 1}},
            "POST /api/v1/pools/{poolID}/restart": {"path_parameters": {"poolID": POOL}, "body": {"mode": "soft"}},
        }


def worker_for(stack: Stack) -> Worker:
    worker = Worker(WORKER, nats_url=stack.url, capacity=4, request_timeout=1.0)

    @worker.routine("api.echo")
    async def echo(ctx: Context, params: Any) -> Any:
        await ctx.log("info", "echoing", attempt=ctx.attempt)
        return params

    @worker.routine("api.parent")
    async def parent(ctx: Context, params: Any) -> Any:
        child = await ctx.run_child("api.echo", {"from": ctx.run_id}, local_id="echo-0")
        await ctx.log("info", "child done")
        return {"child": child}

    @worker.routine("api.fail")
    async def fail(ctx: Context, params: Any) -> Any:
        await ctx.log("warn", "about to fail")
        raise Fail("asked to fail")

    return worker


@pytest.fixture
async def seeded(request: pytest.FixtureRequest, stack) -> AsyncIterator[Seeded]:
    s = await start_console(stack)
    api = ConsoleApi(s.console_url)
    worker = worker_for(s)
    pool_config = s.log_dir / "pool.toml"
    pool_config.write_text(POOL_TOML.format(pool=POOL, group=GROUP, command=bin_dir() / "drover-example-worker"))
    pool = ServiceProcess("drover", {"DROVER_NATS_URL": s.url, "RUST_LOG": "info"}, ["pool", "run", str(pool_config)], s.log_dir)
    try:
        pool.spawn()
        await start_worker(s, api, worker)
        seeded = Seeded(s, api)
        seeded.finished = [
            await api.submit("api.echo", {"n": 1}),
            await api.submit("api.echo", {"n": 2}, idempotencyKey="api-seed-2"),
            await api.submit("api.parent", {}),
            await api.submit("api.fail", None),
        ]
        for run_id in seeded.finished:
            await api.wait_listed(run_id)
        seeded.pending = await api.submit("api.nobody", {"waits": True})
        seeded.children = [child["runID"] for child in (await api.get(f"/runs/{seeded.finished[2]}/children"))["runs"]]
        assert len(seeded.children) == 1, seeded.children

        async def pool_listed() -> bool:
            pools = await api.get("/pools")
            return any(p["poolID"] == POOL and p["groups"][0]["processes"] for p in pools["pools"])

        await wait_for(f"pool {POOL} to answer with a process", pool_listed, timeout=20)
        seeded.worker_ids = [w["workerID"] for w in (await api.get("/workers"))["workers"]]
        yield seeded
    finally:
        await stop_workers([worker])
        pool.kill()
        if request_failed(request):
            pool.dump_log()


def fuzz(schema: Any, base_url: str, seeded: Seeded) -> tuple[list[str], dict[str, set[int]]]:
    """Checks every operation: its request that must succeed, then generated ones (blocking:
    call it on a thread). Returns the failures, each with the request that reproduces it, and
    the status codes each operation answered."""
    failures: list[str] = []
    answered: dict[str, set[int]] = {}
    successes = seeded.successes()
    known = seeded.known()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"an operation schemathesis cannot use: {result.err()}")
            continue
        operation = result.ok()
        statuses = answered.setdefault(operation.label, set())

        def call(case: Any) -> None:
            response = case.call(base_url=base_url, headers=HEADERS, timeout=15)
            statuses.add(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS, headers=HEADERS)
            except FailureGroup as failure:
                request = case.as_curl_command(headers=HEADERS, base_url=base_url)
                raise AssertionError(f"{failure}\nanswered {response.status_code}: {response.text[:1000]}\nrequest: {request}") from None

        try:
            call(operation.Case(**successes[operation.label]))
        except Exception as error:  # every operation is tried; all failures are reported
            failures.append(f"{operation.label} (its request on a seeded record):\n{error}")

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Half of the valid cases name what exists; invalid ones stay as made.
            names = st.none()
            if mode is GenerationMode.POSITIVE:
                names = st.one_of(names, st.fixed_dictionaries({name: st.sampled_from(values) for name, values in known.items()}))

            @given(case=operation.as_strategy(generation_mode=mode), names=names)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            def generated(case: Any, names: Any) -> None:
                for name, value in (names or {}).items():
                    if case.path_parameters and name in case.path_parameters:
                        case.path_parameters[name] = value
                    elif isinstance(case.body, dict) and name in case.body:
                        case.body[name] = value
                call(case)

            try:
                generated()
            except Unsatisfiable:
                # Nothing of the operation can be made invalid (no parameters, or bare strings).
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid case"
            except Exception as error:
                failures.append(f"{operation.label} ({mode.value} cases):\n{error}")
    return failures, answered


async def test_the_api_answers_as_its_openapi_document_says(seeded: Seeded):
    base_url = seeded.stack.console_url
    assert urllib.parse.urlsplit(base_url).hostname == "127.0.0.1"
    status, document = await seeded.api.json("GET", "/api/v1/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1"), document["openapi"]  # utoipa 5 writes OpenAPI 3.1
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, f"{base_url}/api/v1/openapi.json", headers=HEADERS)
    operations = {result.ok().label for result in schema.get_all_operations() if isinstance(result, Ok)}
    assert operations == set(seeded.successes()), f"operations added or gone: {operations ^ set(seeded.successes())}"

    failures, answered = await asyncio.to_thread(fuzz, schema, base_url, seeded)
    assert not failures, f"{len(failures)} operation(s) do not keep to the document:\n\n" + "\n\n".join(failures)
    # Success was checked against the document too, not only refusals.
    unsuccessful = {label: codes for label, codes in answered.items() if not any(200 <= code < 300 for code in codes)}
    assert not unsuccessful, f"operations that never succeeded: {unsuccessful}"
