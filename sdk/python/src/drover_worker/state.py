"""What the worker's own parts share: its phase, its registration and the attempts it holds.

Invariant: an attempt is *held* (in :attr:`WorkerState.attempts`) from its assignment until
its task ends (its completion is stored, or it gave up), or until it is dropped (cancelled,
stale, superseded, or abandoned at the end of the grace period). Dropping sets the
attempt's cancel event and cancels its task, and a ``completed`` is only ever sent for an
attempt that was not dropped (see :mod:`drover_worker.runs`).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Mapping

from . import protocol
from .runs import Attempt, Routine


class Phase(enum.Enum):
    """Lifecycle phases of a :class:`~drover_worker.Worker` object."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    TERMINATING = "terminating"
    STOPPED = "stopped"


class WorkerState:
    """The state the registration, heartbeat, dispatch and shutdown parts of a worker share."""

    def __init__(self, worker_id: str, capacity: int):
        self.worker_id = worker_id
        self.capacity = capacity
        self.routines: dict[str, Routine] = {}
        self.phase = Phase.NEW
        self.incarnation: int | None = None
        self.interval = 5.0
        """Seconds between pulses, from ``v1.registered``."""
        self.lost_after = 15.0
        """Seconds of silence after which Drover declares the worker LOST."""
        self.ready = asyncio.Event()
        """Set while ``v1.ready`` of the current registration is stored."""
        self.stopped = asyncio.Event()
        self.force = asyncio.Event()
        """Set by a second signal: the grace period ends at once."""
        self.attempts: dict[tuple[str, int], Attempt] = {}
        self.dropped: set[asyncio.Task[None]] = set()
        """Tasks of dropped attempts, still winding down."""

    def take_registration(self, reply: Mapping[str, Any]) -> None:
        """Takes on a ``v1.registered`` reply: a new incarnation, not ready yet."""
        self.ready.clear()
        self.incarnation = int(reply["incarnation"])
        self.interval = max(int(reply["heartbeatIntervalMs"]), 10) / 1000
        self.lost_after = int(reply["lostAfterMs"]) / 1000

    def current_attempts(self) -> list[Attempt]:
        """The attempts held under the current registration."""
        return [a for a in self.attempts.values() if a.incarnation == self.incarnation and not a.dropped]

    def active_runs(self) -> list[tuple[str, int]]:
        """``(runID, attempt)`` of the attempts held under the current registration."""
        return [a.key for a in self.current_attempts()]

    def status(self) -> str:
        """The status the worker reports in its pulses (docs/protocol.md section 4)."""
        if self.phase in (Phase.TERMINATING, Phase.STOPPED):
            return protocol.TERMINATING_STATUS
        if not self.ready.is_set():
            return protocol.INITIALIZING
        held = self.current_attempts()
        if not held:
            return protocol.IDLE
        if all(a.ctx.waiting_on_children and not a.completing for a in held):
            return protocol.HANGING
        return protocol.WORKING

    def hold(self, attempt: Attempt) -> None:
        """Takes on an attempt (its slot is taken until it ends or is dropped)."""
        self.attempts[attempt.key] = attempt

    def ended(self, attempt: Attempt, task: asyncio.Task[None]) -> None:
        """An attempt's task ended: its slot is free."""
        if self.attempts.get(attempt.key) is attempt:
            del self.attempts[attempt.key]
        self.dropped.discard(task)

    def drop(self, attempt: Attempt, reason: str) -> None:
        """Stops an attempt without sending ``completed``, and frees its slot."""
        if attempt.dropped:
            return
        if self.attempts.get(attempt.key) is attempt:
            del self.attempts[attempt.key]
        if attempt.task is not None and not attempt.task.done():
            self.dropped.add(attempt.task)
        attempt.drop(reason)
