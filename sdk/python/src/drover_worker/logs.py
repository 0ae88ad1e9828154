"""Shipping ``logging`` records as ``v1.log``: :class:`DroverLogHandler` and the level mapping.

Every routine runs with :data:`current_context` set to its :class:`~drover_worker.Context`
(asyncio copies context variables into tasks it creates, and ``asyncio.to_thread`` into
threads), so a ``logging`` call anywhere inside a routine knows which run it belongs to,
and which runtime ships its lines.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol

from .context import current_context
from .protocol import normalize_level

__all__ = ["DroverLogHandler", "LogTarget", "current_context", "level_name", "normalize_level"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_FORMATTER = logging.Formatter()

# Loggers never shipped: the SDK's own and the NATS client's (shipping them could loop).
_SKIPPED_LOGGERS = ("drover_worker", "nats")


class LogTarget(Protocol):
    """Where a handler ships lines logged outside routines: a :class:`~drover_worker.Worker`."""

    def log_nowait(
        self,
        level: str,
        message: str,
        *,
        run_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None: ...


def level_name(levelno: int) -> str:
    """Maps a ``logging`` level to a ``v1.log`` level (trace, debug, info, warn, error)."""
    if levelno < logging.DEBUG:
        return "trace"
    if levelno < logging.INFO:
        return "debug"
    if levelno < logging.WARNING:
        return "info"
    if levelno < logging.ERROR:
        return "warn"
    return "error"


class DroverLogHandler(logging.Handler):
    """A ``logging.Handler`` that publishes records as ``v1.log`` lines.

    Records logged while a routine runs carry that run's ``runID`` and go out on the
    subject of the worker running it. With ``runs_only=True`` (the default) records logged
    outside any routine are left alone; with ``runs_only=False`` they are shipped too,
    without a runID, through ``worker`` (which must then be given). Records of the SDK's own
    loggers (``drover_worker``) and of ``nats`` are never shipped.

    Sending is best effort and never blocks the caller: the line is handed to the worker's
    event loop, from any thread. Under :mod:`drover_worker.testing` the lines of the routine
    under test are captured in ``env.logs`` instead.

    ::

        logging.getLogger().addHandler(DroverLogHandler(worker))
    """

    def __init__(self, worker: LogTarget | None = None, level: int = logging.NOTSET, *, runs_only: bool = True):
        super().__init__(level)
        if worker is None and not runs_only:
            raise ValueError("runs_only=False needs a worker to ship lines logged outside routines")
        self.worker = worker
        self.runs_only = runs_only

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in _SKIPPED_LOGGERS:
            return
        ctx = current_context.get()
        target: LogTarget
        if ctx is not None and (self.worker is None or ctx.worker is self.worker):
            target, run_id = ctx.runtime, ctx.run_id
        elif self.runs_only or self.worker is None:
            return
        else:
            target, run_id = self.worker, None
        try:
            fields: dict[str, Any] = {"logger": record.name}
            for key, value in vars(record).items():
                if key not in _STANDARD_ATTRS and not key.startswith("_"):
                    fields[key] = value
            if record.exc_info:
                fields["exception"] = (self.formatter or _FORMATTER).formatException(record.exc_info)
            moment = datetime.fromtimestamp(record.created, timezone.utc)
            target.log_nowait(
                level_name(record.levelno), record.getMessage(), run_id=run_id, fields=fields, at=moment
            )
        except Exception:  # a log handler must never raise
            self.handleError(record)
