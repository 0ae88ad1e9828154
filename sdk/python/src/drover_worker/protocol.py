"""The wire side of the Drover worker protocol v1 (docs/protocol.md): subjects, envelopes,
identifier rules and a minimal check of every payload this SDK sends.

Nothing here does I/O. Field names are spelled exactly as the protocol spells them
(``workerID``, ``runID``, ``routineID``, ``localRunID``, ``parentRunID`` ...); the
:data:`OUTGOING` table lists, for each payload key the SDK sends, the fields it must carry
and the fields it may carry, and :func:`encode` refuses anything else, so a misspelled
field is caught here instead of being silently ignored by the services.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from .errors import ProtocolViolation

#: The largest message body the services accept by default (``DROVER_MAX_PAYLOAD_BYTES``).
MAX_PAYLOAD_BYTES = 262144

# Payload keys (the directive keys of docs/protocol.md section 3).
REGISTER = "v1.register"
REGISTERED = "v1.registered"
READY = "v1.ready"
GIVE_PULSE = "v1.heartbeat.give_pulse"
CHECK_PULSE = "v1.heartbeat.check_pulse"
LOG = "v1.log"
REQUEST_START = "v1.routine.request_start"
ACCEPTED = "v1.routine.accepted"
STARTING = "v1.routine.starting"
COMPLETED = "v1.routine.completed"
CANCEL = "v1.routine.cancel"
TERMINATING = "v1.terminating"
ERROR = "v1.error"
RUN_GET = "v1.run.get"
RUN_RECORD = "v1.run.record"
REGISTRY_GET = "v1.registry.get"
REGISTRY_WORKER = "v1.registry.worker"

# Worker statuses a worker may report in a pulse.
INITIALIZING = "INITIALIZING"
IDLE = "IDLE"
WORKING = "WORKING"
HANGING = "HANGING"
TERMINATING_STATUS = "TERMINATING"
REPORTABLE_STATUSES = frozenset({INITIALIZING, IDLE, WORKING, HANGING, TERMINATING_STATUS})

#: Run statuses that end a run.
TERMINAL_RUN_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

#: Error codes after which the worker must register again (docs/protocol.md 4.3).
REGISTER_AGAIN_CODES = frozenset({"unknown_worker", "not_registered", "stale_incarnation"})

#: Error codes of a request that may succeed when sent again later.
RETRYABLE_CODES = frozenset({"unavailable", "internal"})

#: Log levels of ``v1.log``.
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")

_WORKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ROUTINE_ID = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_CONTROL = re.compile("[\u0000-\u001f\u007f-\u009f]")

# Fields of a run spec a parent may pass to Context.run_child, besides routineID, params,
# parentRunID and localRunID, which the SDK fills in itself.
SPEC_OPTIONS = frozenset(
    {
        "env",
        "conditions",
        "maxWaitTimeMs",
        "maxExecTimeMs",
        "maxRetries",
        "retryBackoff",
        "idempotencyKey",
    }
)

#: Python spellings accepted by Context.run_child, mapped to the protocol's field names.
SPEC_ALIASES = {
    "max_wait_time_ms": "maxWaitTimeMs",
    "max_exec_time_ms": "maxExecTimeMs",
    "max_retries": "maxRetries",
    "retry_backoff": "retryBackoff",
    "idempotency_key": "idempotencyKey",
}

#: For each payload key the SDK sends: (required fields, allowed fields).
OUTGOING: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    REGISTER: (
        frozenset({"workerID", "routines"}),
        frozenset({"workerID", "routines", "labels", "capacity", "name", "sdk", "host", "pid"}),
    ),
    READY: (frozenset({"incarnation"}), frozenset({"incarnation"})),
    GIVE_PULSE: (
        frozenset({"incarnation", "status", "runs"}),
        frozenset({"incarnation", "status", "runs", "id"}),
    ),
    LOG: (
        frozenset({"level", "message"}),
        frozenset({"level", "message", "runID", "fields", "timestamp"}),
    ),
    REQUEST_START: (
        frozenset({"routineID", "parentRunID", "localRunID"}),
        frozenset({"routineID", "params", "parentRunID", "localRunID"}) | SPEC_OPTIONS,
    ),
    STARTING: (frozenset({"runID", "attempt"}), frozenset({"runID", "attempt"})),
    COMPLETED: (
        frozenset({"runID", "attempt", "outcome"}),
        frozenset({"runID", "attempt", "outcome", "result", "error"}),
    ),
    TERMINATING: (frozenset({"incarnation"}), frozenset({"incarnation", "reason"})),
    RUN_GET: (frozenset({"runID"}), frozenset({"runID"})),
    REGISTRY_GET: (frozenset({"workerID"}), frozenset({"workerID"})),
}

#: For each payload key that arrives in the worker's inbox (``v1.worker.<w>.*``): the fields
#: the SDK reads from it. Not enforced on receipt (unknown fields are ignored, as the protocol
#: asks of old peers); kept here so that a test can hold the SDK's spellings to the schemas.
INBOX_READS: dict[str, frozenset[str]] = {
    CHECK_PULSE: frozenset({"id"}),
    REQUEST_START: frozenset({"runID", "attempt", "routineID", "params", "env", "maxExecTimeMs", "parentRunID"}),
    CANCEL: frozenset({"runID", "attempt", "reason"}),
    STARTING: frozenset({"runID", "localRunID", "workerID"}),
    COMPLETED: frozenset({"runID", "localRunID", "outcome", "result", "error", "status", "failureReason"}),
    ERROR: frozenset({"code", "message", "details", "inReplyTo"}),
}

#: For each reply the SDK waits for: the fields it reads from it (see :data:`INBOX_READS`).
REPLY_READS: dict[str, frozenset[str]] = {
    REGISTERED: frozenset({"incarnation", "heartbeatIntervalMs", "lostAfterMs"}),
    ACCEPTED: frozenset({"runID"}),
    RUN_RECORD: frozenset({"runID", "status", "result", "error", "failureReason"}),
    REGISTRY_WORKER: frozenset({"incarnation", "status"}),
    ERROR: frozenset({"code", "message", "details", "inReplyTo"}),
}


# ---------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------


def worker_subject(key: str, worker_id: str) -> str:
    """The subject a worker publishes ``key`` on: ``v1.routine.completed`` -> ``v1.routine.completed.<w>``."""
    return f"{key}.{worker_id}"


def inbox(worker_id: str) -> str:
    """The worker's inbox wildcard, ``v1.worker.<w>.>``."""
    return f"v1.worker.{worker_id}.>"


def inbox_key(subject: str, worker_id: str) -> str | None:
    """The payload key of a message in the inbox (``v1.worker.w1.routine.cancel`` -> ``v1.routine.cancel``)."""
    prefix = f"v1.worker.{worker_id}."
    if not subject.startswith(prefix):
        return None
    return "v1." + subject[len(prefix) :]


# ---------------------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------------------


def check_worker_id(worker_id: str) -> str:
    """Returns ``worker_id`` if it is a valid workerID (``[A-Za-z0-9_-]{1,64}``), else raises."""
    if not isinstance(worker_id, str) or not _WORKER_ID.match(worker_id):
        raise ProtocolViolation(f"invalid workerID {worker_id!r}: must match [A-Za-z0-9_-]{{1,64}}")
    return worker_id


def check_routine_id(routine_id: str) -> str:
    """Returns ``routine_id`` if it is a valid routineID (dot-separated parts, at most 128 characters)."""
    if not isinstance(routine_id, str) or len(routine_id) > 128 or not _ROUTINE_ID.match(routine_id):
        raise ProtocolViolation(
            f"invalid routineID {routine_id!r}: dot-separated parts of [A-Za-z0-9_-]+, at most 128 characters"
        )
    return routine_id


def check_local_run_id(local_run_id: str) -> str:
    """Returns ``local_run_id`` if it is valid: 1 to 256 characters, no control characters."""
    if (
        not isinstance(local_run_id, str)
        or not 1 <= len(local_run_id) <= 256
        or _CONTROL.search(local_run_id)
    ):
        raise ProtocolViolation(
            f"invalid localRunID {local_run_id!r}: 1 to 256 characters, no control characters"
        )
    return local_run_id


def check_string_map(name: str, value: Mapping[str, str] | None) -> dict[str, str]:
    """Returns a copy of a string-to-string map (labels, env), or raises."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProtocolViolation(f"{name} must map strings to strings, got {value!r}")
    return dict(value)


def normalize_level(level: str) -> str:
    """A ``v1.log`` level: the protocol's levels plus ``warning``, ``critical`` and ``fatal``; raises on others."""
    value = level.lower()
    value = {"warning": "warn", "critical": "error", "fatal": "error"}.get(value, value)
    if value not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    return value


# ---------------------------------------------------------------------------------------
# Envelopes
# ---------------------------------------------------------------------------------------


def check_payload(key: str, payload: Mapping[str, Any]) -> None:
    """Checks an outgoing payload against :data:`OUTGOING`: required fields present, no unknown field."""
    spec = OUTGOING.get(key)
    if spec is None:
        raise ProtocolViolation(f"the SDK does not send {key}")
    required, allowed = spec
    missing = required - payload.keys()
    if missing:
        raise ProtocolViolation(f"{key}: missing {', '.join(sorted(missing))}")
    unknown = payload.keys() - allowed
    if unknown:
        raise ProtocolViolation(f"{key}: unknown field(s) {', '.join(sorted(unknown))}")


def encode(key: str, payload: Mapping[str, Any], *, check: bool = True) -> bytes:
    """The envelope ``{"payloadKey": key, "payload": payload}`` as UTF-8 JSON.

    Raises :class:`ProtocolViolation` when the payload breaks :data:`OUTGOING`, is not JSON
    or is larger than :data:`MAX_PAYLOAD_BYTES`.
    """
    if check:
        check_payload(key, payload)
    try:
        body = json.dumps(
            {"payloadKey": key, "payload": payload},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ProtocolViolation(f"{key}: payload is not JSON: {error}") from error
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ProtocolViolation(f"{key}: message is {len(body)} bytes, over the {MAX_PAYLOAD_BYTES} limit")
    return body


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """``(payloadKey, payload)`` of an envelope; raises ``ValueError`` when it is not one."""
    body = json.loads(data)
    if not isinstance(body, dict) or not isinstance(body.get("payloadKey"), str):
        raise ValueError("not a Drover envelope")
    payload = body.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValueError("the payload is not an object")
    return body["payloadKey"], payload


def timestamp(moment: datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, as Drover writes them."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
