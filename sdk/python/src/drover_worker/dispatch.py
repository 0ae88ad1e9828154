"""The worker's inbox (``v1.worker.<w>.>``): probes, assignments, cancels, forwarded child
ends and errors, each handed to the part that deals with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from nats.aio.msg import Msg

from . import protocol, tracing
from .context import Context
from .heartbeat import Heartbeat
from .link import LinkClosed
from .registration import Registration, error_details
from .runs import Attempt, execute, failure
from .runtime import NatsRuntime
from .state import Phase, WorkerState

log = logging.getLogger("drover_worker")

#: Builds the Context of an assignment: ``(assignment, traceparent, tracestate) -> Context``.
ContextFactory = Callable[[Mapping[str, Any], str | None, str | None], Context]


class Dispatcher:
    """Reads the inbox and starts, cancels and drops the attempts the worker holds."""

    def __init__(
        self,
        state: WorkerState,
        runtime: NatsRuntime,
        heartbeat: Heartbeat,
        registration: Registration,
        new_context: ContextFactory,
    ):
        self._state = state
        self._runtime = runtime
        self._heartbeat = heartbeat
        self._registration = registration
        self._new_context = new_context

    async def on_message(self, msg: Msg) -> None:
        """The inbox subscription's callback."""
        key = protocol.inbox_key(msg.subject, self._state.worker_id)
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
                await self._heartbeat.pulse(probe_id=None if probe is None else str(probe))
            elif key == protocol.REQUEST_START:
                self._on_assignment(payload, msg.headers)
            elif key == protocol.CANCEL:
                self._on_cancel(payload)
            elif key == protocol.STARTING:
                self._runtime.children.on_starting(payload)
            elif key == protocol.COMPLETED:
                self._runtime.children.on_completed(payload)
            elif key == protocol.ERROR:
                self._on_error(payload)
            else:
                log.debug("drover: ignoring %s", msg.subject)
        except Exception:  # one bad message must not stop the inbox
            log.exception("drover: failed to handle %s", msg.subject)

    def ask_children_again(self) -> None:
        """After a reconnection: requests again the children whose end may have been missed."""
        state = self._state
        for waiter in self._runtime.children.pending():
            attempt = state.attempts.get((waiter.parent_run_id, waiter.parent_attempt))
            if attempt is not None and not attempt.dropped and attempt.incarnation == state.incarnation:
                self._runtime.spawn(self._runtime.request_child_again(waiter))

    def _on_assignment(self, payload: Mapping[str, Any], headers: Mapping[str, str] | None) -> None:
        state = self._state
        run_id, attempt_no, routine_id = payload.get("runID"), payload.get("attempt"), payload.get("routineID")
        if not isinstance(run_id, str) or not isinstance(attempt_no, int) or not isinstance(routine_id, str):
            log.warning("drover: malformed assignment ignored: %s", payload)
            return
        if (run_id, attempt_no) in state.attempts:
            return  # the same assignment twice
        if state.phase != Phase.RUNNING:
            # Sent before the scheduler saw v1.terminating. Not starting it leaves the run to
            # the scheduler, which places it again (unacknowledged, or when this worker is
            # OFFLINE) without spending one of its retries, as a failed completion would.
            log.info("drover: not starting run %s attempt %s: the worker is terminating", run_id, attempt_no)
            return
        routine = state.routines.get(routine_id)
        if routine is None:
            log.warning("drover: run %s asks for unknown routine %s", run_id, routine_id)
            body = protocol.encode(
                protocol.COMPLETED,
                {
                    "runID": run_id,
                    "attempt": attempt_no,
                    "outcome": "failed",
                    "error": failure(f"worker {state.worker_id} has no routine {routine_id}", "UnknownRoutine", False),
                },
            )
            self._runtime.spawn(self._runtime.send_completed(run_id, attempt_no, body))
            return
        same_run = [a for a in state.attempts.values() if a.ctx.run_id == run_id]
        if any(a.ctx.attempt > attempt_no for a in same_run):
            log.info("drover: ignoring run %s attempt %s: a later attempt is running", run_id, attempt_no)
            return
        for older in same_run:
            # A newer attempt of a run proves the older one is not current any more (its
            # cancel was lost, or it belongs to an earlier registration): stop running it twice.
            state.drop(older, f"superseded by attempt {attempt_no}")
        if len(state.current_attempts()) >= state.capacity:
            log.warning(
                "drover: run %s attempt %s arrived over capacity (%d); not acknowledged, Drover will place it again",
                run_id,
                attempt_no,
                state.capacity,
            )
            return
        traceparent, tracestate = tracing.trace_headers(headers)
        ctx = self._new_context(payload, traceparent, tracestate)
        attempt = Attempt(ctx, routine, state.incarnation)
        state.hold(attempt)
        task = attempt.task = asyncio.ensure_future(execute(attempt))
        task.add_done_callback(lambda done: self._ended(attempt, done))
        if ctx.max_exec_time_ms:
            # A backstop in case Drover's cancel is lost: a little after Drover's own deadline.
            margin = max(1.0, 2 * state.interval)
            handle = asyncio.get_running_loop().call_later(
                ctx.max_exec_time_ms / 1000 + margin, state.drop, attempt, "max_exec_exceeded (local deadline)"
            )
            task.add_done_callback(lambda _: handle.cancel())

    def _ended(self, attempt: Attempt, task: asyncio.Task[None]) -> None:
        self._state.ended(attempt, task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, LinkClosed):
                log.error("drover: run %s attempt %s failed in the SDK: %r", attempt.ctx.run_id, attempt.ctx.attempt, error)

    def _on_cancel(self, payload: Mapping[str, Any]) -> None:
        attempt = self._state.attempts.get((payload.get("runID"), payload.get("attempt")))  # type: ignore[arg-type]
        if attempt is None:
            log.debug("drover: cancel for an attempt not held: %s", payload)
            return
        reason = str(payload.get("reason") or "cancelled")
        log.info("drover: run %s attempt %s cancelled: %s", attempt.ctx.run_id, attempt.ctx.attempt, reason)
        self._state.drop(attempt, reason)

    def _on_error(self, payload: Mapping[str, Any]) -> None:
        code = str(payload.get("code"))
        details = error_details(payload)
        if code == "stale_attempt":
            key = (details.get("runID"), details.get("attempt"))
            attempt = self._state.attempts.get(key)  # type: ignore[arg-type]
            log.info("drover: stale attempt %s: %s", key, payload.get("message"))
            if attempt is not None:
                self._state.drop(attempt, "stale_attempt")
        elif code in protocol.REGISTER_AGAIN_CODES:
            if self._state.phase == Phase.RUNNING:
                self._runtime.spawn(self._registration.check(code, payload))
        else:
            log.warning(
                "drover: refused %s: %s %s", payload.get("inReplyTo"), code, payload.get("message")
            )
