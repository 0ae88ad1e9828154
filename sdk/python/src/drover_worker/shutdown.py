"""Leaving gracefully: ``v1.terminating``, a grace period for the runs held, then letting go.

See :meth:`drover_worker.Worker.stop` for the steps and why runs still running at the end
are dropped without a ``completed``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, Awaitable, Callable

from . import protocol
from .heartbeat import Heartbeat
from .registration import Registration
from .runtime import NatsRuntime
from .state import Phase, WorkerState

log = logging.getLogger("drover_worker")

#: Seconds v1.terminating may take to be stored, whatever the grace period.
TERMINATING_PATIENCE = 2.0

#: Seconds to let the tasks of dropped attempts wind down (their ``finally`` blocks).
_WIND_DOWN = 2.0


async def drain(
    state: WorkerState,
    runtime: NatsRuntime,
    heartbeat: Heartbeat,
    registration: Registration,
    grace: float,
    reason: str,
) -> None:
    """Steps 1 to 3 of :meth:`~drover_worker.Worker.stop`: terminating, the grace period, and
    dropping what is still held. Closing the connection is left to the caller."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(grace, 0)
    state.phase = Phase.TERMINATING
    log.info("drover: worker %s terminating (%s)", state.worker_id, reason)
    registration.cancel()
    if state.incarnation is not None:
        await heartbeat.pulse()
        # Even with no grace, terminating gets a moment: it makes the worker OFFLINE, not LOST.
        patience = max(deadline, loop.time() + TERMINATING_PATIENCE)
        await within(patience, _send_terminating(state, runtime, reason), state.force)
    pending = {a.task for a in state.attempts.values() if a.task is not None}
    if pending:
        log.info("drover: waiting up to %.1fs for %d run(s) to finish", grace, len(pending))
        await within(deadline, asyncio.wait(pending), state.force)
    for attempt in list(state.attempts.values()):
        log.warning(
            "drover: giving up run %s attempt %s (%s) at the end of the grace period; it will be placed again",
            attempt.ctx.run_id,
            attempt.ctx.attempt,
            "completion not delivered" if attempt.completing else "still running",
        )
        state.drop(attempt, "worker stopping: grace period over")
    if state.dropped:
        await asyncio.wait(set(state.dropped), timeout=_WIND_DOWN)


async def _send_terminating(state: WorkerState, runtime: NatsRuntime, reason: str) -> None:
    await runtime.link.deliver(
        runtime.subject(protocol.TERMINATING),
        protocol.TERMINATING,
        {"incarnation": state.incarnation, "reason": reason},
        msg_id=f"{state.worker_id}-{state.incarnation}-terminating",
    )


async def within(deadline: float, awaitable: Awaitable[Any], force: asyncio.Event) -> None:
    """Awaits until done, the deadline, or ``force``; cancels it in the last two cases."""
    task = asyncio.ensure_future(awaitable)
    forced = asyncio.ensure_future(force.wait())
    remaining = max(deadline - asyncio.get_running_loop().time(), 0)
    try:
        await asyncio.wait({task, forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_signalled(run: Callable[[], Awaitable[None]], on_signal: Callable[[str], None]) -> None:
    """Awaits ``run()`` with SIGTERM and SIGINT handled by ``on_signal(name)`` meanwhile."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
            pass
    try:
        await run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def handle_sigterm(on_signal: Callable[[str], None]) -> Callable[[], None]:
    """Handles SIGTERM with ``on_signal("SIGTERM")`` on the running loop, if nobody else does.

    Only when SIGTERM still has its default disposition (the application, or
    :func:`until_signalled`, has not chosen what it does) and this is the main thread, where
    asyncio can handle signals. Returns the function that puts the default back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return lambda: None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM.name)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGTERM)
