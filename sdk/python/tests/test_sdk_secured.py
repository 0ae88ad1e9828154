"""The SDK on a secured nats-server: mutual TLS and an nkey user whose permissions are those
of worker A (secure_nats.py). The Drover services do not take credentials here: the test
plays the registry over a services connection, and JetStream (real) stores the directives.

Shown: the worker connects with its nkey and client certificate under its workerID, its
requests' replies come on ``_INBOX.A.``, what worker A may send goes through, a subscription
to another worker's inbox and a publish as another worker are refused by the server, and a
worker with an unknown seed never connects.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator

import pytest

from drover_harness import NatsServer, http_get, request_failed, wait_until
from drover_worker import Worker
from secure_nats import SERVICES, RegistryStandIn, SecureNats, new_user_seed

INTERVAL_MS = 200


def envelope(key: str, payload: dict) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


class Secured:
    """A secured server, a services connection that answers registrations, and what it saw."""

    def __init__(self, pki: SecureNats, server: NatsServer, registry: RegistryStandIn):
        self.pki = pki
        self.server = server
        self.registry = registry

    async def connection_names(self) -> list[str]:
        """The names of the server's client connections (monitoring ``/connz``)."""
        status, body = await http_get("127.0.0.1", self.monitor_port(), "/connz")
        assert status == 200, body
        return [c.get("name", "") for c in json.loads(body)["connections"]]

    def monitor_port(self) -> int:
        (ports_file,) = self.server.dir.glob("*.ports")
        url = json.loads(ports_file.read_text())["monitoring"][0]
        return int(url.rsplit(":", 1)[1])


@pytest.fixture
async def secured(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Secured]:
    pki = SecureNats(tmp_path / "pki", workers=["A", "B"])
    server = await NatsServer.start(["-m", "-1"], pki.config(), client_options=pki.options(SERVICES))
    try:
        services = await server.client()
        yield Secured(pki, server, await RegistryStandIn(services, INTERVAL_MS).start())
        await services.close()
    finally:
        if request_failed(request):
            server.process.dump_log()
        server.close()


async def start(worker: Worker) -> Worker:
    """Starts a worker: connected, registered and ready, or a clear failure."""
    try:
        await asyncio.wait_for(worker.start(), 10)
    except asyncio.TimeoutError:
        await worker.stop(grace=0)
        raise AssertionError(f"worker {worker.worker_id} did not get ready") from None
    return worker


def worker_a(errors: list[Exception], **auth) -> Worker:
    """Worker A, its nats-py errors collected in ``errors``."""
    async def on_error(error: Exception) -> None:
        errors.append(error)

    return Worker("A", capacity=1, request_timeout=1.0, nats_options={"error_cb": on_error}, **auth)


async def test_worker_connects_with_nkey_and_mutual_tls_and_stays_in_its_lane(secured: Secured):
    pki = secured.pki
    identity = pki.identities["A"]
    errors: list[Exception] = []
    worker = worker_a(
        errors,
        nkey=identity.seed_file,
        tls_ca=pki.ca_file,
        tls_cert=identity.cert_file,
        tls_key=identity.key_file,
        nats_url=secured.server.url,
    )
    await start(worker)
    try:
        # Registered (a request answered on its own inbox), pulsing, v1.ready stored.
        (registration,) = secured.registry.registrations
        assert registration.subject == "v1.register.A"
        assert registration.reply.startswith("_INBOX.A."), registration.reply
        await wait_until("a pulse of A", lambda: any(p["subject"] == "v1.heartbeat.give_pulse.A" for p in secured.registry.pulses))
        assert await secured.registry.stored("v1.ready.A") == 1
        assert "A" in await secured.connection_names()

        nc = worker._session.runtime.link.nc
        await nc.subscribe("v1.worker.B.>")
        await nc.publish("v1.routine.completed.B", envelope("v1.routine.completed", {}))
        await nc.flush()

        def violations() -> list[str]:
            return [str(e).lower() for e in errors if "permissions violation" in str(e).lower()]

        await wait_until("two permission violations", lambda: len(violations()) >= 2)
        assert any('subscription to "v1.worker.b.>"' in v for v in violations()), violations()
        assert any('publish to "v1.routine.completed.b"' in v for v in violations()), violations()
        assert worker.is_ready, "a refused subscription does not cost the worker its connection"
    finally:
        await worker.stop(grace=1)
    assert await secured.registry.stored("v1.terminating.A") == 1


async def test_credentials_from_the_environment(secured: Secured, monkeypatch: pytest.MonkeyPatch):
    for name, value in secured.pki.env("A").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DROVER_NATS_URL", secured.server.url)
    worker = await start(worker_a([]))
    try:
        assert [m.subject for m in secured.registry.registrations] == ["v1.register.A"]
        assert secured.registry.registrations[0].reply.startswith("_INBOX.A.")
    finally:
        await worker.stop(grace=0)


async def test_a_wrong_seed_never_connects(secured: Secured):
    pki = secured.pki
    identity = pki.identities["A"]
    errors: list[Exception] = []
    worker = worker_a(
        errors,
        nkey=new_user_seed(),  # well-formed, but no user of the server has it
        tls_ca=pki.ca_file,
        tls_cert=identity.cert_file,
        tls_key=identity.key_file,
        nats_url=secured.server.url,
    )
    starting = asyncio.ensure_future(worker.start())
    try:
        # It keeps trying (a worker outlives NATS outages), and each try is refused.
        await wait_until(
            "two refused connection attempts",
            lambda: sum("authorization violation" in str(e).lower() for e in errors) >= 2,
        )
        assert not starting.done(), starting
        assert not worker.is_ready
        assert secured.registry.registrations == []
        assert "A" not in await secured.connection_names()
    finally:
        await worker.stop(grace=0)
        await asyncio.gather(starting, return_exceptions=True)


async def test_without_a_client_certificate_the_server_refuses(secured: Secured):
    errors: list[Exception] = []
    identity = secured.pki.identities["A"]
    worker = worker_a(
        errors, nkey=identity.seed_file, tls_ca=secured.pki.ca_file, nats_url=secured.server.url
    )
    starting = asyncio.ensure_future(worker.start())
    try:
        await wait_until("two failed connection attempts", lambda: len(errors) >= 2)
        assert not starting.done() and not worker.is_ready
        assert secured.registry.registrations == []
    finally:
        await worker.stop(grace=0)
        await asyncio.gather(starting, return_exceptions=True)
