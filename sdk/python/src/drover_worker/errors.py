"""Exceptions of the SDK: the ones a routine raises (:class:`Fail`) and the ones it may catch."""

from __future__ import annotations

from typing import Any, Mapping


class DroverError(Exception):
    """Base class of every error the SDK raises."""


class ProtocolViolation(DroverError, ValueError):
    """An outgoing payload or an identifier breaks the protocol (a bug in the caller or the SDK)."""


class RequestRefused(DroverError):
    """A Drover service answered a request with a ``v1.error`` payload.

    ``code`` is the protocol's error code (``parent_not_running``, ``schema_violation``,
    ...), ``details`` its structured context.
    """

    def __init__(self, code: str, message: str, details: Any = None, in_reply_to: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.in_reply_to = in_reply_to

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "RequestRefused":
        """Builds the exception from a ``v1.error`` payload."""
        return cls(
            str(payload.get("code", "unknown")),
            str(payload.get("message", "")),
            payload.get("details"),
            payload.get("inReplyTo"),
        )


class RegistrationError(RequestRefused):
    """The registry refused the registration for a reason that retrying will not fix."""


class NotPermitted(DroverError):
    """NATS refused, before the worker was registered, a publish or subscription a worker
    needs: the credential in use is not this workerID's (docs/security.md, "Roles")."""


class Fail(DroverError):
    """Raise from a routine to fail the attempt with a chosen retryability and type.

    ``raise Fail("image is corrupt")`` ends the attempt with ``outcome: "failed"`` and
    ``error: {"message": "image is corrupt", "type": "Fail", "retryable": false}``: by
    default a :class:`Fail` is *not* retried, because raising it says the routine knows the
    input cannot succeed. Pass ``retryable=True`` to let the run be retried while it has
    retries left, and ``type=`` to report another machine-readable kind than the class name
    (a subclass reports its own class name). Any other exception is reported with its class
    name and ``retryable: true``.
    """

    def __init__(self, message: str, *, retryable: bool = False, type: str | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.error_type = type or self.__class__.__name__


class ChildFailed(DroverError):
    """A child run requested with :meth:`Context.run_child` ended without succeeding.

    ``status`` is its final run status (``FAILED`` or ``CANCELLED``), ``failure_reason`` the
    protocol's failureReason (``error``, ``retries_exhausted``, ``cancelled`` ...), and
    ``error`` the child's error object (``{"message", "type", "retryable"}``) when it has
    one. Left uncaught, it fails the parent's attempt as *not retryable*: children are
    memoized by ``localRunID``, so a retried parent would get the same failed child again.
    """

    retryable = False

    def __init__(
        self,
        *,
        run_id: str,
        local_run_id: str,
        routine_id: str,
        status: str | None,
        failure_reason: str | None,
        error: Mapping[str, Any] | None,
    ):
        detail = (error or {}).get("message") or failure_reason or status or "failed"
        super().__init__(f"child {routine_id} ({local_run_id}, run {run_id}) ended {status or 'FAILED'}: {detail}")
        self.run_id = run_id
        self.local_run_id = local_run_id
        self.routine_id = routine_id
        self.status = status
        self.failure_reason = failure_reason
        self.error = dict(error) if error else None


class CredentialsError(DroverError, ValueError):
    """A credential or TLS setting cannot be used (an unreadable file, a malformed seed, a
    certificate without its key); raised before any connection attempt."""
