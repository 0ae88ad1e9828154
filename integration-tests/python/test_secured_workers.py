"""The Python example workers on a secured nats-server (mutual TLS, nkey users with worker
permissions; see secure_nats.py), given their credentials the way every Drover program
takes them: the DROVER_NATS_* variables, or the NATS tools' NATS_* ones.

Each example connects under its workerID, registers with its replies on ``_INBOX.<w>.``,
gets to ``v1.ready`` (stored by JetStream) and, at SIGTERM, stores ``v1.terminating`` and
exits 0: everything it sends is within the worker's permissions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from conformance.support import EXAMPLES_DIR, WorkerProcess, python_program
from drover_harness import NatsServer, request_failed, wait_until
from secure_nats import SERVICES, RegistryStandIn, SecureNats

SDK_SOURCE = Path(__file__).resolve().parents[2] / "sdk" / "python" / "src"
PLAIN = EXAMPLES_DIR / "plain-python" / "worker.py"
SDK_EXAMPLE = EXAMPLES_DIR / "python-worker" / "worker.py"


class Secured:
    def __init__(self, pki: SecureNats, server: NatsServer, registry: RegistryStandIn, log_dir: Path):
        self.pki = pki
        self.server = server
        self.registry = registry
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def spawn(self, worker_id: str, program: Path, env: dict[str, str]) -> WorkerProcess:
        env = {
            "DROVER_WORKER_ID": worker_id,
            "DROVER_NATS_URL": self.server.url,
            # This tree's SDK, whichever one the interpreter has installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SDK_SOURCE), os.environ.get("PYTHONPATH")])),
            **env,
        }
        worker = WorkerProcess(worker_id, python_program(program), env, self.log_dir)
        worker.spawn()
        self.workers.append(worker)
        return worker


@pytest.fixture
async def secured(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Secured]:
    pki = SecureNats(tmp_path / "pki", workers=["py-a"])
    server = await NatsServer.start(config=pki.config(), client_options=pki.options(SERVICES))
    s: Secured | None = None
    try:
        services = await server.client()
        s = Secured(pki, server, await RegistryStandIn(services).start(), tmp_path)
        yield s
        await services.close()
    finally:
        if s is not None:
            for worker in s.workers:
                worker.kill()
                if request_failed(request):
                    worker.dump_log(80)
        if request_failed(request):
            server.process.dump_log()
        server.close()


def nats_tools_env(pki: SecureNats, worker_id: str) -> dict[str, str]:
    """The same credentials in the NATS tools' variables, the seed itself rather than its file."""
    identity = pki.identities[worker_id]
    return {
        "NATS_NKEY": identity.seed,
        "NATS_CA": str(pki.ca_file),
        "NATS_CERT": str(identity.cert_file),
        "NATS_KEY": str(identity.key_file),
    }


@pytest.mark.parametrize("program", [PLAIN, SDK_EXAMPLE], ids=["plain-python", "python-sdk"])
@pytest.mark.parametrize("variables", ["drover", "nats"])
async def test_example_worker_runs_with_credentials_over_mutual_tls(secured: Secured, program: Path, variables: str):
    pki = secured.pki
    env = pki.env("py-a") if variables == "drover" else nats_tools_env(pki, "py-a")
    worker = secured.spawn("py-a", program, env)
    registry = secured.registry

    await wait_until("py-a to register", lambda: registry.registrations or not worker.is_running(), timeout=20)
    assert worker.is_running(), worker.log_tail()
    (registration,) = registry.registrations
    assert registration.subject == "v1.register.py-a"
    assert registration.reply.startswith("_INBOX.py-a."), registration.reply
    await wait_until("v1.ready of py-a stored", lambda: _stored(registry, "v1.ready.py-a"))
    await wait_until("a pulse of py-a", lambda: any(p["subject"] == "v1.heartbeat.give_pulse.py-a" for p in registry.pulses))

    assert await worker.stop() == 0, worker.log_tail()
    assert await registry.stored("v1.terminating.py-a") == 1
    assert "violation" not in worker.log_contents().lower(), worker.log_tail()


async def test_without_credentials_the_plain_example_does_not_get_in(secured: Secured):
    worker = secured.spawn("py-a", PLAIN, {"DROVER_NATS_TLS_CA": str(secured.pki.ca_file)})
    log = secured.server.log_path
    await wait_until(
        "the server to refuse the worker",
        lambda: "authentication error" in log.read_text().lower() or "tls handshake error" in log.read_text().lower(),
    )
    assert secured.registry.registrations == []


async def _stored(registry: RegistryStandIn, subject: str) -> bool:
    return await registry.stored(subject) == 1
