"""Registration: ``v1.register`` (a new incarnation each time), then ``v1.ready``; and
registering again when Drover says the registration is over (docs/protocol.md 4.3).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from . import protocol
from .errors import DroverError, RegistrationError, RequestRefused
from .heartbeat import Heartbeat
from .link import LinkClosed
from .runtime import NatsRuntime
from .state import Phase, WorkerState

log = logging.getLogger("drover_worker")


def error_details(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``details`` object of a ``v1.error`` payload (empty when absent or not an object)."""
    details = payload.get("details")
    return details if isinstance(details, Mapping) else {}


class Registration:
    """Registers the worker and keeps it registered.

    ``describe`` returns the ``v1.register`` payload; it is called at each registration, so
    a registration again describes the worker as it is then.
    """

    def __init__(
        self,
        state: WorkerState,
        runtime: NatsRuntime,
        heartbeat: Heartbeat,
        describe: Callable[[], dict[str, Any]],
    ):
        self._state = state
        self._runtime = runtime
        self._heartbeat = heartbeat
        self._describe = describe
        self._lock = asyncio.Lock()  # one registration at a time
        self._again: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Registers (a new incarnation), pulses at once, and delivers ``v1.ready``.

        Retries while NATS or the registry is unreachable; raises :class:`RegistrationError`
        when the registry refuses.
        """
        state, runtime = self._state, self._runtime
        async with self._lock:
            try:
                reply = await runtime.link.call(
                    runtime.subject(protocol.REGISTER),
                    protocol.REGISTER,
                    self._describe(),
                    expect=protocol.REGISTERED,
                )
            except RequestRefused as refused:
                raise RegistrationError(refused.code, refused.message, refused.details, refused.in_reply_to) from None
            state.take_registration(reply)
            log.info(
                "drover: worker %s registered, incarnation %s (pulse every %.3fs)",
                state.worker_id,
                state.incarnation,
                state.interval,
            )
            if not self._heartbeat.running:
                self._heartbeat.start()
            else:
                await self._heartbeat.pulse()  # INITIALIZING, under the new incarnation
            incarnation = state.incarnation
            await runtime.link.deliver(
                runtime.subject(protocol.READY),
                protocol.READY,
                {"incarnation": incarnation},
                msg_id=f"{state.worker_id}-{incarnation}-ready",
            )
            if state.incarnation == incarnation:
                state.ready.set()
                await self._heartbeat.pulse()

    def cancel(self) -> None:
        """Cancels a registration again that is under way (the worker is stopping)."""
        if self._again is not None:
            self._again.cancel()

    def register_again(self, why: str) -> None:
        """Starts registering again, unless the worker is not running or already does."""
        if self._state.phase != Phase.RUNNING or (self._again is not None and not self._again.done()):
            return
        self._again = self._runtime.spawn(self._register_again(why))

    async def _register_again(self, why: str) -> None:
        state = self._state
        log.warning(
            "drover: worker %s registers again (%s); %d run(s) of incarnation %s keep running, "
            "their completions will be refused if the runs were placed elsewhere",
            state.worker_id,
            why,
            len(state.current_attempts()),
            state.incarnation,
        )
        try:
            await self.register()
        except RegistrationError as error:
            log.error("drover: registering again was refused: %s", error)
        except LinkClosed:
            pass

    async def check(self, code: str, payload: Mapping[str, Any]) -> None:
        """Handles an error that says the registration is over: confirm with the registry, then register again.

        The check avoids registering twice for one event: a pulse sent under the previous
        incarnation just before a registration earns a ``stale_incarnation`` that is
        already dealt with.
        """
        state = self._state
        details = error_details(payload)
        ours = state.incarnation
        if code == "stale_incarnation" and details.get("incarnation") not in (None, ours):
            return  # about a pulse of an earlier incarnation
        try:
            record: dict[str, Any] | None = await self._runtime.link.call(
                protocol.REGISTRY_GET,
                protocol.REGISTRY_GET,
                {"workerID": state.worker_id},
                expect=protocol.REGISTRY_WORKER,
                patience=max(state.interval * 2, 1.0),
            )
        except RequestRefused:
            record = None  # unknown_worker: the registry has no record of us
        except (DroverError, TimeoutError):
            record = {}  # cannot tell: trust the error
        if (
            record
            and record.get("incarnation") == ours
            and record.get("status") not in ("LOST", "OFFLINE")
            and state.ready.is_set()
        ):
            log.debug("drover: ignoring %s; the registry has incarnation %s live", code, ours)
            return
        if state.incarnation != ours:
            return  # registered again meanwhile
        self.register_again(code)
