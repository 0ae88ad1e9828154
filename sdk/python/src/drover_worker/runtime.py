"""What a run needs from the worker that runs it: :class:`Runtime`, and :class:`NatsRuntime`.

:class:`~drover_worker.Context`, an attempt's task (:mod:`drover_worker.runs`), child
requests and log lines talk to a :class:`Runtime` through its public methods only, never
to the :class:`~drover_worker.Worker`. That keeps the worker's own bookkeeping (its
registration, pulses and the attempts it holds) free to change without them, and lets
:mod:`drover_worker.testing` run a routine on a runtime of its own, with no broker, through
the very same :class:`~drover_worker.Context` and attempt code. It plays the part of
``Shared`` in the Rust SDK (``crates/worker/src/state.rs``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, Awaitable, Mapping

from . import protocol, tracing
from .children import ChildWaiter, ChildWaiters, outcome_of_record
from .errors import DroverError, RequestRefused
from .link import Link, LinkClosed

log = logging.getLogger("drover_worker")


class Runtime(ABC):
    """What one attempt may ask of whatever runs it: log lines, its two directives, child runs."""

    def __init__(self, worker_id: str):
        self.worker_id = worker_id

    @abstractmethod
    async def log(
        self,
        level: str,
        message: str,
        /,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Sends a ``v1.log`` line, best effort; raises ``ValueError`` for an unknown level."""

    @abstractmethod
    def log_nowait(
        self,
        level: str,
        message: str,
        *,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Like :meth:`log`, without waiting and from any thread (for ``logging`` handlers)."""

    @abstractmethod
    async def send_starting(self, run_id: str, attempt: int, headers: Mapping[str, str]) -> None:
        """Delivers ``v1.routine.starting`` for an attempt; returns once it is stored."""

    @abstractmethod
    async def send_completed(
        self, run_id: str, attempt: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Delivers an encoded ``v1.routine.completed``; returns once it is stored (or refused)."""

    @abstractmethod
    async def request_child(
        self, spec: dict[str, Any], headers: dict[str, str], *, parent_attempt: int
    ) -> dict[str, Any]:
        """Requests a child run (``spec`` is checked already) and returns its end, shaped as a
        forwarded ``v1.routine.completed``: ``runID, localRunID, outcome, result?, error?``
        (plus ``status`` and ``failureReason`` when known)."""


def log_line(
    level: str, message: str, run_id: str | None, fields: Mapping[str, Any] | None, at: datetime | None
) -> bytes | None:
    """The encoded ``v1.log`` line, or ``None`` when it cannot be encoded (dropped with a warning).

    Raises ``ValueError`` for an unknown level: that is the caller's mistake, not the line's.
    """
    payload: dict[str, Any] = {
        "level": protocol.normalize_level(level),
        "message": str(message),
        "timestamp": protocol.timestamp(at),
    }
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


class NatsRuntime(Runtime):
    """The runtime of a :class:`~drover_worker.Worker`: its NATS link, child waiters, log
    lines and the at-least-once deliveries of ``starting`` and ``completed``.

    It also owns the worker's side tasks (:meth:`spawn`), so that closing cancels them all.
    """

    def __init__(
        self, worker_id: str, link: Link, *, child_poll_interval: float, loop: asyncio.AbstractEventLoop
    ):
        super().__init__(worker_id)
        self.link = link
        self.children = ChildWaiters()
        self.child_poll_interval = child_poll_interval
        self._loop = loop  # the worker's loop: log_nowait hands lines to it from other threads
        self._tasks: set[asyncio.Task[Any]] = set()

    def subject(self, key: str) -> str:
        """The subject this worker publishes directive ``key`` on."""
        return protocol.worker_subject(key, self.worker_id)

    def spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        """Runs ``awaitable`` on the side; :meth:`cancel_tasks` cancels it if it is still running."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_tasks(self) -> None:
        """Cancels every side task still running (the worker is closing)."""
        for task in list(self._tasks):
            if not task.done():
                task.cancel()

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
        body = log_line(level, message, run_id, fields, at)
        tracing.log_event(protocol.normalize_level(level), message, fields, run_id)
        if body is not None:
            await self.link.publish(self.subject(protocol.LOG), body, tracing.log_headers(run_id))

    def log_nowait(
        self,
        level: str,
        message: str,
        *,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        loop = self._loop
        if loop.is_closed() or self.link.closed:
            return
        body = log_line(level, message, run_id, fields, at)
        if body is None:
            return
        # In the caller's context (its thread, its task): that is where the run's span is.
        tracing.log_event(protocol.normalize_level(level), message, fields, run_id)
        headers = tracing.log_headers(run_id)
        subject = self.subject(protocol.LOG)

        def send() -> None:
            self.spawn(self.link.publish(subject, body, headers))

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            send()
        else:
            loop.call_soon_threadsafe(send)

    # ------------------------------------------------------------------ directives of an attempt

    async def send_starting(self, run_id: str, attempt: int, headers: Mapping[str, str]) -> None:
        await self.link.deliver(
            self.subject(protocol.STARTING),
            protocol.STARTING,
            {"runID": run_id, "attempt": attempt},
            msg_id=f"{run_id}-{attempt}-starting",
            headers=headers,
        )

    async def send_completed(
        self, run_id: str, attempt: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        try:
            await self.link.deliver(
                self.subject(protocol.COMPLETED),
                protocol.COMPLETED,
                {},
                msg_id=f"{run_id}-{attempt}-completed",
                headers=headers,
                body=body,
            )
        except RequestRefused as refused:
            log.error("drover: completion of run %s attempt %s refused: %s", run_id, attempt, refused)
            tracing.log_event("error", f"completion refused: {refused}", None, run_id)

    # ------------------------------------------------------------------ children

    async def request_child(
        self, spec: dict[str, Any], headers: dict[str, str], *, parent_attempt: int
    ) -> dict[str, Any]:
        waiter = ChildWaiter(spec, headers, parent_attempt)
        self.children.add(waiter)  # before the request: a memoized child's end comes right after the reply
        try:
            accepted = await self.link.call(
                self.subject(protocol.REQUEST_START),
                protocol.REQUEST_START,
                spec,
                expect=protocol.ACCEPTED,
                headers=headers,
            )
            self.children.accepted(waiter, accepted["runID"])
            return await self._wait_for_end(waiter)
        finally:
            self.children.remove(waiter)

    async def _wait_for_end(self, waiter: ChildWaiter) -> dict[str, Any]:
        interval = self.child_poll_interval
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter.future), interval)
            except asyncio.TimeoutError:
                pass
            # Nothing heard for a while: read the child's record in case its end was lost.
            try:
                record = await self.link.call(
                    protocol.RUN_GET,
                    protocol.RUN_GET,
                    {"runID": waiter.child_run_id},
                    expect=protocol.RUN_RECORD,
                    patience=interval,
                )
            except LinkClosed:
                raise
            except (DroverError, TimeoutError) as err:
                log.debug("drover: could not read child run %s: %r", waiter.child_run_id, err)
                continue
            if record.get("status") in protocol.TERMINAL_RUN_STATUSES:
                log.info("drover: child %s ended without a forwarded completion; read its record", waiter.child_run_id)
                waiter.resolve(outcome_of_record(record, waiter))

    async def request_child_again(self, waiter: ChildWaiter) -> None:
        """Requests a waiting child again after a reconnection, so that its end is forwarded again."""
        try:
            accepted = await self.link.call(
                self.subject(protocol.REQUEST_START),
                protocol.REQUEST_START,
                waiter.spec,
                expect=protocol.ACCEPTED,
                headers=waiter.headers,
                patience=30,
            )
        except (DroverError, TimeoutError) as err:
            log.info("drover: could not request child %s again: %r", waiter.local_run_id, err)
            return
        if waiter.child_run_id is None:
            self.children.accepted(waiter, accepted["runID"])
