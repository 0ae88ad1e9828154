"""Real processes for Python integration tests: nats-server and the Drover services.

The Python twin of the Rust ``drover-testkit`` crate. Nothing here is mocked: tests talk
to a real ``nats-server -js`` and to the service binaries that cargo built.

- :class:`NatsServer` starts nats-server on a port it picks itself (``-p -1``, learned
  from ``--ports_file_dir``) with a temporary JetStream store; ``restart()`` brings it back
  on the same port and store.
- :class:`ServiceProcess` runs one binary from the cargo target directory with its
  stdout and stderr appended to a log file (kept across restarts, one marker per start).
- :class:`Stack` starts NATS plus a set of services and waits for ``GET /readyz`` = 200;
  the console (``"console"``) also gets a ``--listen`` port, its base URL in
  :attr:`Stack.console_url`.
- :func:`wait_until` / :func:`wait_for` poll a condition; their timeouts scale with
  ``DROVER_TEST_PATIENCE``. :func:`quiet_window` is a window in which nothing may happen,
  scaled the same way.

Every child is killed when its owner is closed, at interpreter exit (``atexit``), and, on
Linux, when the thread that started it dies (``PR_SET_PDEATHSIG``).

Environment: ``DROVER_NATS_SERVER`` (nats-server binary), ``DROVER_BIN_DIR`` (service
binaries; default ``<repo>/target/debug``), ``DROVER_TEST_PATIENCE`` (timeout multiplier),
``DROVER_TEST_KEEP_DIRS`` (keep temporary directories).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, TypeVar, Union

import nats
from nats.aio.client import Client as NatsClient

REPO = Path(__file__).resolve().parents[2]

#: Short names accepted wherever a service is named, mapped to their binaries.
SERVICES = {
    "registry": "drover-registry",
    "monitor": "drover-heartbeat-monitor",
    "heartbeat-monitor": "drover-heartbeat-monitor",
    "scheduler": "drover-scheduler",
    "log-collector": "drover-log-collector",
    "console": "drover-console",
}

#: The web console: besides its admin address it serves people and its API on ``--listen``.
CONSOLE = "drover-console"

DEFAULT_TIMEOUT = 10.0
START_TIMEOUT = 15.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DUMP_LINES = 50

T = TypeVar("T")


class GiveUp(Exception):
    """Raised by a probe to end a :func:`wait_for` at once (every other error means "not yet")."""


# ---------------------------------------------------------------------------------------
# Waiting on conditions
# ---------------------------------------------------------------------------------------


def patience() -> float:
    """The multiplier from ``DROVER_TEST_PATIENCE`` (a positive float, default 1.0)."""
    try:
        value = float(os.environ.get("DROVER_TEST_PATIENCE", "1"))
    except ValueError:
        return 1.0
    return value if value > 0 and value != float("inf") else 1.0


def patient(seconds: float) -> float:
    """Scales a timeout in seconds by :func:`patience`."""
    return seconds * patience()


async def _call(fn: Callable[[], Any]) -> Any:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


async def wait_for(
    what: str, fn: Callable[[], Union[T, None, Awaitable[Optional[T]]]], timeout: float = DEFAULT_TIMEOUT
) -> T:
    """Polls ``fn`` (sync or async) until it returns something other than ``None``/``False``.

    The interval starts at 10 ms and grows to 100 ms. Raises ``TimeoutError`` naming
    ``what`` once ``timeout`` seconds (scaled by patience) have passed. A single call that
    does not finish before the deadline counts as a miss, and so does a call that raises,
    except with :class:`GiveUp`, which propagates at once.
    """
    limit = patient(timeout)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + limit
    interval = 0.01
    polls = 0
    last_error: Optional[BaseException] = None
    while True:
        polls += 1
        try:
            remaining = max(deadline - loop.time(), 0.001)
            value = await asyncio.wait_for(_call(fn), remaining)
            if value is not None and value is not False:
                return value
        except asyncio.TimeoutError:
            pass
        except GiveUp:
            raise
        except Exception as error:  # a failing probe is a "not yet"
            last_error = error
        now = loop.time()
        if now >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            raise TimeoutError(
                f"timed out waiting for {what}: still not true after {now - start:.2f}s "
                f"({polls} polls; timeout {timeout}s x DROVER_TEST_PATIENCE {patience()}){detail}"
            )
        await asyncio.sleep(min(interval, deadline - now))
        interval = min(interval * 1.5, 0.1)


async def wait_until(
    what: str, predicate: Callable[[], Union[bool, Awaitable[bool]]], timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Polls ``predicate`` (sync or async) until it is true; see :func:`wait_for`."""
    await wait_for(what, lambda: _truthy(predicate), timeout)


async def _truthy(predicate: Callable[[], Any]) -> Optional[bool]:
    return True if await _call(predicate) else None


async def quiet_window(seconds: float) -> None:
    """A window in which nothing may happen: time passing on purpose, after which the caller
    checks that nothing changed. Scaled by patience, like every timeout here, so that a slow
    machine gets as long a chance to do the wrong thing as it gets to do the right one."""
    await asyncio.sleep(patient(seconds))


# ---------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------


def request_failed(request: Any) -> bool:
    """Whether the test of a pytest ``request`` failed in setup or call (the conftest stashes
    each phase's report on the item), so that a fixture can print what it holds."""
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


def nats_server_binary() -> str:
    """``DROVER_NATS_SERVER``, then ``<repo>/.tools/bin/nats-server``, then ``PATH``."""
    env = os.environ.get("DROVER_NATS_SERVER")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(
            f"DROVER_NATS_SERVER={env} is not executable: run scripts/install-nats-server"
        )
    tools = REPO / ".tools" / "bin" / "nats-server"
    if os.access(tools, os.X_OK):
        return str(tools)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: run scripts/install-nats-server")


def bin_dir() -> Path:
    """Where the service binaries are: ``DROVER_BIN_DIR`` or ``<target>/debug``."""
    env = os.environ.get("DROVER_BIN_DIR")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO / "target") / "debug"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary_name(name: str) -> str:
    """Maps a short service name (``"registry"``) to its binary; other names pass through."""
    return SERVICES.get(name, name)


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

# Strong references: a process whose owner was dropped without close() must still die at exit.
_LIVE: "set[ManagedProcess]" = set()
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: nothing but a single libc call.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_DIRS: set[Path] = set()


@atexit.register
def _clean_up_at_exit() -> None:
    # The backstop for owners that were never closed (a crashed fixture, a Ctrl-C).
    for process in list(_LIVE):
        process.kill()
    for path in list(_DIRS):
        _remove_dir(path)


def _make_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _DIRS.add(path)
    return path


def _remove_dir(path: Path) -> None:
    _DIRS.discard(path)
    if _keep_dirs():
        print(f"harness: kept {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, lines: int = DUMP_LINES) -> str:
    """The last ``lines`` lines of a file, or a note saying why it cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


def _keep_dirs() -> bool:
    return bool(os.environ.get("DROVER_TEST_KEEP_DIRS"))


class ManagedProcess:
    """One child process whose stdout and stderr are appended to ``log_path``."""

    def __init__(self, label: str, argv: list[str], env: Mapping[str, str], log_path: Path):
        self.label = label
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.starts = 0
        self._popen: Optional[subprocess.Popen] = None

    def spawn(self, argv: Optional[list[str]] = None) -> None:
        """Starts a new process (the previous one must be dead), with a log marker line."""
        if argv is not None:
            self.argv = list(argv)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(
                f"==== harness: start #{self.starts} of {self.label} {' '.join(self.argv[1:])} ====\n".encode()
            )
            log.flush()
            # Only a child of the main thread may die with its parent: the death signal
            # fires when the *thread* that forked it ends.
            on_main = threading.current_thread() is threading.main_thread()
            self._popen = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if on_main and _prctl is not None else None,
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        """The pid of the current (or last) process."""
        assert self._popen is not None, "never started"
        return self._popen.pid

    @property
    def returncode(self) -> Optional[int]:
        """The exit code (negative signal number if killed), or ``None`` while running."""
        return None if self._popen is None else self._popen.poll()

    def is_running(self) -> bool:
        """Whether the current process is alive."""
        return self._popen is not None and self._popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap. Idempotent."""
        if self._popen is not None and self._popen.poll() is None:
            try:
                self._popen.kill()
            except ProcessLookupError:
                pass
            self._popen.wait()
        _LIVE.discard(self)

    def terminate(self) -> None:
        """Sends SIGTERM (use :meth:`wait_exit` to wait for the exit)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """Waits up to ``timeout`` s (scaled by patience) for the exit; its code, or ``None``."""
        try:
            # A 1-tuple, because an exit code of 0 is a value, not a miss.
            (code,) = await wait_for(
                f"{self.label} to exit",
                lambda: None if self.returncode is None else (self.returncode,),
                timeout,
            )
        except TimeoutError:
            return None
        return code

    def log_contents(self) -> str:
        """The whole log as text."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = DUMP_LINES) -> str:
        """The last ``lines`` lines of the log."""
        return tail(self.log_path, lines)

    def dump_log(self, lines: int = DUMP_LINES) -> None:
        """Prints the log tail to stderr under a header."""
        print(
            f"---- last {lines} lines of {self.label} log ({self.log_path}) ----\n"
            f"{self.log_tail(lines)}\n---- end of {self.label} log ----",
            file=sys.stderr,
        )


class NatsServer:
    """A real ``nats-server -js`` on 127.0.0.1 with a temporary store. Use ``await NatsServer.start()``."""

    def __init__(self, binary: str, extra_args: list[str], client_options: Optional[Mapping[str, Any]] = None):
        self.dir = _make_dir("drover-nats-py-")
        self.binary = binary
        self.extra_args = list(extra_args)
        #: nats-py options (credentials, TLS) of the harness's own connections: the
        #: readiness probe and :meth:`client`. Empty for a server without authentication.
        self.client_options: dict[str, Any] = dict(client_options or {})
        self.port = 0
        self.process = ManagedProcess("nats-server", [], {}, self.dir / "nats-server.log")

    @classmethod
    async def start(
        cls,
        extra_args: Iterable[str] = (),
        config: Optional[str] = None,
        client_options: Optional[Mapping[str, Any]] = None,
    ) -> "NatsServer":
        """Starts a server and waits until JetStream answers. ``config`` is nats.conf text;
        ``client_options`` are the nats-py credentials and TLS the harness connects with
        (see ``secure_nats.py`` for a secured configuration)."""
        server = cls(nats_server_binary(), list(extra_args), client_options)
        if config is not None:
            (server.dir / "nats.conf").write_text(config)
        try:
            server.process.spawn(server._argv(None))
            server.port = await server._read_ports_file()
            await server._wait_ready()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``; the same across restarts."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory; the same across restarts."""
        return self.dir / "store"

    @property
    def log_path(self) -> Path:
        """The server log (every start, one marker line each)."""
        return self.process.log_path

    @property
    def pid(self) -> int:
        """The pid of the current server process."""
        return self.process.pid

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self.process.is_running()

    async def client(self, **options: Any) -> NatsClient:
        """A nats-py connection that reconnects quickly and forever (options override)."""
        settings: dict[str, Any] = dict(
            servers=[self.url],
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
            connect_timeout=2,
        )
        settings.update(self.client_options)
        settings.update(options)
        return await nats.connect(**settings)

    def kill(self) -> None:
        """SIGKILL and reap; the store stays for :meth:`restart`."""
        self.process.kill()

    async def stop(self) -> None:
        """SIGTERM and wait for the exit (SIGKILL after a grace period)."""
        self.process.terminate()
        if await self.process.wait_exit(STOP_TIMEOUT) is None:
            self.process.kill()
            raise RuntimeError(f"nats-server did not exit within {STOP_TIMEOUT}s of SIGTERM")

    async def restart(self) -> None:
        """Stops the server if it runs, starts it on the same port and store, waits for JetStream."""
        if self.is_running():
            await self.stop()
        deadline = time.monotonic() + patient(START_TIMEOUT)
        while True:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.process.spawn(self._argv(self.port))
            try:
                await self._wait_ready()
                return
            except (TimeoutError, GiveUp):
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    since = log.read().decode("utf-8", "replace")
                self.process.kill()
                if "address already in use" not in since or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # the port is still held for a moment: retry

    def close(self) -> None:
        """Kills the server and removes its directory (unless ``DROVER_TEST_KEEP_DIRS``)."""
        self.process.kill()
        _remove_dir(self.dir)

    def _argv(self, port: Optional[int]) -> list[str]:
        argv = [self.binary]
        if (self.dir / "nats.conf").exists():
            argv += ["-c", str(self.dir / "nats.conf")]
        argv += [
            "-a", "127.0.0.1",
            "-p", str(port if port is not None else -1),
            "-js",
            "-sd", str(self.store_dir),
            "--ports_file_dir", str(self.dir),
        ]
        return argv + self.extra_args

    async def _read_ports_file(self) -> int:
        suffix = f"_{self.process.pid}.ports"

        def port() -> Optional[int]:
            if not self.process.is_running():
                raise GiveUp(
                    f"nats-server exited ({self.process.returncode}) before listening; "
                    f"log tail:\n{self.process.log_tail()}"
                )
            for entry in self.dir.iterdir():
                if entry.name.endswith(suffix):
                    try:
                        url = json.loads(entry.read_text())["nats"][0]
                    except (ValueError, KeyError, IndexError):
                        return None  # half written
                    return int(url.rsplit(":", 1)[1])
            return None

        try:
            return await wait_for("the nats-server ports file", port, START_TIMEOUT)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log tail:\n{self.process.log_tail()}") from None

    async def _wait_ready(self) -> None:
        async def ready() -> bool:
            if not self.process.is_running():
                raise GiveUp(
                    f"nats-server exited ({self.process.returncode}) before it was ready; "
                    f"log tail:\n{self.process.log_tail()}"
                )
            return await _jetstream_answers(self.url, self.client_options)

        try:
            await wait_until(f"JetStream at {self.url}", ready, START_TIMEOUT)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log tail:\n{self.process.log_tail()}") from None


async def _jetstream_answers(url: str, options: Optional[Mapping[str, Any]] = None) -> bool:
    async def quiet(*_: Any) -> None:
        return None

    # A plain TCP probe first: nats-py pauses for reconnect_time_wait after a refused
    # connection, which would make every restart look slow.
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 0.5)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        client = await nats.connect(
            servers=[url],
            allow_reconnect=False,
            connect_timeout=0.5,
            max_reconnect_attempts=0,
            reconnect_time_wait=0,
            error_cb=quiet,
            **(options or {}),
        )
    except Exception:
        return False
    try:
        await client.jetstream(timeout=1).account_info()  # $JS.API.INFO
        return True
    except Exception:
        return False
    finally:
        await client.close()


class ServiceProcess(ManagedProcess):
    """A workspace binary from :func:`bin_dir`, its output in a log kept across restarts."""

    def __init__(self, name: str, env: Mapping[str, str], args: Iterable[str], log_dir: Path):
        binary = bin_dir() / name
        if not binary.is_file():
            raise FileNotFoundError(
                f"binary {name} not found in {bin_dir()}: run `cargo build --workspace --bins` first"
            )
        super().__init__(name, [str(binary), *args], env, log_dir / f"{name}.log")
        self.name = name

    def restart(self) -> None:
        """Kills the current process if it runs and starts a new one with the same settings."""
        self.kill()
        self.spawn()


async def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """``GET path`` over a plain socket (HTTP/1.0, so the body ends at close): status and body."""

    async def exchange() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body.decode("utf-8", "replace")

    return await asyncio.wait_for(exchange(), timeout)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while b"\r\n" in body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


class Stack:
    """NATS plus a set of Drover services, each ready on its admin port. Use ``await Stack.start(...)``."""

    def __init__(self, nats_server: NatsServer, ready_timeout: float):
        self.nats = nats_server
        self.services: dict[str, ServiceProcess] = {}
        self.admin_addrs: dict[str, tuple[str, int]] = {}
        self.ready_timeout = ready_timeout
        self.log_dir = _make_dir("drover-stack-py-")
        self.console_port = 0  # set when the console is among the services

    @classmethod
    async def start(
        cls,
        services: Iterable[str] = (),
        *,
        heartbeat_interval_ms: int = 200,
        lost_after_ms: int = 1000,
        env: Optional[Mapping[str, str]] = None,
        service_env: Optional[Mapping[str, Mapping[str, str]]] = None,
        service_args: Optional[Mapping[str, Iterable[str]]] = None,
        nats_args: Iterable[str] = (),
        nats_config: Optional[str] = None,
        nats_client_options: Optional[Mapping[str, Any]] = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> "Stack":
        """Starts NATS, then each service (short or binary names), and waits until all are ready.

        Each service gets ``DROVER_NATS_URL``, ``DROVER_HEARTBEAT_INTERVAL_MS``,
        ``DROVER_LOST_AFTER_MS``, ``RUST_LOG=info`` (then ``env``, then its
        ``service_env`` entry, override them) and ``--admin-addr 127.0.0.1:<free port>``
        followed by its ``service_args`` entry. The console (``"console"``) also gets
        ``--listen 127.0.0.1:<free port>`` (see :attr:`console_url`); give it ``--token`` in
        its ``service_args`` entry to allow actions. On a secured server, ``nats_client_options``
        are the harness's own credentials (see :class:`NatsServer`), and the services'
        credentials go in ``env`` / ``service_env`` as ``DROVER_NATS_*`` variables.
        """
        server = await NatsServer.start(nats_args, nats_config, nats_client_options)
        stack = cls(server, ready_timeout)
        try:
            names = [binary_name(s) for s in services]
            for name in names:
                port = free_port()
                full_env = {
                    "DROVER_NATS_URL": server.url,
                    "DROVER_HEARTBEAT_INTERVAL_MS": str(heartbeat_interval_ms),
                    "DROVER_LOST_AFTER_MS": str(lost_after_ms),
                    "RUST_LOG": "info",
                    **(env or {}),
                    **_lookup(service_env, name),
                }
                args = ["--admin-addr", f"127.0.0.1:{port}"]
                if name == CONSOLE:
                    stack.console_port = free_port()
                    args += ["--listen", f"127.0.0.1:{stack.console_port}"]
                args += _lookup(service_args, name, ())
                process = ServiceProcess(name, full_env, args, stack.log_dir)
                process.spawn()
                stack.services[name] = process
                stack.admin_addrs[name] = ("127.0.0.1", port)
            for name in names:
                await stack.wait_service_ready(name)
        except BaseException:
            stack.close()
            raise
        return stack

    @property
    def url(self) -> str:
        """The NATS URL the services use."""
        return self.nats.url

    @property
    def console_url(self) -> str:
        """``http://127.0.0.1:<port>``, where the console serves its pages and ``/api/v1``
        (stable across restarts)."""
        if not self.console_port:
            raise LookupError("this stack has no console: start it with \"console\" among the services")
        return f"http://127.0.0.1:{self.console_port}"

    def service(self, name: str) -> ServiceProcess:
        """The process of a service (short or binary name)."""
        return self.services[binary_name(name)]

    def admin_addr(self, name: str) -> tuple[str, int]:
        """``(host, port)`` of a service's admin HTTP server (stable across restarts)."""
        return self.admin_addrs[binary_name(name)]

    async def admin_get(self, name: str, path: str) -> tuple[int, str]:
        """``GET path`` on a service's admin address: status and body."""
        return await http_get(*self.admin_addr(name), path)

    async def client(self, **options: Any) -> NatsClient:
        """A nats-py connection to the stack's server (see :meth:`NatsServer.client`)."""
        return await self.nats.client(**options)

    def kill_service(self, name: str) -> None:
        """SIGKILL a service (bring it back with :meth:`restart_service`)."""
        self.service(name).kill()

    async def terminate_service(self, name: str, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM a service and wait for its exit code (``None`` if it did not exit in time)."""
        process = self.service(name)
        process.terminate()
        return await process.wait_exit(timeout)

    async def restart_service(self, name: str) -> None:
        """Kill -9 a service if it runs, start it again with the same settings, wait until ready."""
        self.service(name).restart()
        await self.wait_service_ready(name)

    async def restart_nats(self) -> None:
        """Restart NATS on the same port and store (services reconnect by themselves)."""
        await self.nats.restart()

    async def wait_service_ready(self, name: str) -> None:
        """Waits for ``GET /readyz`` = 200, failing at once (with its log) if the service exits."""
        process = self.service(name)
        host, port = self.admin_addr(name)
        last = ["not asked yet"]

        async def ready() -> bool:
            if not process.is_running():
                raise GiveUp(
                    f"{process.name} exited ({process.returncode}) before it was ready; "
                    f"log tail:\n{process.log_tail()}"
                )
            try:
                status, body = await http_get(host, port, "/readyz")
            except (OSError, asyncio.TimeoutError, ValueError, IndexError) as error:
                last[0] = repr(error)
                return False
            last[0] = f"status {status}: {body.strip()}"
            return status == 200

        try:
            await wait_until(f"{process.name} ready at http://{host}:{port}/readyz", ready, self.ready_timeout)
        except TimeoutError as error:
            raise TimeoutError(f"{error} (last answer: {last[0]}); log tail:\n{process.log_tail()}") from None

    def dump_logs(self) -> None:
        """Prints the tail of every process log to stderr."""
        for process in self.services.values():
            process.dump_log()
        self.nats.process.dump_log()

    def close(self) -> None:
        """Kills every service, then NATS, and removes the temporary directories."""
        for process in self.services.values():
            process.kill()
        self.nats.close()
        _remove_dir(self.log_dir)


def _lookup(table: Optional[Mapping[str, Any]], name: str, default: Any = None) -> Any:
    """An entry of a per-service table keyed by binary name or short name."""
    if table:
        for key, value in table.items():
            if binary_name(key) == name:
                return value
    return {} if default is None else default
