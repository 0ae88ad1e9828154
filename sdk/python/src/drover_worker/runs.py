"""Executing one attempt: ``starting``, the routine, and exactly one ``completed``.

An attempt's task sends ``v1.routine.starting`` (retried until stored) while the routine
already runs, then, when the routine returns or raises, waits for the ``starting`` PubAck
(so the stream holds them in order) and sends ``v1.routine.completed``, retried until its
PubAck. An attempt that is *dropped* (cancelled by Drover, refused as stale, or given up
by a stopping worker) has its task cancelled and sends no ``completed``: the run has moved
on, or will be placed again.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from . import protocol, tracing
from .context import Context
from .errors import ChildFailed, Fail, ProtocolViolation
from .logs import current_context

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

log = logging.getLogger("drover_worker")

#: A routine: ``async def routine(ctx, params) -> result``.
Routine = Callable[[Context, Any], Awaitable[Any]]


class Attempt:
    """The worker's bookkeeping of one attempt it runs."""

    def __init__(self, ctx: Context, routine: Routine, incarnation: int | None):
        self.ctx = ctx
        self.routine = routine
        self.incarnation = incarnation  # the registration it was assigned under
        self.task: asyncio.Task[None] | None = None
        self.dropped = False
        self.completing = False  # the routine ended; its completion is being delivered

    @property
    def key(self) -> tuple[str, int]:
        return (self.ctx.run_id, self.ctx.attempt)


def failure(message: str, error_type: str, retryable: bool) -> dict[str, Any]:
    """The ``error`` object of a failed completion."""
    return {"message": message, "type": error_type, "retryable": retryable}


def describe(error: BaseException) -> str:
    """A readable message for an exception (its ``str``, or its ``repr`` when that is empty)."""
    text = str(error)
    return text if text else repr(error)


async def execute(worker: "Worker", attempt: Attempt) -> None:
    """The body of an attempt's task."""
    ctx = attempt.ctx
    current_context.set(ctx)  # this task's own copy of the context
    starting = asyncio.ensure_future(worker._send_starting(ctx))
    try:
        body = await _invoke(worker, attempt)
    except asyncio.CancelledError:
        starting.cancel()
        raise
    if attempt.dropped:
        starting.cancel()
        return
    attempt.completing = True
    await starting  # starting is stored before completed is sent
    await worker._send_completed(ctx, body)


async def _invoke(worker: "Worker", attempt: Attempt) -> bytes:
    """Runs the routine and returns the encoded ``completed`` message for its outcome."""
    ctx = attempt.ctx
    base = {"runID": ctx.run_id, "attempt": ctx.attempt}
    try:
        with tracing.run_span(ctx.routine_id, ctx.run_id, ctx.attempt, worker.worker_id, ctx.traceparent, ctx.tracestate):
            result = await attempt.routine(ctx, ctx.params)
    except asyncio.CancelledError:
        if attempt.dropped:
            raise
        # The routine raised CancelledError itself (nobody cancelled the attempt).
        payload = {**base, "outcome": "failed", "error": failure("the routine was cancelled", "CancelledError", True)}
    except Fail as error:
        payload = {**base, "outcome": "failed", "error": failure(error.message, error.error_type, error.retryable)}
    except ChildFailed as error:
        payload = {**base, "outcome": "failed", "error": failure(describe(error), "ChildFailed", False)}
    except Exception as error:
        if attempt.dropped:
            raise asyncio.CancelledError from error
        await worker.log(
            "error",
            f"routine {ctx.routine_id} raised {type(error).__name__}: {describe(error)}",
            run_id=ctx.run_id,
            fields={"exception": "".join(traceback.format_exception(type(error), error, error.__traceback__))},
        )
        retryable = getattr(error, "retryable", True)
        payload = {
            **base,
            "outcome": "failed",
            "error": failure(describe(error), type(error).__name__, retryable is not False),
        }
    else:
        payload = {**base, "outcome": "succeeded", "result": result}
    try:
        return protocol.encode(protocol.COMPLETED, payload)
    except ProtocolViolation as error:
        # A result that is not JSON, or too large: report it instead of the result.
        log.error("drover: run %s attempt %s: %s", ctx.run_id, ctx.attempt, error)
        invalid = {**base, "outcome": "failed", "error": failure(f"invalid result: {error}", "InvalidResult", False)}
        return protocol.encode(protocol.COMPLETED, invalid)
