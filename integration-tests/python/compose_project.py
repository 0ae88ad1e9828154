"""One Compose project driven from a test: up, health, crashes, network cuts, down, and what is left.

Works with docker-compose 1.29 (which has no ``up --wait``: :meth:`ComposeProject.wait_healthy`
polls each container's healthcheck itself) and with Compose v2. Every project gets a name of
its own (``COMPOSE_PROJECT_NAME``) so that tests never touch a user's containers, and
:meth:`ComposeProject.leftovers` finds anything of it that ``down -v`` did not remove.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from drover_harness import REPO, free_port, request_failed, wait_for, wait_until
from standin_images import compose_command, ensure_all

PROJECT_LABEL = "com.docker.compose.project"

#: The Drover services of ``docker-compose.yml``, the console among them.
SERVICES = ("registry", "heartbeat-monitor", "scheduler", "log-collector", "console")
#: The variables that move each port ``docker-compose.yml`` publishes.
PORTS = (
    "NATS_PORT",
    "NATS_MONITOR_PORT",
    "JAEGER_UI_PORT",
    "OTLP_GRPC_PORT",
    "OTLP_HTTP_PORT",
    "REGISTRY_ADMIN_PORT",
    "HEARTBEAT_MONITOR_ADMIN_PORT",
    "SCHEDULER_ADMIN_PORT",
    "LOG_COLLECTOR_ADMIN_PORT",
    "DROVER_CONSOLE_PORT",
    "CONSOLE_ADMIN_PORT",
)
#: A runID as the CLI prints it.
RUN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def user_stack(request: Any, files: Iterable[Path], prefix: str) -> Iterator["ComposeProject"]:
    """For a fixture: the compose ``files`` as a user runs them, with the stand-in images
    and every published port moved to a free one (``project.ports``); dumped when the test
    failed, and taken down with its volumes afterwards."""
    images = ensure_all()
    ports = {name: str(free_port()) for name in PORTS}
    project = ComposeProject(files, prefix, {**images.env(), **ports}, REPO)
    project.ports = {name: int(port) for name, port in ports.items()}
    yield project
    if request_failed(request):
        project.dump()
    project.down()


class ComposeProject:
    """``files`` (compose files, in order) as project ``<prefix>-<random>`` with ``env``."""

    def __init__(self, files: Iterable[Path], prefix: str, env: Mapping[str, str], directory: Path):
        command = compose_command()
        assert command is not None, "no Compose command"
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.directory = directory
        self._base = [*command, "--project-name", self.name]
        for file in files:
            self._base += ["-f", str(file)]
        self.env = {**os.environ, **env, "COMPOSE_PROJECT_NAME": self.name}
        # A restart policy restarts the same container, so ids are looked up once.
        self._ids: dict[str, str] = {}

    # ------------------------------------------------------------------ commands

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """``compose <args>``; raises with its output when it fails and ``check``."""
        result = subprocess.run(
            [*self._base, *args], cwd=self.directory, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            )
        return result

    def up(self, *services: str) -> subprocess.CompletedProcess:
        """``up -d --no-build``: images must be present; nothing is pulled or built."""
        return self.run("up", "-d", "--no-build", *services)

    def down(self) -> None:
        """``down -v --remove-orphans``, giving each container 10 s to stop."""
        self.run("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

    def logs(self, service: Optional[str] = None, tail: int = 60) -> str:
        args = ["logs", "--no-color", "--tail", str(tail)]
        if service:
            args.append(service)
        result = self.run(*args, check=False)
        return result.stdout + result.stderr

    # ------------------------------------------------------------------ containers

    def container(self, service: str) -> str:
        """The id of the service's (first) container."""
        if service not in self._ids:
            ids = self.run("ps", "-a", "-q", service).stdout.split()
            assert ids, f"service {service} has no container\n{self.logs()}"
            self._ids[service] = ids[0]
        return self._ids[service]

    def containers(self, service: str) -> list[str]:
        """The ids of every container of the service (replicas included)."""
        return self.run("ps", "-a", "-q", service).stdout.split()

    @staticmethod
    def inspect(container: str) -> dict[str, Any]:
        result = subprocess.run(["docker", "inspect", container], capture_output=True, text=True)
        assert result.returncode == 0, f"docker inspect {container}: {result.stderr}"
        return json.loads(result.stdout)[0]

    def state(self, service: str) -> dict[str, Any]:
        """``.State`` of the service's container, plus its ``RestartCount``."""
        info = self.inspect(self.container(service))
        return {**info["State"], "RestartCount": info["RestartCount"]}

    def health(self, service: str) -> Optional[str]:
        """``starting``, ``healthy`` or ``unhealthy``; ``None`` without a healthcheck."""
        health = self.state(service).get("Health")
        return health["Status"] if health else None

    def healths(self, services: Iterable[str]) -> dict[str, Optional[str]]:
        """:meth:`health` of several services with one ``docker inspect``."""
        services = list(services)
        ids = [self.container(s) for s in services]
        result = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
        assert result.returncode == 0, f"docker inspect: {result.stderr}"
        states = {info["Id"]: info["State"] for info in json.loads(result.stdout)}
        found = {}
        for service, short in zip(services, ids):
            state = next(v for k, v in states.items() if k.startswith(short))
            found[service] = state["Health"]["Status"] if state.get("Health") else None
        return found

    def health_log(self, service: str) -> str:
        """The last healthcheck outputs of the service, for failure messages."""
        health = self.state(service).get("Health") or {}
        return "\n".join(f"  exit {entry['ExitCode']}: {entry['Output'].strip()}" for entry in health.get("Log", []))

    async def wait_healthy(self, services: Iterable[str], timeout: float) -> None:
        """Waits until every service's healthcheck says healthy (what ``up --wait`` does in v2)."""
        services = list(services)

        def unhealthy() -> list[str]:
            return [s for s in services if self.health(s) != "healthy"]

        try:
            await wait_until(f"{', '.join(services)} healthy", lambda: not unhealthy(), timeout)
        except TimeoutError as error:
            detail = "\n".join(f"{s}: {self.health(s)}\n{self.health_log(s)}" for s in unhealthy())
            raise TimeoutError(f"{error}\n{detail}\n{self.logs()}") from None

    async def wait_exited(self, service: str, timeout: float) -> int:
        """Waits until the service's container has exited; its exit code."""
        state = await wait_for(
            f"{service} exited", lambda: (s := self.state(service))["Status"] == "exited" and s, timeout
        )
        return int(state["ExitCode"])

    def crash(self, service: str) -> int:
        """SIGKILLs the container's main process by its pid, as a crash would (``docker kill``
        counts as a manual stop that restart policies ignore). The pid killed."""
        pid = int(self.state(service)["Pid"])
        assert pid > 0, f"{service} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def disconnect(self, service: str) -> dict[str, list[str]]:
        """Cuts the service's container off every network it is on, as a network partition
        would (its process keeps running, and its published ports go away). Returns what
        :meth:`reconnect` needs: each network with the container's aliases on it."""
        container = self.container(service)
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        cut = {name: list(endpoint.get("Aliases") or []) for name, endpoint in networks.items()}
        for network in cut:
            result = subprocess.run(["docker", "network", "disconnect", network, container], capture_output=True, text=True)
            assert result.returncode == 0, f"docker network disconnect {network} {service}: {result.stderr}"
        return cut

    def reconnect(self, service: str, cut: Mapping[str, list[str]]) -> None:
        """Joins the networks :meth:`disconnect` cut the service off again, with the same
        aliases: without them its service name would no longer resolve on the network."""
        container = self.container(service)
        for network, aliases in cut.items():
            argv = ["docker", "network", "connect"]
            for alias in aliases:
                argv += ["--alias", alias]
            result = subprocess.run([*argv, network, container], capture_output=True, text=True)
            assert result.returncode == 0, f"docker network connect {network} {service}: {result.stderr}"

    def copy_out(self, service: str, source: str, target: Path) -> Path:
        """Copies ``source`` (a path in the service's container, its volumes included) to
        ``target`` on the host with ``docker cp``, which also reads an exited container."""
        container = self.container(service)
        result = subprocess.run(["docker", "cp", f"{container}:{source}", str(target)], capture_output=True, text=True)
        assert result.returncode == 0, f"docker cp {service}:{source}: {result.stderr}"
        return target

    # ------------------------------------------------------------------ cleanup

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        found = []
        label = f"label={PROJECT_LABEL}={self.name}"
        for kind, argv in (
            ("container", ["docker", "ps", "-a", "-q", "--filter", label]),
            ("network", ["docker", "network", "ls", "-q", "--filter", label]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", label]),
        ):
            ids = subprocess.run(argv, capture_output=True, text=True).stdout.split()
            found += [f"{kind} {i}" for i in ids]
        return found

    def dump(self) -> None:
        """Prints the project's recent logs (for a failing test)."""
        print(f"---- compose project {self.name} ----\n{self.logs(tail=120)}", file=sys.stderr)
