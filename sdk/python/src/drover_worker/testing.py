"""Running a routine without NATS or Drover, for the routine's own unit tests.

::

    from drover_worker.testing import ChildFailure, RoutineEnvironment

    async def test_resize():
        env = RoutineEnvironment(params={"url": "a.png", "width": 640}, attempt=1)
        env.on_child("images.thumbnail", lambda routine, params, local_id: params["url"] + "?thumb")
        outcome = await env.run(resize)
        assert outcome.succeeded and outcome.result == {"url": "a.png", "thumbnail": "a.png?thumb"}
        assert [line["message"] for line in env.logs] == ["resizing"]

The routine runs as a worker runs it (like Temporal's ``ActivityEnvironment``): with the
same :class:`~drover_worker.Context`, in its own task, through the same attempt code, so
exceptions map to failures, results are checked and encoded, and ``run_child`` builds and
checks its request exactly as on a worker. Only the :class:`~drover_worker.runtime.Runtime`
under the Context differs: :class:`RecordingRuntime` records log lines and directives
instead of publishing them, and answers child requests from what the test said.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from . import protocol, tracing
from .context import Context
from .runs import Attempt, Routine, execute, failure, failure_of
from .runtime import Runtime, log_line

__all__ = ["ChildAnswer", "ChildFailure", "ChildRequest", "Outcome", "RecordingRuntime", "RoutineEnvironment"]


@dataclass(frozen=True)
class ChildFailure:
    """An answer to a child request: the child ends without succeeding, and the parent's
    ``run_child`` raises :class:`~drover_worker.ChildFailed` with these values (the
    defaults are those of a child that raised ``Fail(message)``).

    ``ChildFailure("timed out", status="CANCELLED", failure_reason="max_exec_exceeded")``
    stands for a child that Drover cancelled."""

    message: str
    type: str = "Fail"
    retryable: bool = False
    status: str = "FAILED"
    failure_reason: str = "error"


#: What a test answers a child request with: the child's result, a :class:`ChildFailure`,
#: or a function ``(routine, params, local_id)`` (sync or async) that returns either. An
#: exception the function raises fails the child as it would fail a routine.
ChildAnswer = Any


@dataclass(frozen=True)
class ChildRequest:
    """A child request the routine made: its ``v1.routine.request_start`` payload and headers."""

    routine: str
    params: Any
    local_id: str
    spec: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the worker would report it.

    ``completed`` is the ``v1.routine.completed`` payload the worker would send
    (``runID, attempt, outcome, result?, error?``), or ``None`` when the attempt was
    cancelled: a worker sends nothing then, and ``cancel_reason`` says why.
    """

    completed: dict[str, Any] | None
    cancel_reason: str | None = None

    @property
    def outcome(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return "cancelled" if self.completed is None else str(self.completed["outcome"])

    @property
    def succeeded(self) -> bool:
        """Whether the routine returned a result."""
        return self.outcome == "succeeded"

    @property
    def failed(self) -> bool:
        """Whether the attempt failed (the routine raised, or returned something that is not JSON)."""
        return self.outcome == "failed"

    @property
    def cancelled(self) -> bool:
        """Whether the attempt was cancelled (no ``completed`` would be sent)."""
        return self.completed is None

    @property
    def result(self) -> Any:
        """The routine's result (``None`` unless it succeeded)."""
        return None if self.completed is None else self.completed.get("result")

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``error`` object of a failure: ``{"message", "type", "retryable"}``."""
        return None if self.completed is None else self.completed.get("error")


class RecordingRuntime(Runtime):
    """A :class:`~drover_worker.runtime.Runtime` with no broker.

    It records the ``v1.log`` lines (:attr:`logs`) and the ``starting``/``completed``
    directives (:attr:`sent`) as the payloads a worker would publish, and answers child
    requests from :meth:`on_child`. Like Drover, it memoizes children by (parent run,
    localRunID): asking for the same child again gets the same end without asking the test.
    """

    def __init__(self, worker_id: str = "test-worker", children: ChildAnswer | None = None):
        super().__init__(protocol.check_worker_id(worker_id))
        self.logs: list[dict[str, Any]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.child_requests: list[ChildRequest] = []
        self._answers: dict[str, ChildAnswer] = {}
        self._default_answer = children
        self._ends: dict[tuple[str, str], dict[str, Any]] = {}

    def on_child(self, routine: str, answer: ChildAnswer) -> None:
        """Answers requests for child routine ``routine`` with ``answer`` (see :data:`ChildAnswer`)."""
        self._answers[protocol.check_routine_id(routine)] = answer

    def completed(self, run_id: str, attempt: int) -> dict[str, Any] | None:
        """The ``completed`` payload sent for an attempt, if one was."""
        sent = [payload for key, payload in self.sent if key == protocol.COMPLETED]
        mine = [payload for payload in sent if (payload["runID"], payload["attempt"]) == (run_id, attempt)]
        return mine[-1] if mine else None

    async def log(
        self,
        level: str,
        message: str,
        /,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        self.log_nowait(level, message, run_id=run_id, fields=fields, at=at)

    def log_nowait(
        self,
        level: str,
        message: str,
        *,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        body = log_line(level, message, run_id, fields, at)  # the worker's own encoding and checks
        if body is not None:
            tracing.log_event(protocol.normalize_level(level), message, fields, run_id)
            self.logs.append(protocol.decode(body)[1])

    async def send_starting(self, run_id: str, attempt: int, headers: Mapping[str, str]) -> None:
        body = protocol.encode(protocol.STARTING, {"runID": run_id, "attempt": attempt})
        self.sent.append((protocol.STARTING, protocol.decode(body)[1]))

    async def send_completed(
        self, run_id: str, attempt: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        key, payload = protocol.decode(body)
        self.sent.append((key, payload))

    async def request_child(
        self, spec: dict[str, Any], headers: dict[str, str], *, parent_attempt: int
    ) -> dict[str, Any]:
        routine, local_id = spec["routineID"], spec["localRunID"]
        self.child_requests.append(ChildRequest(routine, spec.get("params"), local_id, dict(spec), dict(headers)))
        memo = (spec["parentRunID"], local_id)
        if memo not in self._ends:
            base = {"runID": f"child-run-{len(self._ends) + 1}", "localRunID": local_id}
            self._ends[memo] = {**base, **await self._answer(routine, spec.get("params"), local_id)}
        return dict(self._ends[memo])

    async def _answer(self, routine: str, params: Any, local_id: str) -> dict[str, Any]:
        """The outcome fields of a child's end, from the test's answer."""
        answer = self._answers.get(routine, self._default_answer)
        if answer is None:
            raise LookupError(f"no answer for child routine {routine}: use env.on_child({routine!r}, ...)")
        try:
            value = answer(routine, params, local_id) if callable(answer) else answer
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:  # the child routine raised: it failed as a routine would
            return {"outcome": "failed", "error": failure_of(error), "status": "FAILED", "failureReason": "error"}
        if isinstance(value, ChildFailure):
            return {
                "outcome": "failed",
                "error": failure(value.message, value.type, value.retryable),
                "status": value.status,
                "failureReason": value.failure_reason,
            }
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the answer for child routine {routine} is not JSON: {error}") from None
        return {"outcome": "succeeded", "result": value, "status": "SUCCEEDED"}


class RoutineEnvironment:
    """Runs routines as one attempt of one run, with no broker.

    The constructor's arguments are the assignment (``params``, ``env``, ``attempt``,
    ``run_id``, ``routine_id``, ``parent_run_id``, ``max_exec_time_ms``, trace context);
    they stay attributes, so a test can change ``attempt`` and run again to play a retry.
    ``children`` answers every child request that :meth:`on_child` does not.
    ``max_exec_time_ms`` is not enforced: :meth:`cancel` plays Drover's cancel.
    """

    def __init__(
        self,
        params: Any = None,
        *,
        env: Mapping[str, str] | None = None,
        attempt: int = 1,
        run_id: str = "test-run",
        routine_id: str = "test.routine",
        parent_run_id: str | None = None,
        max_exec_time_ms: int | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        worker_id: str = "test-worker",
        children: ChildAnswer | None = None,
    ):
        self.params = params
        self.env = protocol.check_string_map("env", env)
        self.attempt = attempt
        self.run_id = run_id
        self.routine_id = protocol.check_routine_id(routine_id)
        self.parent_run_id = parent_run_id
        self.max_exec_time_ms = max_exec_time_ms
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.runtime = RecordingRuntime(worker_id, children)
        self.context: Context | None = None
        """The Context of the latest run (``None`` before the first)."""
        self._attempt: Attempt | None = None
        self._cancel: str | None = None

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The ``v1.log`` payloads of every run so far: ``level, message, runID, fields?, timestamp``."""
        return self.runtime.logs

    @property
    def child_requests(self) -> list[ChildRequest]:
        """Every child request made so far, memoized ones included."""
        return self.runtime.child_requests

    def on_child(self, routine: str, answer: ChildAnswer) -> None:
        """Answers requests for child routine ``routine`` with ``answer`` (see :data:`ChildAnswer`)."""
        self.runtime.on_child(routine, answer)

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancels the running attempt as Drover's cancel does (before :meth:`run`: the next one)."""
        attempt = self._attempt
        if attempt is not None and attempt.task is not None and not attempt.task.done():
            attempt.drop(reason)
        else:
            self._cancel = reason

    async def run(self, routine: Routine) -> Outcome:
        """Runs ``routine`` (``async def routine(ctx, params)``) to its end and returns its :class:`Outcome`.

        Exceptions of the routine are not raised here: they are the failure in the outcome,
        as a worker would report them. Errors of the SDK (a bad log level, a child with no
        answer) are raised.
        """
        if not inspect.iscoroutinefunction(routine):
            raise TypeError("the routine must be an async function")
        if self._attempt is not None and self._attempt.task is not None and not self._attempt.task.done():
            raise RuntimeError("this environment is running a routine already")
        assignment: dict[str, Any] = {
            "runID": self.run_id,
            "attempt": self.attempt,
            "routineID": self.routine_id,
            "params": self.params,
            "env": dict(self.env),
            "parentRunID": self.parent_run_id,
            "maxExecTimeMs": self.max_exec_time_ms,
        }
        ctx = self.context = Context(
            self.runtime, assignment, traceparent=self.traceparent, tracestate=self.tracestate
        )
        attempt = self._attempt = Attempt(ctx, routine, incarnation=None)
        task = attempt.task = asyncio.ensure_future(execute(attempt))
        if self._cancel is not None:
            reason, self._cancel = self._cancel, None
            attempt.drop(reason)
        try:
            await task
        except asyncio.CancelledError:
            if not attempt.dropped:
                raise  # the test itself was cancelled
        if attempt.dropped:
            return Outcome(None, ctx.cancel_reason)
        return Outcome(self.runtime.completed(ctx.run_id, ctx.attempt))
