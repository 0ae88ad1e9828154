"""Executing one attempt: ``starting``, the routine, and exactly one ``completed``.

An attempt's task sends ``v1.routine.starting`` (retried until stored) while the routine
already runs, then, when the routine returns or raises, waits for the ``starting`` PubAck
(so the stream holds them in order) and sends ``v1.routine.completed``, retried until its
PubAck. An attempt that is *dropped* (cancelled by Drover, refused as stale, or given up
by a stopping worker) has its task cancelled and sends no ``completed``: the run has moved
on, or will be placed again.

Everything goes through the attempt's :class:`~drover_worker.runtime.Runtime`, so
:mod:`drover_worker.testing` runs routines through this same code.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any, Awaitable, Callable

from . import protocol, tracing
from .context import Context, current_context
from .errors import ChildFailed, Fail, ProtocolViolation

log = logging.getLogger("drover_worker")

#: A routine: ``async def routine(ctx, params) -> result``.
Routine = Callable[[Context, Any], Awaitable[Any]]


class Attempt:
    """The bookkeeping of one attempt being run."""

    def __init__(self, ctx: Context, routine: Routine, incarnation: int | None):
        self.ctx = ctx
        self.routine = routine
        self.incarnation = incarnation  # the registration it was assigned under
        self.task: asyncio.Task[None] | None = None
        self.dropped = False
        self.completing = False  # the routine ended; its completion is being delivered

    @property
    def key(self) -> tuple[str, int]:
        """``(runID, attempt)``: how directives name this attempt."""
        return (self.ctx.run_id, self.ctx.attempt)

    def drop(self, reason: str) -> bool:
        """Stops the attempt without a ``completed``: tells the routine why and cancels its
        task. Returns ``False`` when it was dropped already."""
        if self.dropped:
            return False
        self.dropped = True
        self.ctx.cancel_reason = reason
        self.ctx.cancel_event.set()
        tracing.note(self.ctx.span, "info", f"attempt cancelled: {reason}; its outcome is not reported")
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return True


def failure(message: str, error_type: str, retryable: bool) -> dict[str, Any]:
    """The ``error`` object of a failed completion."""
    return {"message": message, "type": error_type, "retryable": retryable}


def describe(error: BaseException) -> str:
    """A readable message for an exception (its ``str``, or its ``repr`` when that is empty)."""
    text = str(error)
    return text if text else repr(error)


def failure_of(error: Exception) -> dict[str, Any]:
    """The ``error`` object reported for an exception a routine raised (see the README's table)."""
    if isinstance(error, Fail):
        return failure(error.message, error.error_type, error.retryable)
    if isinstance(error, ChildFailed):
        return failure(describe(error), "ChildFailed", False)
    retryable = getattr(error, "retryable", True)
    return failure(describe(error), type(error).__name__, retryable is not False)


async def execute(attempt: Attempt) -> None:
    """The body of an attempt's task, inside the attempt's execution span."""
    ctx = attempt.ctx
    current_context.set(ctx)  # this task's own copy of the context
    with tracing.execution_span(
        ctx.routine_id, ctx.run_id, ctx.attempt, ctx.runtime.worker_id, ctx.traceparent, ctx.tracestate
    ) as span:
        ctx.span = span
        await _attempt(attempt)


async def _attempt(attempt: Attempt) -> None:
    """``starting``, the routine, and ``completed``."""
    ctx = attempt.ctx
    runtime = ctx.runtime
    headers = tracing.assignment_headers(ctx.traceparent, ctx.tracestate)
    starting = asyncio.ensure_future(runtime.send_starting(ctx.run_id, ctx.attempt, headers))
    try:
        body = await _invoke(attempt)
    except asyncio.CancelledError:
        starting.cancel()
        raise
    if attempt.dropped:
        starting.cancel()
        return
    attempt.completing = True
    await starting  # starting is stored before completed is sent
    await runtime.send_completed(ctx.run_id, ctx.attempt, body, headers)


async def _invoke(attempt: Attempt) -> bytes:
    """Runs the routine and returns the encoded ``completed`` message for its outcome."""
    ctx = attempt.ctx
    runtime = ctx.runtime
    base = {"runID": ctx.run_id, "attempt": ctx.attempt}
    try:
        result = await attempt.routine(ctx, ctx.params)
    except asyncio.CancelledError:
        if attempt.dropped:
            raise
        # The routine raised CancelledError itself (nobody cancelled the attempt).
        payload = {**base, "outcome": "failed", "error": failure("the routine was cancelled", "CancelledError", True)}
    except (Fail, ChildFailed) as error:
        payload = {**base, "outcome": "failed", "error": failure_of(error)}
    except Exception as error:
        if attempt.dropped:
            raise asyncio.CancelledError from error
        await runtime.log(
            "error",
            f"routine {ctx.routine_id} raised {type(error).__name__}: {describe(error)}",
            run_id=ctx.run_id,
            fields={"exception": "".join(traceback.format_exception(type(error), error, error.__traceback__))},
        )
        payload = {**base, "outcome": "failed", "error": failure_of(error)}
    else:
        payload = {**base, "outcome": "succeeded", "result": result}
    try:
        return protocol.encode(protocol.COMPLETED, payload)
    except ProtocolViolation as error:
        # A result that is not JSON, or too large: report it instead of the result.
        log.error("drover: run %s attempt %s: %s", ctx.run_id, ctx.attempt, error)
        tracing.note(ctx.span, "error", f"invalid result: {error}")
        invalid = {**base, "outcome": "failed", "error": failure(f"invalid result: {error}", "InvalidResult", False)}
        return protocol.encode(protocol.COMPLETED, invalid)
