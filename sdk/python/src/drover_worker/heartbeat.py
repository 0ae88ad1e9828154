"""Pulses: ``v1.heartbeat.give_pulse`` every heartbeat interval, and at once when probed.

Pulses are core NATS and never queued: one lost while disconnected is replaced by the
next, and a pulse is not even attempted while the connection is down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import protocol
from .runtime import NatsRuntime
from .state import WorkerState

log = logging.getLogger("drover_worker")


class Heartbeat:
    """The worker's pulses, from its first registration until it closes."""

    def __init__(self, state: WorkerState, runtime: NatsRuntime):
        self._state = state
        self._runtime = runtime
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the pulse loop runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Starts the pulse loop; its first pulse goes out at once."""
        self._task = asyncio.ensure_future(self._loop())

    def stop(self) -> None:
        """Stops the pulse loop (the worker is closing)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                await self.pulse()
            except Exception as error:  # never let the heartbeat die
                log.warning("drover: pulse failed: %r", error)
            # Read each time: a new registration may hand out another interval.
            await asyncio.sleep(self._state.interval)

    async def pulse(self, probe_id: str | None = None) -> None:
        """Publishes one pulse now (``probe_id`` answers a check_pulse); skipped while unregistered or disconnected."""
        state, link = self._state, self._runtime.link
        if state.incarnation is None or not link.connected.is_set():
            return
        payload: dict[str, Any] = {
            "incarnation": state.incarnation,
            "status": state.status(),
            "runs": [{"runID": run_id, "attempt": attempt} for run_id, attempt in state.active_runs()],
        }
        if probe_id is not None:
            payload["id"] = probe_id
        await link.publish(self._runtime.subject(protocol.GIVE_PULSE), protocol.encode(protocol.GIVE_PULSE, payload))
