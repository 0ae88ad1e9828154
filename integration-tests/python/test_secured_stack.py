"""The Python SDK and the plain-Python example on the whole secured setup (docs/security.md).

The keys, the callout configuration and a private CA come from ``drover credentials init
--tls``; nats-server demands mutual TLS and hands every connection that is not a service's to
``drover-auth``; the services connect with the services' key. Each worker gets a credential of
its own from ``drover credentials create``, and the test's client one that may submit. Both
examples then run routines end to end, and a worker whose credential is revoked is refused at
its next connection.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import AsyncIterator

import nats
import pytest

from conformance.support import EXAMPLES_DIR, Drover, WorkerProcess, python_program
from drover_harness import Stack, bin_dir, request_failed, wait_until

SDK_SOURCE = Path(__file__).resolve().parents[2] / "sdk" / "python" / "src"
SERVICES = ("registry", "monitor", "scheduler", "log-collector", "drover-auth")


class Secured:
    """A secured stack, its keys, and what a test starts on it."""

    def __init__(self, keys: Path, stack: Stack, log_dir: Path):
        self.keys = keys
        self.stack = stack
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def tls_env(self) -> dict[str, str]:
        tls = self.keys / "tls"
        return {
            "DROVER_NATS_URL": self.stack.url,
            "DROVER_NATS_TLS_CA": str(tls / "ca.pem"),
            "DROVER_NATS_TLS_CERT": str(tls / "client.pem"),
            "DROVER_NATS_TLS_KEY": str(tls / "client-key.pem"),
        }

    def tls_context(self) -> ssl.SSLContext:
        tls = self.keys / "tls"
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        context.load_cert_chain(str(tls / "client.pem"), str(tls / "client-key.pem"))
        return context

    def credentials(self, *args: str) -> subprocess.CompletedProcess:
        """``drover credentials ...`` with the services' key."""
        env = {**os.environ, **self.tls_env(), "DROVER_NATS_NKEY": str(self.keys / "services.nk")}
        return subprocess.run(
            [str(bin_dir() / "drover"), "credentials", *args], env=env, capture_output=True, text=True, timeout=30
        )

    def create(self, *args: str) -> Path:
        """A new credential; the path of its nkey seed."""
        out = self.log_dir / f"{args[1]}.nk"
        created = self.credentials("create", *args, "--out", str(out))
        assert created.returncode == 0, created.stderr
        return out

    def spawn(self, worker_id: str, program: Path, seed: Path) -> WorkerProcess:
        env = {
            **self.tls_env(),
            "DROVER_WORKER_ID": worker_id,
            "DROVER_NATS_NKEY": str(seed),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SDK_SOURCE), os.environ.get("PYTHONPATH")])),
        }
        worker = WorkerProcess(worker_id, python_program(program), env, self.log_dir)
        worker.spawn()
        self.workers.append(worker)
        return worker

    async def client(self, seed: Path) -> nats.NATS:
        return await nats.connect(
            self.stack.url, nkeys_seed=str(seed), tls=self.tls_context(), connect_timeout=3, max_reconnect_attempts=0
        )


@pytest.fixture
async def secured(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Secured]:
    keys = tmp_path / "keys"
    init = subprocess.run(
        [str(bin_dir() / "drover"), "credentials", "init", str(keys), "--tls"], capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    # The harness writes the configuration elsewhere, and nats-server resolves includes
    # relative to it: the included files' text instead.
    config = (keys / "auth.conf").read_text() + (keys / "tls.conf").read_text()
    tls = keys / "tls"
    services_env = {
        "DROVER_NATS_NKEY": str(keys / "services.nk"),
        "DROVER_NATS_TLS_CA": str(tls / "ca.pem"),
        "DROVER_NATS_TLS_CERT": str(tls / "client.pem"),
        "DROVER_NATS_TLS_KEY": str(tls / "client-key.pem"),
    }
    context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    context.load_cert_chain(str(tls / "client.pem"), str(tls / "client-key.pem"))
    stack = await Stack.start(
        SERVICES,
        env=services_env,
        service_env={"drover-auth": {"DROVER_AUTH_ISSUER_SEED": str(keys / "issuer.nk")}},
        nats_config=config,
        nats_client_options={"nkeys_seed": str(keys / "services.nk"), "tls": context},
    )
    s = Secured(keys, stack, tmp_path)
    try:
        yield s
    finally:
        for worker in s.workers:
            worker.kill()
        if request_failed(request):
            for worker in s.workers:
                worker.dump_log(80)
            for name in stack.services:
                stack.services[name].dump_log(40)
        stack.close()


async def test_the_python_sdk_and_the_plain_example_run_routines_with_credentials_over_tls(secured: Secured):
    sdk = secured.spawn("py-sdk", EXAMPLES_DIR / "python-worker" / "worker.py", secured.create("worker", "py-sdk"))
    plain = secured.spawn("py-plain", EXAMPLES_DIR / "plain-python" / "worker.py", secured.create("worker", "py-plain"))
    client = await secured.client(secured.create("client", "tester", "--role", "submit"))
    drover = Drover(secured.stack, client)
    try:
        for worker_id in ("py-sdk", "py-plain"):
            await drover.wait_worker(worker_id, lambda r: r["status"] == "IDLE", "to be IDLE", timeout=20)
        echo = await drover.submit("py.echo", {"secured": True})
        upper = await drover.submit("plain.upper", {"text": "over tls"})
        echoed = await drover.wait_run(echo, {"SUCCEEDED"})
        uppered = await drover.wait_run(upper, {"SUCCEEDED"})
        assert echoed["result"] == {"secured": True} and echoed["workerID"] == "py-sdk"
        assert uppered["result"] == {"text": "OVER TLS"} and uppered["workerID"] == "py-plain"
    finally:
        await client.close()
    for worker in (sdk, plain):
        assert worker.is_running(), worker.log_tail()


async def test_a_revoked_worker_is_refused_at_its_next_connection(secured: Secured):
    seed = secured.create("worker", "py-revoked")
    first = secured.spawn("py-revoked", EXAMPLES_DIR / "plain-python" / "worker.py", seed)
    await first.wait_line("ready py-revoked")
    await first.stop()
    revoked = secured.credentials("revoke", "py-revoked")
    assert revoked.returncode == 0, revoked.stderr
    listed = secured.credentials("list", "--json")
    assert '"revokedAt"' in listed.stdout, listed.stdout

    again = secured.spawn("py-revoked-2", EXAMPLES_DIR / "plain-python" / "worker.py", seed)
    await wait_until(
        "the revoked worker is refused",
        lambda: not again.is_running() or "uthorization" in again.log_contents(),
        timeout=20,
    )
    assert "ready py-revoked-2" not in again.log_contents(), again.log_contents()
    assert "Authorization Violation" in again.log_contents(), again.log_contents()


async def test_a_worker_with_another_workers_credential_stops_with_what_nats_refused(secured: Secured):
    seed = secured.create("worker", "py-owner")
    impostor = secured.spawn("py-impostor", EXAMPLES_DIR / "python-worker" / "worker.py", seed)
    await wait_until("the impostor stops", lambda: not impostor.is_running(), timeout=20)
    log = impostor.log_contents()
    assert impostor.returncode not in (0, None), log
    assert "NotPermitted" in log and "permissions violation" in log.lower() and "py-impostor" in log, log
    client = await secured.client(secured.keys / "services.nk")
    try:
        reply = await client.request(
            "v1.registry.get", json.dumps({"payloadKey": "v1.registry.get", "payload": {"workerID": "py-impostor"}}).encode()
        )
        assert json.loads(reply.data)["payload"]["code"] == "unknown_worker", reply.data
    finally:
        await client.close()


async def test_bad_credential_requests_change_nothing(secured: Secured):
    secured.create("worker", "py-once")
    again = secured.log_dir / "again.nk"
    duplicate = secured.credentials("create", "worker", "py-once", "--out", str(again))
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr, duplicate.stderr
    assert not again.exists(), "no secret is left behind for a credential that was not stored"
    invalid = secured.credentials("create", "worker", "not a worker id", "--out", str(again))
    assert invalid.returncode == 2 and not again.exists(), invalid.stderr
    unknown = secured.credentials("revoke", "nobody")
    assert unknown.returncode == 3 and "no credential is named" in unknown.stderr, unknown.stderr
    listed = secured.credentials("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["name"] for c in json.loads(listed.stdout)] == ["py-once"], listed.stdout
