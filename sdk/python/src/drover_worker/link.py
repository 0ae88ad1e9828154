"""The worker's NATS connection: connection state, best-effort publishes, service requests
with retries, and at-least-once delivery of the directives JetStream captures.

Three ways to send, matching what the protocol asks of each message:

- :meth:`Link.publish`: core NATS, best effort (pulses, logs). Nothing is queued while the
  connection is down beyond what nats-py buffers itself.
- :meth:`Link.call`: a request to a Drover service (register, child requests, lookups),
  retried while nobody answers, the answer is late, or the service says ``unavailable``.
- :meth:`Link.deliver`: a request to JetStream (``ready``, ``starting``, ``completed``,
  ``terminating``), retried with backoff until a PubAck (``{"stream", "seq"}``) proves the
  message is stored, across NATS outages. Each carries a ``Nats-Msg-Id``, so a retry of a
  message that was in fact stored is dropped by the stream's duplicate window instead of
  being stored twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import nats
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient

from . import protocol, tracing
from .errors import DroverError, NotPermitted, RequestRefused

log = logging.getLogger("drover_worker")

T = TypeVar("T")

#: nats-py options the SDK sets unless the caller overrides them.
DEFAULT_NATS_OPTIONS: dict[str, Any] = {
    "max_reconnect_attempts": -1,  # reconnect forever: a worker outlives NATS restarts
    "reconnect_time_wait": 0.25,
    "connect_timeout": 2,
}

_CALLBACKS = ("disconnected_cb", "reconnected_cb", "error_cb", "closed_cb")

# Failures of one try that another try may cure.
_TRANSIENT = (
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.StaleConnectionError,
    nats_errors.UnexpectedEOF,
    asyncio.TimeoutError,
    OSError,
)


class LinkClosed(DroverError):
    """The connection was closed (the worker is stopping); nothing more can be sent."""


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling, capped at ``maximum`` seconds."""

    def __init__(self, initial: float = 0.05, maximum: float = 2.0):
        self.initial = initial
        self.maximum = maximum
        self.next = initial

    def delay(self) -> float:
        """The next delay (with up to 25 % jitter), and grows the one after."""
        current = self.next
        self.next = min(self.next * 2, self.maximum)
        return current * (0.75 + random.random() / 4)

    def reset(self) -> None:
        self.next = self.initial


async def _unless(task: "asyncio.Future[Any]", event: asyncio.Event) -> bool:
    """Waits for ``task``, unless ``event`` is set first: then cancels ``task`` and waits for it
    to end. True when ``task`` finished by itself (its result or exception is then ready)."""
    interrupted = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupted.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return not task.cancelled()


class Link:
    """One nats-py connection and the sending disciplines of the protocol."""

    def __init__(
        self,
        url: str | list[str],
        options: Mapping[str, Any] | None = None,
        *,
        request_timeout: float = 2.0,
        on_reconnected: Callable[[], Awaitable[None]] | None = None,
    ):
        self.url = url
        self.options = dict(options or {})
        self.request_timeout = request_timeout
        self.nc: NatsClient | None = None
        self.connected = asyncio.Event()
        self._reconnected = asyncio.Event()  # replaced at each reconnection, after being set
        self._closing = False
        self._on_reconnected = on_reconnected
        self.disconnects = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: The last permissions violation NATS reported, in its words.
        self.refusal: str | None = None
        self._refused = asyncio.Event()

    # ------------------------------------------------------------------- connection

    async def connect(self) -> NatsClient:
        """Connects (nats-py retries the first connection too, per ``max_reconnect_attempts``)."""
        options = {**DEFAULT_NATS_OPTIONS, **self.options}
        user = {name: options.pop(name, None) for name in _CALLBACKS}

        async def disconnected() -> None:
            self.connected.clear()
            if not self._closing:
                self.disconnects += 1
                log.warning("drover: disconnected from NATS; nats-py reconnects")
            if user["disconnected_cb"]:
                await user["disconnected_cb"]()

        async def reconnected() -> None:
            self.connected.set()
            event, self._reconnected = self._reconnected, asyncio.Event()
            event.set()
            log.info("drover: reconnected to NATS")
            if self._on_reconnected is not None:
                task = asyncio.ensure_future(self._on_reconnected())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if user["reconnected_cb"]:
                await user["reconnected_cb"]()

        async def error(err: Exception) -> None:
            if "permissions violation" in str(err).lower():
                # NATS tells the connection, not the request: a refused request only times out.
                self.refusal = str(err)
                self._refused.set()
                log.error("drover: NATS refused a publish or subscription: %s", err)
            else:
                log.debug("drover: NATS error: %r", err)
            if user["error_cb"]:
                await user["error_cb"](err)

        async def closed() -> None:
            self.connected.clear()
            if user["closed_cb"]:
                await user["closed_cb"]()

        servers = self.url if isinstance(self.url, list) else [self.url]
        self.nc = await nats.connect(
            servers=servers,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            closed_cb=closed,
            **options,
        )
        self.connected.set()
        return self.nc

    async def unless_refused(self, work: Awaitable[T], who: str) -> T:
        """Awaits ``work``, unless NATS reports a permissions violation first: then cancels it
        and raises :class:`NotPermitted` with what NATS said to ``who``."""
        task = asyncio.ensure_future(work)
        if await _unless(task, self._refused):
            return task.result()
        raise NotPermitted(
            f"NATS refused {who}: {self.refusal or 'permissions violation'}; "
            "is the credential in use this workerID's?"
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the client closed itself)."""
        return self._closing or self.nc is None or self.nc.is_closed

    async def close(self) -> None:
        """Flushes what is buffered (briefly) and closes the connection."""
        self._closing = True
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        try:
            if nc.is_connected:
                await nc.flush(timeout=1)
        except Exception:  # best effort; closing anyway
            pass
        try:
            await nc.close()
        except Exception as err:  # pragma: no cover - defensive
            log.debug("drover: error while closing NATS: %r", err)

    def _client(self) -> NatsClient:
        if self.closed:
            raise LinkClosed("the NATS connection is closed")
        assert self.nc is not None
        return self.nc

    # ------------------------------------------------------------------- sending

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        """Core NATS publish, best effort: ``False`` when the message could not be handed over."""
        if self.closed:
            return False
        try:
            await self._client().publish(subject, body, headers=dict(headers) if headers else None)
            return True
        except Exception as err:
            log.debug("drover: could not publish on %s: %r", subject, err)
            return False

    async def request_once(
        self, subject: str, body: bytes, *, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """One request; returns the reply body. Returns early (``TimeoutError``) on a reconnection,
        because a request in flight when the connection dropped will never be answered."""
        nc = self._client()
        reconnected = self._reconnected
        request = asyncio.ensure_future(
            nc.request(
                subject,
                body,
                timeout=timeout or self.request_timeout,
                headers=dict(headers) if headers else None,
            )
        )
        if not await _unless(request, reconnected):
            raise nats_errors.TimeoutError
        try:
            return request.result().data
        except (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError) as err:
            raise LinkClosed("the NATS connection is closed") from err

    async def _wait_connected(self) -> None:
        while not self.connected.is_set():
            if self.closed:
                raise LinkClosed("the NATS connection is closed")
            try:
                await asyncio.wait_for(self.connected.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        if self.closed:
            raise LinkClosed("the NATS connection is closed")

    async def call(
        self,
        subject: str,
        key: str,
        payload: Mapping[str, Any],
        *,
        expect: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        patience: float | None = None,
    ) -> dict[str, Any]:
        """Requests a Drover service and returns the payload of the ``expect`` reply.

        Retries (with backoff) while nobody answers, the answer does not come in time, the
        connection is down, or the service answers ``unavailable``, for at most ``patience``
        seconds (forever when ``None``). Raises :class:`RequestRefused` for any other
        ``v1.error``, and ``TimeoutError`` when patience runs out.
        """
        body = protocol.encode(key, payload)
        backoff = Backoff(0.05, 2.0)
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        last: BaseException | None = None
        while True:
            try:
                await self._wait_connected_until(deadline)
                data = await self.request_once(subject, body, timeout=timeout, headers=headers)
                reply_key, reply = protocol.decode(data)
                if reply_key == expect:
                    return reply
                if reply_key == protocol.ERROR:
                    refused = RequestRefused.from_payload(reply)
                    if refused.code not in protocol.RETRYABLE_CODES:
                        raise refused
                    last = refused
                else:
                    raise DroverError(f"{subject}: unexpected reply {reply_key}")
            except _TRANSIENT as err:
                last = err
            except ValueError as err:  # not an envelope
                raise DroverError(f"{subject}: unreadable reply: {err}") from err
            delay = backoff.delay()
            if deadline is not None and loop.time() + delay >= deadline:
                raise TimeoutError(f"{subject}: no answer within {patience}s (last: {last!r})")
            log.debug("drover: %s not answered (%r), retrying in %.2fs", subject, last, delay)
            await asyncio.sleep(delay)

    async def _wait_connected_until(self, deadline: float | None) -> None:
        if deadline is None:
            await self._wait_connected()
            return
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._wait_connected(), max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise nats_errors.ConnectionReconnectingError from None

    async def deliver(
        self,
        subject: str,
        key: str,
        payload: Mapping[str, Any],
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        """Sends a JetStream-captured directive and retries until its PubAck; returns the PubAck.

        Never gives up by itself: it ends with the PubAck, with :class:`LinkClosed` when the
        connection is closed, or when the calling task is cancelled. A JetStream error reply
        (``{"error": ...}``) is retried too: it means the message was not stored.
        """
        if body is None:
            body = protocol.encode(key, payload)
        all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
        backoff = Backoff(0.05, 2.0)
        tries = 0
        while True:
            tries += 1
            try:
                await self._wait_connected()
                data = await self.request_once(subject, body, headers=all_headers)
                reply = json.loads(data)
                if isinstance(reply, dict) and "stream" in reply and "seq" in reply:
                    if tries > 1:
                        log.info("drover: %s delivered after %d tries", key, tries)
                        tracing.log_event("info", f"{key} stored after {tries} tries", None)
                    return reply
                if isinstance(reply, dict) and reply.get("payloadKey") == protocol.ERROR:
                    # Not JetStream: a service refused it outright; sending it again will not help.
                    raise RequestRefused.from_payload(reply.get("payload") or {})
                log.warning("drover: %s not stored (%s), retrying", key, reply)
            except _TRANSIENT as err:
                log.debug("drover: %s not acknowledged (%r), retrying", key, err)
            except ValueError as err:
                log.warning("drover: unreadable PubAck for %s: %r", key, err)
            if tries == 1:
                # An event on the span the directive is sent in (the attempt's, for
                # starting and completed); the retries that follow are not.
                tracing.log_event("info", f"{key} not stored yet; retrying", None)
            await asyncio.sleep(backoff.delay())
