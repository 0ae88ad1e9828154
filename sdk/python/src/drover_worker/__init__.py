"""Drover worker SDK for Python: run routines for Drover over NATS.

::

    from drover_worker import Worker, Context

    worker = Worker("resizer-1", nats_url="nats://127.0.0.1:4222", capacity=4)

    @worker.routine("images.resize")
    async def resize(ctx: Context, params: dict) -> dict:
        await ctx.log("info", "resizing", width=params["width"])
        return {"ok": True}

    worker.run_forever()        # or, in your own event loop: async with worker: ...

:mod:`drover_worker.testing` runs a routine without a broker, for unit tests.
The protocol this implements is docs/protocol.md of the Drover repository.
"""

from ._version import __version__
from .connect import NatsAuth
from .context import Context
from .errors import (
    ChildFailed,
    CredentialsError,
    DroverError,
    Fail,
    NotPermitted,
    ProtocolViolation,
    RegistrationError,
    RequestRefused,
)
from .logs import DroverLogHandler, current_context
from .runs import Routine
from .worker import Worker

__all__ = [
    "ChildFailed",
    "Context",
    "CredentialsError",
    "DroverError",
    "DroverLogHandler",
    "Fail",
    "NatsAuth",
    "NotPermitted",
    "ProtocolViolation",
    "RegistrationError",
    "RequestRefused",
    "Routine",
    "Worker",
    "current_context",
    "__version__",
]
