"""Fixtures that give Python integration tests real processes (see drover_harness.py).

- ``nats_server``: a fresh nats-server with JetStream, closed after the test.
- ``nats_client``: a nats-py connection to ``nats_server``.
- ``stack``: a factory, ``await stack("registry", "monitor", env={...})``, that starts NATS
  plus the named services (heartbeat 200 ms, lost-after 1000 ms unless overridden) and
  closes everything it started after the test.

When a test fails, the tail of every process log is printed in the teardown section of the
report. Processes are killed in the finalizers whatever happens, with an atexit backstop.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest

import drover_harness as harness


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Stash each phase's report on the item so that fixtures can see whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
async def nats_server(request: pytest.FixtureRequest) -> AsyncIterator[harness.NatsServer]:
    """A fresh nats-server with JetStream on a free port and a temporary store."""
    server = await harness.NatsServer.start()
    try:
        yield server
    finally:
        if harness.request_failed(request):
            server.process.dump_log()
        server.close()


@pytest.fixture
async def nats_client(nats_server: harness.NatsServer):
    """A nats-py client of ``nats_server`` that reconnects quickly after restarts."""
    client = await nats_server.client()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[harness.Stack]]]:
    """A factory: ``await stack(*services, **options)`` starts a :class:`harness.Stack`."""
    started: list[harness.Stack] = []

    async def start(*services: str, **options) -> harness.Stack:
        s = await harness.Stack.start(services, **options)
        started.append(s)
        return s

    try:
        yield start
    finally:
        failed = harness.request_failed(request)
        for s in started:
            if failed:
                s.dump_logs()
            s.close()
