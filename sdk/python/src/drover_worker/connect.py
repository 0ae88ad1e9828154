"""Credentials and TLS for the worker's NATS connection, and the name it connects under.

Every Drover program takes the same credentials, the way NATS tools do: arguments in code
win, then the ``DROVER_NATS_*`` variables, then the ``NATS_*`` ones (an empty value counts
as unset). :class:`NatsAuth` holds them; :meth:`NatsAuth.nats_options` turns them into
``nats.connect`` options, reading every file first, so that a bad setting is an error
before any connection attempt instead of a worker that retries forever.

A worker connects under its workerID (the connection name) and receives the replies to its
requests on ``_INBOX.<workerID>.>``: under the secured setup those and
``v1.worker.<workerID>.>`` are the only subjects it may subscribe.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import CredentialsError

#: A creds file (the user JWT and its nkey seed), as ``nats --creds``.
CREDS_VAR = "DROVER_NATS_CREDS"
#: An nkey seed: a path to a file holding it, or the seed itself (``SU...``).
NKEY_VAR = "DROVER_NATS_NKEY"
#: A token.
TOKEN_VAR = "DROVER_NATS_TOKEN"
#: A user name, with ``DROVER_NATS_PASSWORD``.
USER_VAR = "DROVER_NATS_USER"
#: The user's password.
PASSWORD_VAR = "DROVER_NATS_PASSWORD"
#: The CA certificate (PEM) that the server's certificate must chain to; turns TLS on.
TLS_CA_VAR = "DROVER_NATS_TLS_CA"
#: The client certificate (PEM) for mutual TLS, with ``DROVER_NATS_TLS_KEY``.
TLS_CERT_VAR = "DROVER_NATS_TLS_CERT"
#: The client certificate's private key (PEM).
TLS_KEY_VAR = "DROVER_NATS_TLS_KEY"

#: Each :class:`NatsAuth` field: its Drover variable, then the NATS tools' one.
ENV_VARS: dict[str, tuple[str, str]] = {
    "creds": (CREDS_VAR, "NATS_CREDS"),
    "nkey": (NKEY_VAR, "NATS_NKEY"),
    "token": (TOKEN_VAR, "NATS_TOKEN"),
    "user": (USER_VAR, "NATS_USER"),
    "password": (PASSWORD_VAR, "NATS_PASSWORD"),
    "tls_ca": (TLS_CA_VAR, "NATS_CA"),
    "tls_cert": (TLS_CERT_VAR, "NATS_CERT"),
    "tls_key": (TLS_KEY_VAR, "NATS_KEY"),
}

_SEED_PREFIX = "SU"  # a user nkey seed
_CREDS_MARKERS = ("-----BEGIN NATS USER JWT-----", "-----BEGIN USER NKEY SEED-----")


@dataclass(frozen=True)
class NatsAuth:
    """Credentials and TLS for one connection; every field is optional.

    ``sources`` says where each value came from (``"DROVER_NATS_NKEY"``, ``"the nkey
    argument"``), so that an error names what the user has to fix.
    """

    creds: str | None = None
    nkey: str | None = field(default=None, repr=False)  # may be the seed itself
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_arguments(cls, **values: str | Path | None) -> NatsAuth:
        """The values given in code (``None`` and ``""`` count as not given)."""
        given = {name: str(value) for name, value in values.items() if value not in (None, "")}
        return cls(**given, sources={name: f"the {name} argument" for name in given})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> NatsAuth:
        """The values of the ``DROVER_NATS_*`` variables, else of the ``NATS_*`` ones."""
        values: dict[str, str] = {}
        sources: dict[str, str] = {}
        for name, variables in ENV_VARS.items():
            for var in variables:
                if environ.get(var):
                    values[name], sources[name] = environ[var], var
                    break
        return cls(**values, sources=sources)

    def or_(self, fallback: NatsAuth) -> NatsAuth:
        """Field by field: this one's value where it has one, else ``fallback``'s."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in ENV_VARS:
            mine = getattr(self, name)
            chosen = self if mine is not None else fallback
            values[name] = getattr(chosen, name)
            if name in chosen.sources:
                sources[name] = chosen.sources[name]
        return NatsAuth(**values, sources=sources)

    def is_empty(self) -> bool:
        """Whether no credential and no TLS setting is given."""
        return all(getattr(self, name) is None for name in ENV_VARS)

    def _name(self, name: str) -> str:
        return self.sources.get(name, ENV_VARS[name][0])

    def nats_options(self) -> dict[str, Any]:
        """The ``nats.connect`` options for these settings, with every file read and checked.

        Raises :class:`~drover_worker.CredentialsError` for an unreadable file, a malformed
        seed or creds file, a certificate without its key (or the reverse), a password
        without a user.
        """
        options: dict[str, Any] = {}
        if self.creds is not None:
            text = self._read("creds")
            if not all(marker in text for marker in _CREDS_MARKERS):
                raise CredentialsError(f"{self._name('creds')}: {self.creds} is not a creds file (a user JWT and seed)")
            options["user_credentials"] = self.creds
        if self.nkey is not None:
            options["nkeys_seed_str"] = self._seed()
        if self.token is not None:
            options["token"] = self.token
        if self.password is not None and self.user is None:
            raise CredentialsError(f"{self._name('password')} is set without a user ({USER_VAR})")
        if self.user is not None:
            options["user"] = self.user
            if self.password is not None:
                options["password"] = self.password
        context = self._tls_context()
        if context is not None:
            options["tls"] = context
        return options

    def _read(self, name: str) -> str:
        path = getattr(self, name)
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise CredentialsError(f"{self._name(name)}: cannot read {path}: {reason}") from None

    def _seed(self) -> str:
        """The seed itself: the value when it looks like one, else the file it names."""
        assert self.nkey is not None
        value = self.nkey.strip()
        is_seed = value.startswith(_SEED_PREFIX) and "/" not in value
        seed = value if is_seed else self._read("nkey").strip()
        where = self._name("nkey") if is_seed else f"{self._name('nkey')} ({self.nkey})"
        try:
            import nkeys
        except ImportError:  # pragma: no cover - a dependency of the package
            raise CredentialsError("an nkey seed needs the nkeys package (pip install nkeys)") from None
        try:
            nkeys.from_seed(bytearray(seed.encode())).wipe()
        except Exception:
            raise CredentialsError(f"{where}: not a valid nkey seed") from None
        if not seed.startswith(_SEED_PREFIX):
            raise CredentialsError(f"{where}: not a user nkey seed (it must start with {_SEED_PREFIX})")
        return seed

    def _tls_context(self) -> ssl.SSLContext | None:
        """A context that verifies the server (against ``tls_ca`` if given) and, with a
        certificate and its key, proves the client; ``None`` when nothing asks for TLS."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CredentialsError(
                f"a client certificate needs its key and the key its certificate: "
                f"set both {self._name('tls_cert')} and {self._name('tls_key')}"
            )
        if self.tls_ca is None and self.tls_cert is None:
            return None
        for name in ("tls_ca", "tls_cert", "tls_key"):
            if getattr(self, name) is not None:
                self._read(name)  # unreadable: say which setting
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
        except ssl.SSLError as error:
            raise CredentialsError(f"{self._name('tls_ca')}: {self.tls_ca} is not a CA certificate: {error}") from None
        if self.tls_cert is not None:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except ssl.SSLError as error:
                raise CredentialsError(
                    f"{self._name('tls_cert')} / {self._name('tls_key')}: "
                    f"{self.tls_cert} and {self.tls_key} are not a certificate and its key: {error}"
                ) from None
        return context


def inbox_prefix(worker_id: str) -> str:
    """The prefix of the worker's reply subjects: ``_INBOX.<workerID>``."""
    return f"_INBOX.{worker_id}"


def identity_options(worker_id: str) -> dict[str, Any]:
    """The ``nats.connect`` options that name a worker's connection after it."""
    return {"name": worker_id, "inbox_prefix": inbox_prefix(worker_id)}
