"""The :class:`Worker`: registration, heartbeats, the inbox, assignments and shutdown."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import socket
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from nats.aio.msg import Msg

from . import children, protocol, tracing
from ._version import __version__
from .context import Context
from .errors import DroverError, RegistrationError, RequestRefused
from .link import Link, LinkClosed
from .logs import normalize_level
from .runs import Attempt, Routine, execute, failure

log = logging.getLogger("drover_worker")

R = TypeVar("R", bound=Routine)

# Lifecycle phases of a Worker object.
_NEW, _STARTING, _RUNNING, _TERMINATING, _STOPPED = "new", "starting", "running", "terminating", "stopped"

#: Seconds v1.terminating may take to be stored, whatever the grace period.
_TERMINATING_PATIENCE = 2.0


class Worker:
    """A Drover worker: registers its routines, pulses, and runs what it is assigned.

    ::

        worker = Worker("resizer-1", nats_url="nats://127.0.0.1:4222", capacity=4, labels={"gpu": "false"})

        @worker.routine("images.resize")
        async def resize(ctx: Context, params: dict) -> dict:
            ...

        worker.run_forever()          # or: await worker.run() ... await worker.stop(grace=30)

    ``capacity`` is how many runs it runs at once; ``labels`` are what run conditions select
    on; ``name`` is shown to people. ``nats_options`` go to ``nats.connect`` (the SDK sets
    ``max_reconnect_attempts=-1``: a worker reconnects forever). ``request_timeout`` (s) is
    how long one request waits for its reply before it is sent again.
    ``child_poll_interval`` (s) is how long a child may stay silent before its record is
    read directly (see :mod:`drover_worker.children`).

    A Worker is started once and lives in one event loop; after :meth:`stop`, make a new one.
    """

    def __init__(
        self,
        worker_id: str,
        nats_url: str | list[str] = "nats://127.0.0.1:4222",
        *,
        capacity: int = 1,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        nats_options: Mapping[str, Any] | None = None,
        request_timeout: float = 2.0,
        child_poll_interval: float = 10.0,
    ):
        self.worker_id = protocol.check_worker_id(worker_id)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.nats_url = nats_url
        self.capacity = capacity
        self.labels = protocol.check_string_map("labels", labels)
        self.name = name
        self.nats_options = dict(nats_options or {})
        self.request_timeout = request_timeout
        self.child_poll_interval = child_poll_interval

        self._routines: dict[str, Routine] = {}
        self._phase = _NEW
        self._link: Link = None  # type: ignore[assignment]  # set by start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._incarnation: int | None = None
        self._interval = 5.0
        self._lost_after = 15.0
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()
        self._attempts: dict[tuple[str, int], Attempt] = {}
        self._dropped: set[asyncio.Task[None]] = set()  # tasks of dropped attempts, winding down
        self._background: set[asyncio.Task[Any]] = set()
        self._children = children.ChildWaiters()
        self._pulse_task: asyncio.Task[None] | None = None
        self._register_lock = asyncio.Lock()
        self._reregistering: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._subscription: Any = None

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
        if self._phase != _NEW:
            raise RuntimeError("routines must be added before the worker starts")
        if routine_id in self._routines:
            raise ValueError(f"routine {routine_id} is already registered")
        self._routines[routine_id] = handler

    @property
    def routines(self) -> list[str]:
        """The routineIDs this worker registers."""
        return list(self._routines)

    # ------------------------------------------------------------------ state

    @property
    def incarnation(self) -> int | None:
        """The current registration's incarnation (``None`` before the first registration)."""
        return self._incarnation

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between pulses, from ``v1.registered``."""
        return self._interval

    @property
    def lost_after(self) -> float:
        """Seconds of silence after which Drover declares this worker LOST, from ``v1.registered``."""
        return self._lost_after

    @property
    def is_ready(self) -> bool:
        """Whether ``v1.ready`` of the current registration is stored (the worker takes work)."""
        return self._ready.is_set()

    @property
    def active_runs(self) -> list[tuple[str, int]]:
        """``(runID, attempt)`` of the attempts held under the current registration."""
        return [a.key for a in self._current_attempts()]

    @property
    def status(self) -> str:
        """The status this worker reports in its pulses (docs/protocol.md section 4)."""
        if self._phase in (_TERMINATING, _STOPPED):
            return protocol.TERMINATING_STATUS
        if not self._ready.is_set():
            return protocol.INITIALIZING
        held = self._current_attempts()
        if not held:
            return protocol.IDLE
        if all(a.ctx.waiting_on_children and not a.completing for a in held):
            return protocol.HANGING
        return protocol.WORKING

    def _current_attempts(self) -> list[Attempt]:
        return [a for a in self._attempts.values() if a.incarnation == self._incarnation and not a.dropped]

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the worker is registered and ready (raises ``asyncio.TimeoutError``)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Starts the worker (:meth:`start`) and returns once :meth:`stop` has finished.

        If the task running this is cancelled, the worker stops at once (no grace period).
        """
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():
                await asyncio.shield(self.stop(grace=0, reason="cancelled"))

    async def start(self) -> None:
        """Connects, registers, subscribes to the inbox and sends ``v1.ready``; returns when ready.

        Retries while NATS or the registry is unreachable. Raises
        :class:`~drover_worker.RegistrationError` when the registry refuses the registration.
        """
        if self._phase != _NEW:
            raise RuntimeError(f"the worker was already started (it is {self._phase})")
        if not self._routines:
            log.warning("drover: worker %s starts with no routines", self.worker_id)
        self._phase = _STARTING
        self._loop = asyncio.get_running_loop()
        self._start_task = asyncio.ensure_future(self._start())
        try:
            await self._start_task
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and self._stop_task is not None:
                return  # stop() was called while starting: the worker is stopped
            if self._phase == _STARTING:
                self._phase = _STOPPED
                await self._close()
            raise
        finally:
            self._start_task = None
        if self._phase == _STARTING:
            self._phase = _RUNNING

    async def _start(self) -> None:
        self._link = Link(
            self.nats_url,
            self.nats_options,
            request_timeout=self.request_timeout,
            on_reconnected=self._on_reconnected,
        )
        nc = await self._link.connect()
        # The inbox outlives registrations: subscribed once, before the first v1.ready.
        self._subscription = await nc.subscribe(protocol.inbox(self.worker_id), cb=self._on_inbox)
        await nc.flush()
        await self._register()

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

        async def main() -> None:
            loop = asyncio.get_running_loop()

            def on_signal(signame: str) -> None:
                if self._stop_task is None:
                    log.info("drover: %s received, stopping (grace %ss)", signame, grace)
                    self._stop_task = asyncio.ensure_future(self._shutdown(grace, signame))
                else:
                    log.warning("drover: %s received again, ending the grace period", signame)
                    self._force.set()

            installed = []
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, on_signal, sig.name)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
                    pass
            try:
                await self.run()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)

        asyncio.run(main())

    async def _shutdown(self, grace: float, reason: str) -> None:
        if self._phase in (_NEW, _STOPPED):
            self._phase = _STOPPED
            self._stopped.set()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0)
        if self._phase == _STARTING and self._start_task is not None:
            self._start_task.cancel()  # not registered yet: nothing to hand back
            self._phase = _STOPPED
            await self._close()
            return
        self._phase = _TERMINATING
        log.info("drover: worker %s terminating (%s)", self.worker_id, reason)
        if self._reregistering is not None:
            self._reregistering.cancel()
        if self._incarnation is not None:
            await self._pulse()
            # Even with no grace, terminating gets a moment: it makes the worker OFFLINE, not LOST.
            await self._within(max(deadline, loop.time() + _TERMINATING_PATIENCE), self._send_terminating(reason))
        pending = {a.task for a in self._attempts.values() if a.task is not None}
        if pending:
            log.info("drover: waiting up to %.1fs for %d run(s) to finish", grace, len(pending))
            await self._within(deadline, asyncio.wait(pending))
        leftover = list(self._attempts.values())
        for attempt in leftover:
            log.warning(
                "drover: giving up run %s attempt %s (%s) at the end of the grace period; it will be placed again",
                attempt.ctx.run_id,
                attempt.ctx.attempt,
                "completion not delivered" if attempt.completing else "still running",
            )
            self._drop(attempt, "worker stopping: grace period over")
        if self._dropped:
            await asyncio.wait(set(self._dropped), timeout=2.0)
        self._phase = _STOPPED
        await self._close()

    async def _within(self, deadline: float, awaitable: Awaitable[Any]) -> None:
        """Awaits until done, the deadline, or a forced stop; cancels it in the last two cases."""
        task = asyncio.ensure_future(awaitable)
        force = asyncio.ensure_future(self._force.wait())
        remaining = max(deadline - asyncio.get_running_loop().time(), 0)
        try:
            await asyncio.wait({task, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _close(self) -> None:
        for task in [self._pulse_task, *self._background]:
            if task is not None and not task.done():
                task.cancel()
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception:
                pass
        if self._link is not None:
            await self._link.close()
        self._ready.clear()
        self._stopped.set()
        log.info("drover: worker %s stopped", self.worker_id)

    # ------------------------------------------------------------------ registration

    async def _register(self) -> None:
        """Registers (a new incarnation), pulses at once, and delivers ``v1.ready``."""
        async with self._register_lock:
            payload: dict[str, Any] = {
                "workerID": self.worker_id,
                "routines": list(self._routines),
                "labels": self.labels,
                "capacity": self.capacity,
                "sdk": {"language": "python", "version": __version__},
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            if self.name is not None:
                payload["name"] = self.name
            try:
                reply = await self._link.call(
                    protocol.worker_subject(protocol.REGISTER, self.worker_id),
                    protocol.REGISTER,
                    payload,
                    expect=protocol.REGISTERED,
                )
            except RequestRefused as refused:
                raise RegistrationError(refused.code, refused.message, refused.details, refused.in_reply_to) from None
            self._ready.clear()
            self._incarnation = int(reply["incarnation"])
            self._interval = max(int(reply["heartbeatIntervalMs"]), 10) / 1000
            self._lost_after = int(reply["lostAfterMs"]) / 1000
            log.info(
                "drover: worker %s registered, incarnation %s (pulse every %.3fs)",
                self.worker_id,
                self._incarnation,
                self._interval,
            )
            if self._pulse_task is None or self._pulse_task.done():
                self._pulse_task = asyncio.ensure_future(self._pulse_loop())
            else:
                await self._pulse()  # INITIALIZING, under the new incarnation
            incarnation = self._incarnation
            await self._link.deliver(
                protocol.worker_subject(protocol.READY, self.worker_id),
                protocol.READY,
                {"incarnation": incarnation},
                msg_id=f"{self.worker_id}-{incarnation}-ready",
            )
            if self._incarnation == incarnation:
                self._ready.set()
                await self._pulse()

    def _register_again(self, why: str) -> None:
        if self._phase != _RUNNING or (self._reregistering is not None and not self._reregistering.done()):
            return
        self._reregistering = self._spawn(self._do_register_again(why))

    async def _do_register_again(self, why: str) -> None:
        held = self._current_attempts()
        log.warning(
            "drover: worker %s registers again (%s); %d run(s) of incarnation %s keep running, "
            "their completions will be refused if the runs were placed elsewhere",
            self.worker_id,
            why,
            len(held),
            self._incarnation,
        )
        try:
            await self._register()
        except RegistrationError as error:
            log.error("drover: registering again was refused: %s", error)
        except LinkClosed:
            pass

    async def _check_registration(self, code: str, payload: Mapping[str, Any]) -> None:
        """Handles an error that says the registration is over: confirm with the registry, then register again.

        The check avoids registering twice for one event: a pulse sent under the previous
        incarnation just before a registration earns a ``stale_incarnation`` that is
        already dealt with.
        """
        details = _details(payload)
        ours = self._incarnation
        if code == "stale_incarnation" and details.get("incarnation") not in (None, ours):
            return  # about a pulse of an earlier incarnation
        try:
            record = await self._link.call(
                protocol.REGISTRY_GET,
                protocol.REGISTRY_GET,
                {"workerID": self.worker_id},
                expect=protocol.REGISTRY_WORKER,
                patience=max(self._interval * 2, 1.0),
            )
        except RequestRefused:
            record = None  # unknown_worker: the registry has no record of us
        except (DroverError, TimeoutError):
            record = {}  # cannot tell: trust the error
        if (
            record
            and record.get("incarnation") == ours
            and record.get("status") not in ("LOST", "OFFLINE")
            and self._ready.is_set()
        ):
            log.debug("drover: ignoring %s; the registry has incarnation %s live", code, ours)
            return
        if self._incarnation != ours:
            return  # registered again meanwhile
        self._register_again(code)

    # ------------------------------------------------------------------ heartbeats

    async def _pulse_loop(self) -> None:
        while True:
            try:
                await self._pulse()
            except Exception as error:  # never let the heartbeat die
                log.warning("drover: pulse failed: %r", error)
            await asyncio.sleep(self._interval)

    async def _pulse(self, probe_id: str | None = None) -> None:
        if self._incarnation is None or self._link is None or not self._link.connected.is_set():
            return
        payload: dict[str, Any] = {
            "incarnation": self._incarnation,
            "status": self.status,
            "runs": [{"runID": run_id, "attempt": attempt} for run_id, attempt in self.active_runs],
        }
        if probe_id is not None:
            payload["id"] = probe_id
        await self._link.publish(
            protocol.worker_subject(protocol.GIVE_PULSE, self.worker_id),
            protocol.encode(protocol.GIVE_PULSE, payload),
        )

    async def _on_reconnected(self) -> None:
        """After a reconnection: pulse at once, and ask again for children whose end may have been missed."""
        await self._pulse()
        for waiter in self._children.pending():
            attempt = self._attempts.get((waiter.ctx.run_id, waiter.ctx.attempt))
            if attempt is not None and not attempt.dropped and attempt.incarnation == self._incarnation:
                self._spawn(children.request_again(self, waiter))

    # ------------------------------------------------------------------ inbox

    async def _on_inbox(self, msg: Msg) -> None:
        key = protocol.inbox_key(msg.subject, self.worker_id)
        try:
            payload_key, payload = protocol.decode(msg.data)
        except ValueError as error:
            log.warning("drover: unreadable message on %s: %s", msg.subject, error)
            return
        if payload_key != key:
            log.warning("drover: %s carries payloadKey %s; ignored", msg.subject, payload_key)
            return
        try:
            if key == protocol.CHECK_PULSE:
                probe = payload.get("id")
                await self._pulse(probe_id=None if probe is None else str(probe))
            elif key == protocol.REQUEST_START:
                self._on_assignment(payload, msg.headers)
            elif key == protocol.CANCEL:
                self._on_cancel(payload)
            elif key == protocol.STARTING:
                self._children.on_starting(payload)
            elif key == protocol.COMPLETED:
                self._children.on_completed(payload)
            elif key == protocol.ERROR:
                self._on_error(payload)
            else:
                log.debug("drover: ignoring %s", msg.subject)
        except Exception:  # one bad message must not stop the inbox
            log.exception("drover: failed to handle %s", msg.subject)

    def _on_assignment(self, payload: Mapping[str, Any], headers: Mapping[str, str] | None) -> None:
        run_id, attempt_no, routine_id = payload.get("runID"), payload.get("attempt"), payload.get("routineID")
        if not isinstance(run_id, str) or not isinstance(attempt_no, int) or not isinstance(routine_id, str):
            log.warning("drover: malformed assignment ignored: %s", payload)
            return
        key = (run_id, attempt_no)
        if key in self._attempts:
            return  # the same assignment twice
        if self._phase != _RUNNING:
            # Sent before the scheduler saw v1.terminating. Not starting it leaves the run to
            # the scheduler, which places it again (unacknowledged, or when this worker is
            # OFFLINE) without spending one of its retries, as a failed completion would.
            log.info("drover: not starting run %s attempt %s: the worker is terminating", run_id, attempt_no)
            return
        routine = self._routines.get(routine_id)
        if routine is None:
            log.warning("drover: run %s asks for unknown routine %s", run_id, routine_id)
            body = protocol.encode(
                protocol.COMPLETED,
                {
                    "runID": run_id,
                    "attempt": attempt_no,
                    "outcome": "failed",
                    "error": failure(f"worker {self.worker_id} has no routine {routine_id}", "UnknownRoutine", False),
                },
            )
            self._spawn(self._send_completed_raw(run_id, attempt_no, body))
            return
        same_run = [a for a in self._attempts.values() if a.ctx.run_id == run_id]
        if any(a.ctx.attempt > attempt_no for a in same_run):
            log.info("drover: ignoring run %s attempt %s: a later attempt is running", run_id, attempt_no)
            return
        for older in same_run:
            # A newer attempt of a run proves the older one is not current any more (its
            # cancel was lost, or it belongs to an earlier registration): stop running it twice.
            self._drop(older, f"superseded by attempt {attempt_no}")
        if len(self._current_attempts()) >= self.capacity:
            log.warning(
                "drover: run %s attempt %s arrived over capacity (%d); not acknowledged, Drover will place it again",
                run_id,
                attempt_no,
                self.capacity,
            )
            return
        traceparent, tracestate = tracing.trace_headers(headers)
        ctx = Context(self, payload, traceparent=traceparent, tracestate=tracestate)
        attempt = Attempt(ctx, routine, self._incarnation)
        self._attempts[key] = attempt
        attempt.task = asyncio.ensure_future(execute(self, attempt))
        attempt.task.add_done_callback(lambda task: self._attempt_ended(attempt, task))
        if ctx.max_exec_time_ms:
            # A backstop in case Drover's cancel is lost: a little after Drover's own deadline.
            margin = max(1.0, 2 * self._interval)
            handle = asyncio.get_running_loop().call_later(
                ctx.max_exec_time_ms / 1000 + margin, self._drop, attempt, "max_exec_exceeded (local deadline)"
            )
            attempt.task.add_done_callback(lambda _: handle.cancel())

    def _attempt_ended(self, attempt: Attempt, task: asyncio.Task[None]) -> None:
        if self._attempts.get(attempt.key) is attempt:
            del self._attempts[attempt.key]
        self._dropped.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, LinkClosed):
                log.error("drover: run %s attempt %s failed in the SDK: %r", attempt.ctx.run_id, attempt.ctx.attempt, error)

    def _drop(self, attempt: Attempt, reason: str) -> None:
        """Stops an attempt without sending ``completed``, and frees its slot."""
        if attempt.dropped:
            return
        attempt.dropped = True
        attempt.ctx.cancel_reason = reason
        attempt.ctx.cancel_event.set()
        if self._attempts.get(attempt.key) is attempt:
            del self._attempts[attempt.key]
        if attempt.task is not None and not attempt.task.done():
            self._dropped.add(attempt.task)
            attempt.task.cancel()

    def _on_cancel(self, payload: Mapping[str, Any]) -> None:
        attempt = self._attempts.get((payload.get("runID"), payload.get("attempt")))  # type: ignore[arg-type]
        if attempt is None:
            log.debug("drover: cancel for an attempt not held: %s", payload)
            return
        reason = str(payload.get("reason") or "cancelled")
        log.info("drover: run %s attempt %s cancelled: %s", attempt.ctx.run_id, attempt.ctx.attempt, reason)
        self._drop(attempt, reason)

    def _on_error(self, payload: Mapping[str, Any]) -> None:
        code = str(payload.get("code"))
        details = _details(payload)
        if code == "stale_attempt":
            key = (details.get("runID"), details.get("attempt"))
            attempt = self._attempts.get(key)  # type: ignore[arg-type]
            log.info("drover: stale attempt %s: %s", key, payload.get("message"))
            if attempt is not None:
                self._drop(attempt, "stale_attempt")
        elif code in protocol.REGISTER_AGAIN_CODES:
            if self._phase == _RUNNING:
                self._spawn(self._check_registration(code, payload))
        else:
            log.warning(
                "drover: refused %s: %s %s", payload.get("inReplyTo"), code, payload.get("message")
            )

    # ------------------------------------------------------------------ sending

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _send_starting(self, ctx: Context) -> None:
        await self._link.deliver(
            protocol.worker_subject(protocol.STARTING, self.worker_id),
            protocol.STARTING,
            {"runID": ctx.run_id, "attempt": ctx.attempt},
            msg_id=f"{ctx.run_id}-{ctx.attempt}-starting",
            headers=_trace_of(ctx),
        )

    async def _send_completed(self, ctx: Context, body: bytes) -> None:
        await self._send_completed_raw(ctx.run_id, ctx.attempt, body, _trace_of(ctx))

    async def _send_completed_raw(
        self, run_id: str, attempt: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        try:
            await self._link.deliver(
                protocol.worker_subject(protocol.COMPLETED, self.worker_id),
                protocol.COMPLETED,
                {},
                msg_id=f"{run_id}-{attempt}-completed",
                headers=headers,
                body=body,
            )
        except RequestRefused as refused:
            log.error("drover: completion of run %s attempt %s refused: %s", run_id, attempt, refused)

    async def _send_terminating(self, reason: str) -> None:
        await self._link.deliver(
            protocol.worker_subject(protocol.TERMINATING, self.worker_id),
            protocol.TERMINATING,
            {"incarnation": self._incarnation, "reason": reason},
            msg_id=f"{self.worker_id}-{self._incarnation}-terminating",
        )

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
        body = self._log_body(level, message, run_id, fields, at)
        tracing.log_event(normalize_level(level), message, fields)
        if body is not None and self._link is not None:
            await self._link.publish(protocol.worker_subject(protocol.LOG, self.worker_id), body)

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
        loop = self._loop
        if loop is None or loop.is_closed() or self._link is None or self._link.closed:
            return
        body = self._log_body(level, message, run_id, fields, at)
        if body is None:
            return
        subject = protocol.worker_subject(protocol.LOG, self.worker_id)

        def send() -> None:
            self._spawn(self._link.publish(subject, body))

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            send()
        else:
            loop.call_soon_threadsafe(send)

    @staticmethod
    def _log_body(
        level: str, message: str, run_id: str | None, fields: Mapping[str, Any] | None, at: datetime | None
    ) -> bytes | None:
        payload: dict[str, Any] = {"level": normalize_level(level), "message": str(message), "timestamp": protocol.timestamp(at)}
        if run_id is not None:
            payload["runID"] = run_id
        try:
            if fields:
                # Values that are not JSON travel as their str().
                payload["fields"] = json.loads(json.dumps(dict(fields), default=str))
            return protocol.encode(protocol.LOG, payload)
        except (ValueError, TypeError) as error:
            log.warning("drover: log line dropped: %s", error)
            return None


def _details(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``details`` object of a ``v1.error`` payload (empty when absent or not an object)."""
    details = payload.get("details")
    return details if isinstance(details, Mapping) else {}


def _trace_of(ctx: Context) -> dict[str, str]:
    """The trace headers a run's assignment carried, for the directives about it."""
    headers = {}
    if ctx.traceparent:
        headers[tracing.TRACEPARENT] = ctx.traceparent
    if ctx.tracestate:
        headers[tracing.TRACESTATE] = ctx.tracestate
    return headers
