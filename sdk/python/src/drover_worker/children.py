"""Child runs (docs/protocol.md section 6): the request, matching forwarded ends, the result.

The scheduler forwards a child's ``starting`` and ``completed`` into the parent worker's
inbox with the child's ``runID`` and the parent's ``localRunID``, but without the parent's
runID. Two parents on one worker may use the same ``localRunID``, and the forwarded
completion of a memoized child can overtake the ``v1.routine.accepted`` reply. So:

- a waiter is registered under its ``localRunID`` *before* the request is sent;
- the reply tells the waiter its child's ``runID``; a completion is given to the waiters
  whose child it is;
- a completion that arrives while a waiter with that ``localRunID`` does not know its
  child's ``runID`` yet is kept until the reply comes.

Forwarded messages are core NATS, so one can be lost while the worker is disconnected.
Two safety nets cover that (both in :class:`~drover_worker.runtime.NatsRuntime`): after a
reconnection every waiting child is requested again (memoization makes that harmless, and
the scheduler then forwards an ended child's completion again), and a waiter that hears
nothing for ``child_poll_interval`` seconds reads the child's record with ``v1.run.get``.

Nothing here does I/O, so the same spec building and result mapping serve the NATS worker
and :mod:`drover_worker.testing`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

from . import protocol
from .errors import ChildFailed, ProtocolViolation

log = logging.getLogger("drover_worker")


class ChildWaiter:
    """One ``run_child`` call waiting for its child's end."""

    def __init__(self, spec: dict[str, Any], headers: dict[str, str], parent_attempt: int):
        self.spec = spec
        self.headers = headers
        self.parent_run_id: str = spec["parentRunID"]
        self.parent_attempt = parent_attempt  # a reconnection asks again only for attempts still held
        self.local_run_id: str = spec["localRunID"]
        self.routine_id: str = spec["routineID"]
        self.child_run_id: str | None = None
        self.child_worker_id: str | None = None
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def resolve(self, payload: Mapping[str, Any]) -> None:
        """Hands the child's end to the waiting ``run_child`` (the first end wins)."""
        if not self.future.done():
            self.future.set_result(dict(payload))


class ChildWaiters:
    """The waiters of one worker, indexed by ``localRunID``."""

    def __init__(self) -> None:
        self._by_local: dict[str, list[ChildWaiter]] = {}
        self._early: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, waiter: ChildWaiter) -> None:
        """Registers a waiter; done before its request goes out (see the module docs)."""
        self._by_local.setdefault(waiter.local_run_id, []).append(waiter)

    def remove(self, waiter: ChildWaiter) -> None:
        """Forgets a waiter, and any early completion kept for its ``localRunID`` once none is left."""
        waiters = self._by_local.get(waiter.local_run_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._by_local.pop(waiter.local_run_id, None)
            self._early.pop(waiter.local_run_id, None)

    def accepted(self, waiter: ChildWaiter, child_run_id: str) -> None:
        """The reply named the child: resolve at once if its completion came first."""
        waiter.child_run_id = child_run_id
        early = self._early.get(waiter.local_run_id, {}).get(child_run_id)
        if early is not None:
            waiter.resolve(early)

    def on_starting(self, payload: Mapping[str, Any]) -> None:
        """A forwarded ``v1.routine.starting`` of a child."""
        for waiter in self._by_local.get(payload.get("localRunID", ""), []):
            if waiter.child_run_id in (None, payload.get("runID")):
                waiter.child_worker_id = payload.get("workerID")
        log.debug("drover: child %s (%s) started on %s", payload.get("runID"), payload.get("localRunID"), payload.get("workerID"))

    def on_completed(self, payload: Mapping[str, Any]) -> None:
        """A forwarded ``v1.routine.completed`` of a child."""
        local, run = payload.get("localRunID"), payload.get("runID")
        if not isinstance(local, str) or not isinstance(run, str):
            log.warning("drover: forwarded child completion without runID/localRunID: %s", payload)
            return
        waiters = self._by_local.get(local, [])
        matched = False
        for waiter in waiters:
            if waiter.child_run_id == run:
                waiter.resolve(payload)
                matched = True
        if not matched and any(w.child_run_id is None for w in waiters):
            self._early.setdefault(local, {})[run] = dict(payload)

    def pending(self) -> list[ChildWaiter]:
        """Every waiter whose child has not ended yet."""
        return [w for waiters in self._by_local.values() for w in waiters if not w.future.done()]


def build_spec(parent_run_id: str, routine: str, params: Any, local_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``v1.routine.request_start`` payload of a child request (checked against the protocol)."""
    protocol.check_routine_id(routine)
    protocol.check_local_run_id(local_id)
    spec: dict[str, Any] = {"routineID": routine, "parentRunID": parent_run_id, "localRunID": local_id}
    if params is not None:
        spec["params"] = params
    for key, value in options.items():
        name = protocol.SPEC_ALIASES.get(key, key)
        if name not in protocol.SPEC_OPTIONS:
            raise ProtocolViolation(
                f"run_child: {key!r} is not a run spec field (use one of {', '.join(sorted(protocol.SPEC_OPTIONS))})"
            )
        if value is not None:
            spec[name] = value
    if "env" in spec:
        spec["env"] = protocol.check_string_map("env", spec["env"])
    protocol.check_payload(protocol.REQUEST_START, spec)
    return spec


def outcome_of_record(record: Mapping[str, Any], waiter: ChildWaiter) -> dict[str, Any]:
    """A forwarded-completion payload built from a terminal run record (``v1.run.get``)."""
    return {
        "runID": record.get("runID", waiter.child_run_id),
        "localRunID": waiter.local_run_id,
        "outcome": "succeeded" if record.get("status") == "SUCCEEDED" else "failed",
        "result": record.get("result"),
        "error": record.get("error"),
        "status": record.get("status"),
        "failureReason": record.get("failureReason"),
    }


def child_result(end: Mapping[str, Any], routine: str, local_id: str) -> Any:
    """The result of a child from its end (a forwarded completion); raises :class:`ChildFailed` if it did not succeed."""
    if end.get("outcome") == "succeeded":
        return end.get("result")
    raise ChildFailed(
        run_id=end.get("runID", ""),
        local_run_id=local_id,
        routine_id=routine,
        status=end.get("status"),
        failure_reason=end.get("failureReason"),
        error=end.get("error"),
    )
