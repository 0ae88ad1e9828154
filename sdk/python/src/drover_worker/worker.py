"""The :class:`Worker`: its routines, its public state, and starting and stopping it.

The work itself is done by parts that share a :class:`~drover_worker.state.WorkerState`
and are wired together by a :class:`~drover_worker.session.Session` when the worker starts:
:mod:`~drover_worker.registration`, :mod:`~drover_worker.heartbeat`,
:mod:`~drover_worker.dispatch` (the inbox and the attempts) and
:mod:`~drover_worker.shutdown`. Runs talk to the worker's
:class:`~drover_worker.runtime.NatsRuntime` only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from datetime import datetime
from types import TracebackType
from typing import Any, Callable, Mapping, TypeVar

from . import connect, pool_env, protocol, shutdown, tracing
from ._version import __version__
from .connect import NatsAuth
from .context import Context
from .runs import Routine
from .runtime import log_line
from .session import Session
from .state import Phase, WorkerState

log = logging.getLogger("drover_worker")

R = TypeVar("R", bound=Routine)


class Worker:
    """A Drover worker: registers its routines, pulses, and runs what it is assigned.

    ::

        worker = Worker("resizer-1", nats_url="nats://127.0.0.1:4222", capacity=4, labels={"gpu": "false"})

        @worker.routine("images.resize")
        async def resize(ctx: Context, params: dict) -> dict:
            ...

        worker.run_forever()          # or: async with worker: ...  /  await worker.run()

    ``capacity`` is how many runs it runs at once; ``labels`` are what run conditions select
    on; ``name`` is shown to people. Under a supervisor such as ``drover pool`` the
    environment wins: ``DROVER_WORKER_ID``, when set, is the workerID whatever ``worker_id``
    says, and ``DROVER_POOL_ID`` / ``DROVER_POOL_GROUP`` become the labels ``pool`` and
    ``group`` (see :mod:`drover_worker.pool_env`). ``nats_url`` defaults to
    ``DROVER_NATS_URL`` when set, else ``nats://127.0.0.1:4222``. ``nats_options`` go to ``nats.connect``
    (the SDK sets ``max_reconnect_attempts=-1``: a worker reconnects forever) and win over
    everything the SDK sets.

    Credentials and TLS, the way NATS tools take them: ``creds`` (a creds file), ``nkey`` (a
    file holding an nkey seed, or the seed ``SU...`` itself), ``token``, ``user`` and
    ``password``, ``tls_ca`` (the CA certificate the server's must chain to; turns TLS on),
    ``tls_cert`` and ``tls_key`` (the client certificate, for mutual TLS). Each one not given
    is read from ``DROVER_NATS_*``, then ``NATS_*`` (see :mod:`drover_worker.connect`). Files
    are read here: a bad one raises :class:`~drover_worker.CredentialsError` at once. The
    connection is named after the workerID, and replies come on ``_INBOX.<workerID>.>``.
    ``request_timeout`` (s) is how long one request waits for its reply before it is sent
    again. ``child_poll_interval`` (s) is how long a child may stay silent before its record
    is read directly (see :mod:`drover_worker.children`).

    A Worker is started once and lives in one event loop; after :meth:`stop`, make a new one.
    ``async with worker:`` starts it (as :meth:`start`) and stops it gracefully on the way
    out (as :meth:`stop`; at once if the block was cancelled).
    """

    def __init__(
        self,
        worker_id: str,
        nats_url: str | list[str] | None = None,
        *,
        capacity: int = 1,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        nats_options: Mapping[str, Any] | None = None,
        request_timeout: float = 2.0,
        child_poll_interval: float = 10.0,
        creds: str | os.PathLike[str] | None = None,
        nkey: str | os.PathLike[str] | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ):
        worker_id, checked_labels = pool_env.apply(worker_id, protocol.check_string_map("labels", labels), os.environ)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self._state = WorkerState(worker_id, capacity)
        # As the Rust SDK: the code's URL, else the supervisor's DROVER_NATS_URL, else local.
        self.nats_url = nats_url or os.environ.get("DROVER_NATS_URL") or "nats://127.0.0.1:4222"
        self.labels = checked_labels
        self.name = name
        self.nats_options = dict(nats_options or {})
        given = NatsAuth.from_arguments(
            creds=creds,
            nkey=nkey,
            token=token,
            user=user,
            password=password,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
        #: The credentials and TLS settings in force: the arguments, then the environment.
        self.auth = given.or_(NatsAuth.from_env(os.environ))
        self._connect_options = {**connect.identity_options(worker_id), **self.auth.nats_options()}
        self.request_timeout = request_timeout
        self.child_poll_interval = child_poll_interval
        self._session: Session | None = None  # made by start()
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ routines

    def routine(self, routine_id: str) -> Callable[[R], R]:
        """Decorator: registers ``async def f(ctx, params)`` as the routine ``routine_id``."""

        def register(handler: R) -> R:
            self.add_routine(routine_id, handler)
            return handler

        return register

    def add_routine(self, routine_id: str, handler: Routine) -> None:
        """Registers ``handler`` (an ``async`` function ``(ctx, params) -> result``) as ``routine_id``."""
        protocol.check_routine_id(routine_id)
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"routine {routine_id}: the handler must be an async function")
        if self._state.phase != Phase.NEW:
            raise RuntimeError("routines must be added before the worker starts")
        if routine_id in self._state.routines:
            raise ValueError(f"routine {routine_id} is already registered")
        self._state.routines[routine_id] = handler

    @property
    def routines(self) -> list[str]:
        """The routineIDs this worker registers."""
        return list(self._state.routines)

    # ------------------------------------------------------------------ state

    @property
    def worker_id(self) -> str:
        """The workerID (one subject token)."""
        return self._state.worker_id

    @property
    def capacity(self) -> int:
        """How many runs this worker runs at once."""
        return self._state.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._state.capacity = value

    @property
    def incarnation(self) -> int | None:
        """The current registration's incarnation (``None`` before the first registration)."""
        return self._state.incarnation

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between pulses, from ``v1.registered``."""
        return self._state.interval

    @property
    def lost_after(self) -> float:
        """Seconds of silence after which Drover declares this worker LOST, from ``v1.registered``."""
        return self._state.lost_after

    @property
    def is_ready(self) -> bool:
        """Whether ``v1.ready`` of the current registration is stored (the worker takes work)."""
        return self._state.ready.is_set()

    @property
    def active_runs(self) -> list[tuple[str, int]]:
        """``(runID, attempt)`` of the attempts held under the current registration."""
        return self._state.active_runs()

    @property
    def status(self) -> str:
        """The status this worker reports in its pulses (docs/protocol.md section 4)."""
        return self._state.status()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the worker is registered and ready (raises ``asyncio.TimeoutError``)."""
        await asyncio.wait_for(self._state.ready.wait(), timeout)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Worker:
        """Starts the worker (:meth:`start`): connected, registered and ready on entry."""
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stops the worker gracefully (:meth:`stop` with its defaults); at once if the block was cancelled."""
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            await self.stop(grace=0, reason="cancelled")
        else:
            await self.stop()

    async def run(self, *, grace: float = 30.0) -> None:
        """Starts the worker (:meth:`start`) and returns once :meth:`stop` has finished.

        If the task running this is cancelled, the worker stops at once (no grace period).

        SIGTERM, unless the application decided what it does (it still has the default
        disposition) and this runs in the main thread: the first one stops the worker
        gracefully (as :meth:`stop` with ``grace``, reason ``SIGTERM``) and ``run`` returns,
        so ``asyncio.run(worker.run())`` exits 0 once the runs it holds are finished; a
        second one ends the grace period at once. That is how a supervisor such as
        ``drover pool`` stops a worker.
        """
        restore = shutdown.handle_sigterm(lambda signame: self._on_signal(signame, grace))
        try:
            await self.start()
            try:
                await self._state.stopped.wait()
            finally:
                if not self._state.stopped.is_set():
                    await asyncio.shield(self.stop(grace=0, reason="cancelled"))
        finally:
            restore()

    async def start(self) -> None:
        """Connects, registers, subscribes to the inbox and sends ``v1.ready``; returns when ready.

        Retries while NATS or the registry is unreachable. Raises
        :class:`~drover_worker.RegistrationError` when the registry refuses the registration,
        and :class:`~drover_worker.NotPermitted` when NATS refuses the worker its subjects
        (a credential that is not this workerID's).
        """
        state = self._state
        if state.phase != Phase.NEW:
            raise RuntimeError(f"the worker was already started (it is {state.phase.value})")
        if not state.routines:
            log.warning("drover: worker %s starts with no routines", self.worker_id)
        state.phase = Phase.STARTING
        session = self._session = Session(
            state,
            nats_url=self.nats_url,
            nats_options={**self._connect_options, **self.nats_options},
            request_timeout=self.request_timeout,
            child_poll_interval=self.child_poll_interval,
            describe=self._describe,
            new_context=self._new_context,
        )
        self._start_task = asyncio.ensure_future(session.open())
        try:
            await self._start_task
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and self._stop_task is not None:
                return  # stop() was called while starting: the worker is stopped
            if state.phase == Phase.STARTING:
                state.phase = Phase.STOPPED
                await self._close()
            raise
        finally:
            self._start_task = None
        if state.phase == Phase.STARTING:
            state.phase = Phase.RUNNING

    def _describe(self) -> dict[str, Any]:
        """The ``v1.register`` payload: this worker as it is now."""
        payload: dict[str, Any] = {
            "workerID": self.worker_id,
            "routines": self.routines,
            "labels": self.labels,
            "capacity": self.capacity,
            "sdk": {"language": "python", "version": __version__},
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if self.name is not None:
            payload["name"] = self.name
        return payload

    def _new_context(self, assignment: Mapping[str, Any], traceparent: str | None, tracestate: str | None) -> Context:
        """The Context of an assignment: the routine's ``ctx.worker`` is this worker."""
        assert self._session is not None, "assignments arrive only once started"
        runtime = self._session.runtime
        return Context(runtime, assignment, worker=self, traceparent=traceparent, tracestate=tracestate)

    async def stop(self, grace: float = 30.0, reason: str = "shutdown") -> None:
        """Leaves gracefully; returns when the worker is stopped. Safe to call more than once.

        1. sends ``v1.terminating`` (no new work comes; a late assignment is not started),
        2. keeps pulsing (``TERMINATING``) while the runs it holds finish and their
           completions are delivered, for at most ``grace`` seconds,
        3. cancels the routines still running then, *without* sending ``completed``: the
           worker goes quiet, Drover marks it OFFLINE after ``lostAfterMs`` and places those
           runs again (a reassignment, which does not use up the run's retries),
        4. stops pulsing and closes the connection.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown(grace, reason))
        await asyncio.shield(self._stop_task)

    def run_forever(self, grace: float = 30.0) -> None:
        """Runs the worker in a new event loop until SIGTERM or SIGINT, then stops it gracefully.

        The first signal starts :meth:`stop` with ``grace`` (the reason is the signal's
        name); a second one ends the grace period at once.
        """

        asyncio.run(shutdown.until_signalled(self.run, lambda signame: self._on_signal(signame, grace)))

    def _on_signal(self, signame: str, grace: float) -> None:
        """A stop signal: the first stops gracefully, the next ends the grace period."""
        if self._stop_task is None:
            log.info("drover: %s received, stopping (grace %ss)", signame, grace)
            self._stop_task = asyncio.ensure_future(self._shutdown(grace, signame))
        else:
            log.warning("drover: %s received again, ending the grace period", signame)
            self._state.force.set()

    async def _shutdown(self, grace: float, reason: str) -> None:
        state = self._state
        if state.phase in (Phase.NEW, Phase.STOPPED):
            state.phase = Phase.STOPPED
            state.stopped.set()
            return
        if state.phase == Phase.STARTING and self._start_task is not None:
            self._start_task.cancel()  # not registered yet: nothing to hand back
            state.phase = Phase.STOPPED
            await self._close()
            return
        assert self._session is not None, "made by start()"
        await self._session.drain(grace, reason)
        state.phase = Phase.STOPPED
        await self._close()

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._state.ready.clear()
        self._state.stopped.set()
        log.info("drover: worker %s stopped", self.worker_id)

    # ------------------------------------------------------------------ logs

    async def log(
        self,
        level: str,
        message: str,
        /,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Publishes a ``v1.log`` line (best effort), about ``run_id`` if given.

        Raises ``ValueError`` for an unknown level; a line that cannot be encoded (over the
        size limit) is dropped with a warning on the ``drover_worker`` logger.
        """
        if self._session is not None:
            await self._session.runtime.log(level, message, run_id=run_id, fields=fields, at=at)
            return
        # Not started: nothing to send on, but the line is checked and traced all the same.
        log_line(level, message, run_id, fields, at)
        tracing.log_event(protocol.normalize_level(level), message, fields, run_id)

    def log_nowait(
        self,
        level: str,
        message: str,
        *,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Like :meth:`log`, without waiting, from any thread (used by :class:`DroverLogHandler`)."""
        if self._session is not None:
            self._session.runtime.log_nowait(level, message, run_id=run_id, fields=fields, at=at)
