"""A secured nats-server for tests: mutual TLS and nkey users with the roles of docs/security.md.

Everything is made in the test's temporary directory, never committed: a CA and the
server's certificate (``trustme``), and for each identity a client certificate, its key and
an nkey seed. :meth:`SecureNats.config` is the nats.conf text (give it to
:meth:`drover_harness.NatsServer.start` with ``client_options=secure.options("services")``);
:meth:`SecureNats.env` is what a worker process gets, as the ``DROVER_NATS_*`` variables
every Drover program reads.

Roles, as in the contract of issue 13 (the auth service enforces them on the full setup):

- ``services``: publish and subscribe everything;
- worker ``<w>``: publish ``v1.*.<w>`` and ``v1.*.*.<w>``; subscribe ``v1.worker.<w>.>`` and
  ``_INBOX.<w>.>``.

Until the services take credentials, :class:`RegistryStandIn` answers registrations over a
services connection so that a worker can get to ``ready`` on such a server.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import nkeys
import trustme
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

SERVICES = "services"


def new_user_seed() -> str:
    """A fresh user nkey seed (``SU...``)."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    """The public key (``U...``) of a seed."""
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return pair.public_key.decode()
    finally:
        pair.wipe()


def worker_permissions(worker_id: str) -> dict[str, Any]:
    """What worker ``worker_id`` may publish and subscribe."""
    return {
        "publish": {"allow": [f"v1.*.{worker_id}", f"v1.*.*.{worker_id}"]},
        "subscribe": {"allow": [f"v1.worker.{worker_id}.>", f"_INBOX.{worker_id}.>"]},
    }


@dataclass
class Identity:
    """One user: its nkey seed (in a file) and its client certificate and key (PEM files)."""

    name: str
    seed_file: Path
    cert_file: Path
    key_file: Path
    permissions: dict[str, Any] | None  # None: everything

    @property
    def seed(self) -> str:
        return self.seed_file.read_text().strip()


class SecureNats:
    """The files and configuration of a mutual-TLS, nkey-authenticated nats-server."""

    def __init__(self, directory: Path, workers: Iterable[str] = ()):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self.dir / "server-cert.pem"
        self.server_key = self.dir / "server-key.pem"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.identities: dict[str, Identity] = {}
        self.add(SERVICES, None)
        for worker_id in workers:
            self.add(worker_id, worker_permissions(worker_id))

    def add(self, name: str, permissions: dict[str, Any] | None) -> Identity:
        """A new identity with its own seed and certificate (call before :meth:`config`)."""
        leaf = self.ca.issue_cert(f"{name}@drover.test", common_name=name)
        identity = Identity(
            name, self.dir / f"{name}.nk", self.dir / f"{name}-cert.pem", self.dir / f"{name}-key.pem", permissions
        )
        identity.seed_file.write_text(new_user_seed() + "\n")
        leaf.cert_chain_pems[0].write_to_path(str(identity.cert_file))
        leaf.private_key_pem.write_to_path(str(identity.key_file))
        for path in (identity.seed_file, identity.key_file):
            path.chmod(0o600)
        self.identities[name] = identity
        return identity

    def config(self) -> str:
        """nats.conf: TLS with client certificates required and verified, and the nkey users."""
        users = []
        for identity in self.identities.values():
            user: dict[str, Any] = {"nkey": public_key(identity.seed)}
            if identity.permissions is not None:
                user["permissions"] = identity.permissions
            users.append(user)
        tls = {
            "cert_file": str(self.server_cert),
            "key_file": str(self.server_key),
            "ca_file": str(self.ca_file),
            "verify": True,
            "timeout": 2,
        }
        # JSON is valid nats.conf syntax.
        return f"tls: {json.dumps(tls)}\nauthorization: {json.dumps({'users': users})}\n"

    def env(self, name: str) -> dict[str, str]:
        """The ``DROVER_NATS_*`` variables that make a Drover program connect as ``name``."""
        identity = self.identities[name]
        return {
            "DROVER_NATS_NKEY": str(identity.seed_file),
            "DROVER_NATS_TLS_CA": str(self.ca_file),
            "DROVER_NATS_TLS_CERT": str(identity.cert_file),
            "DROVER_NATS_TLS_KEY": str(identity.key_file),
        }

    def tls_context(self, name: str) -> ssl.SSLContext:
        """A client TLS context that trusts the CA and presents ``name``'s certificate."""
        identity = self.identities[name]
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
        return context

    def options(self, name: str) -> dict[str, Any]:
        """nats-py options that connect as ``name`` (for the test's own connections)."""
        return {"nkeys_seed_str": self.identities[name].seed, "tls": self.tls_context(name)}


class RegistryStandIn:
    """Answers ``v1.register.*`` (incarnation 1) and records pulses, over a services
    connection; a real JetStream stream stores ``v1.ready`` and ``v1.terminating``."""

    STREAM = "DIRECTIVES"

    def __init__(self, nc: NatsClient, heartbeat_interval_ms: int = 200):
        self.nc = nc
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.registrations: list[Msg] = []
        self.pulses: list[dict[str, Any]] = []

    async def start(self) -> "RegistryStandIn":
        await self.nc.jetstream().add_stream(name=self.STREAM, subjects=["v1.ready.*", "v1.terminating.*"])
        await self.nc.subscribe("v1.register.*", cb=self._on_register)
        await self.nc.subscribe("v1.heartbeat.give_pulse.*", cb=self._on_pulse)
        await self.nc.flush()
        return self

    async def _on_register(self, msg: Msg) -> None:
        self.registrations.append(msg)
        worker_id = json.loads(msg.data)["payload"]["workerID"]
        registered = {
            "workerID": worker_id,
            "incarnation": 1,
            "heartbeatIntervalMs": self.heartbeat_interval_ms,
            "lostAfterMs": 25 * self.heartbeat_interval_ms,
        }
        await msg.respond(json.dumps({"payloadKey": "v1.registered", "payload": registered}).encode())

    async def _on_pulse(self, msg: Msg) -> None:
        self.pulses.append({"subject": msg.subject, **json.loads(msg.data)["payload"]})

    async def stored(self, subject: str) -> int:
        """How many messages the stream holds on ``subject``."""
        info = await self.nc.jetstream().stream_info(self.STREAM, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)
