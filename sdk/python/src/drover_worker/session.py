"""A started worker's parts, wired together over one NATS connection.

:meth:`Worker.start <drover_worker.Worker.start>` makes one :class:`Session` and opens it;
:meth:`Worker.stop <drover_worker.Worker.stop>` drains it and closes it. A worker is started
once, so it has at most one session.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

from nats.aio.subscription import Subscription

from . import protocol, shutdown
from .dispatch import ContextFactory, Dispatcher
from .heartbeat import Heartbeat
from .link import Link
from .registration import Registration
from .runtime import NatsRuntime
from .state import WorkerState


class Session:
    """The runtime, heartbeat, registration and inbox of a started worker."""

    def __init__(
        self,
        state: WorkerState,
        *,
        nats_url: str | list[str],
        nats_options: Mapping[str, Any],
        request_timeout: float,
        child_poll_interval: float,
        describe: Callable[[], dict[str, Any]],
        new_context: ContextFactory,
    ):
        self._state = state
        link = Link(nats_url, nats_options, request_timeout=request_timeout, on_reconnected=self._on_reconnected)
        self.runtime = NatsRuntime(
            state.worker_id, link, child_poll_interval=child_poll_interval, loop=asyncio.get_running_loop()
        )
        self.heartbeat = Heartbeat(state, self.runtime)
        self.registration = Registration(state, self.runtime, self.heartbeat, describe)
        self.dispatcher = Dispatcher(state, self.runtime, self.heartbeat, self.registration, new_context)
        self._subscription: Subscription | None = None

    async def open(self) -> None:
        """Connects, subscribes to the inbox and registers (``v1.ready`` included)."""
        nc = await self.runtime.link.connect()
        # The inbox outlives registrations: subscribed once, before the first v1.ready.
        self._subscription = await nc.subscribe(protocol.inbox(self._state.worker_id), cb=self.dispatcher.on_message)
        await nc.flush()
        # A credential that is not this worker's is refused its inbox and its registration
        # by NATS: stop with what NATS said instead of retrying the registration forever.
        await self.runtime.link.unless_refused(
            self.registration.register(), who=f"worker {self._state.worker_id}"
        )

    async def _on_reconnected(self) -> None:
        """After a reconnection: pulse at once, and ask again for children whose end may have been missed."""
        await self.heartbeat.pulse()
        self.dispatcher.ask_children_again()

    async def drain(self, grace: float, reason: str) -> None:
        """Terminating, the grace period, and dropping what is left (see :func:`shutdown.drain`)."""
        await shutdown.drain(self._state, self.runtime, self.heartbeat, self.registration, grace, reason)

    async def close(self) -> None:
        """Stops pulsing and every side task, leaves the inbox and closes the connection."""
        self.heartbeat.stop()
        self.runtime.cancel_tasks()
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception:
                pass
        await self.runtime.link.close()
