"""The :class:`Context` a routine receives: what it is running, cancellation, logs and children."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Mapping

from . import children, tracing
from .runtime import Runtime

if TYPE_CHECKING:  # pragma: no cover - only the annotation of Context.worker; nothing here uses Worker
    from .worker import Worker


class Context:
    """One attempt of one run, as seen by the routine executing it.

    Attributes come from the assignment (``v1.worker.<w>.routine.request_start``):

    - ``run_id``, ``attempt``, ``routine_id``: which attempt this is. ``attempt`` grows on
      every assignment of the run (retries and reassignments), starting at 1.
    - ``params`` (any JSON) and ``env`` (string to string) from the run spec.
    - ``parent_run_id``: set when this run is a child of another run.
    - ``max_exec_time_ms``: the bound on this attempt, if the run has one. When it passes,
      Drover cancels the attempt (see :attr:`cancelled`).
    - ``traceparent`` / ``tracestate``: the attempt's W3C trace context from the NATS headers
      (the context of the attempt's span, which the execution span :attr:`span` is a child of).
    - ``worker``: the :class:`~drover_worker.Worker` running it (``None`` under
      :mod:`drover_worker.testing`).
    - ``runtime``: what the attempt talks to (logs, directives, children): the worker's
      :class:`~drover_worker.runtime.NatsRuntime`, or a test runtime.
    """

    def __init__(
        self,
        runtime: Runtime,
        assignment: Mapping[str, Any],
        *,
        worker: Worker | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ):
        self.runtime = runtime
        self.worker = worker
        self.run_id: str = assignment["runID"]
        self.attempt: int = assignment["attempt"]
        self.routine_id: str = assignment["routineID"]
        self.params: Any = assignment.get("params")
        self.env: dict[str, str] = dict(assignment.get("env") or {})
        self.parent_run_id: str | None = assignment.get("parentRunID")
        self.max_exec_time_ms: int | None = assignment.get("maxExecTimeMs")
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.cancel_event = asyncio.Event()
        """Set when Drover cancels this attempt (or the worker gives it up while stopping)."""
        self.cancel_reason: str | None = None
        """Why it was cancelled: ``cancelled on request``, ``max_exec_exceeded``, ..."""
        self.span: Any = None
        """The attempt's execution span ``drover.execute`` while it runs (an OpenTelemetry
        span), or ``None`` without OpenTelemetry."""
        self._waiting = 0  # run_child calls in progress: the run waits on children

    def __repr__(self) -> str:
        return f"<Context {self.routine_id} run={self.run_id} attempt={self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """Whether this attempt was cancelled. The routine's task is cancelled as well
        (``asyncio.CancelledError`` at its next ``await``); code that runs long stretches
        without awaiting can poll this instead."""
        return self.cancel_event.is_set()

    @property
    def waiting_on_children(self) -> bool:
        """Whether the routine is waiting in :meth:`run_child` right now."""
        return self._waiting > 0

    async def log(self, level: str, message: str, /, **fields: Any) -> None:
        """Publishes a log line about this run on ``v1.log.<workerID>``.

        ``level`` is ``trace``, ``debug``, ``info``, ``warn`` (or ``warning``) or ``error``;
        keyword arguments become the line's ``fields`` (values that are not JSON are sent as
        their ``str``). Best effort: a line that cannot be sent (NATS down and nats-py's
        buffer full) is dropped rather than delaying the routine.
        """
        await self.runtime.log(level, message, run_id=self.run_id, fields=fields)

    async def run_child(
        self,
        routine: str,
        params: Any = None,
        *,
        local_id: str,
        **spec: Any,
    ) -> Any:
        """Runs ``routine`` as a child of this run, waits for it, and returns its result.

        ``local_id`` names the child within this run and **must be deterministic** (for
        example ``f"thumb-{index}"``, never a random value): Drover memoizes children by
        (parent run, localRunID), so when this run is retried, the same ``local_id`` gets the
        same child run, and a child that already ended is not run again; its result comes
        back at once.

        Further keyword arguments are run spec fields, in the protocol's spelling or in
        snake_case: ``env``, ``conditions``, ``maxRetries``/``max_retries``,
        ``maxExecTimeMs``/``max_exec_time_ms``, ``maxWaitTimeMs``/``max_wait_time_ms``,
        ``retryBackoff``/``retry_backoff``, ``idempotencyKey``/``idempotency_key``.

        Raises :class:`~drover_worker.ChildFailed` when the child ends FAILED or CANCELLED,
        and :class:`~drover_worker.RequestRefused` when the scheduler refuses the request
        (for example ``parent_not_running`` once this attempt is no longer current).
        While every run the worker holds is waiting here, its pulses say ``HANGING``.
        Several children can run at once: ``await asyncio.gather(ctx.run_child(...), ...)``.
        """
        request = children.build_spec(self.run_id, routine, params, local_id, spec)
        headers = tracing.child_headers(self.traceparent, self.tracestate)
        self._waiting += 1
        try:
            end = await self.runtime.request_child(request, headers, parent_attempt=self.attempt)
        finally:
            self._waiting -= 1
        return children.child_result(end, routine, local_id)


#: The context of the routine the current task is running, if any (asyncio copies it into
#: the tasks a routine creates, and ``asyncio.to_thread`` into threads).
current_context: ContextVar[Context | None] = ContextVar("drover_current_context", default=None)
