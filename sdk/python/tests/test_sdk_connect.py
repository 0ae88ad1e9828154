"""Credentials and TLS settings: arguments win over DROVER_NATS_*, which win over NATS_*;
bad settings are an error that names them, before any connection attempt."""

from __future__ import annotations

import ssl
from pathlib import Path

import nkeys
import pytest
import trustme

from drover_worker import CredentialsError, NatsAuth, Worker, connect
from secure_nats import new_user_seed


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.nk"
    path.write_text(f"\n  {new_user_seed()}  \n")
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("worker@drover.test")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variables in connect.ENV_VARS.values():
        for var in variables:
            monkeypatch.delenv(var, raising=False)
    for var in ("DROVER_WORKER_ID", "DROVER_POOL_ID", "DROVER_POOL_GROUP"):
        monkeypatch.delenv(var, raising=False)


def test_drover_variables_win_over_nats_ones_and_empty_counts_as_unset():
    env = {
        "DROVER_NATS_TOKEN": "drover-token",
        "NATS_TOKEN": "nats-token",
        "DROVER_NATS_USER": "",
        "NATS_USER": "nats-user",
        "NATS_PASSWORD": "nats-password",
        "DROVER_NATS_TLS_CA": "",
        "NATS_CA": "/nats/ca.pem",
        "NATS_CERT": "/nats/cert.pem",
        "NATS_KEY": "/nats/key.pem",
        "NATS_CREDS": "",
    }
    auth = NatsAuth.from_env(env)
    assert auth == NatsAuth(
        token="drover-token",
        user="nats-user",
        password="nats-password",
        tls_ca="/nats/ca.pem",
        tls_cert="/nats/cert.pem",
        tls_key="/nats/key.pem",
    )
    assert auth.sources["token"] == "DROVER_NATS_TOKEN"
    assert auth.sources["user"] == "NATS_USER"
    assert NatsAuth.from_env({}).is_empty()


def test_arguments_win_field_by_field():
    env = NatsAuth.from_env({"DROVER_NATS_TOKEN": "env-token", "DROVER_NATS_USER": "env-user"})
    auth = NatsAuth.from_arguments(token="code-token", nkey=None, creds="").or_(env)
    assert auth.token == "code-token" and auth.sources["token"] == "the token argument"
    assert auth.user == "env-user" and auth.sources["user"] == "DROVER_NATS_USER"
    assert auth.creds is None and auth.nkey is None


def test_secrets_stay_out_of_the_repr(seed_file: Path):
    auth = NatsAuth.from_arguments(token="s3cret", password="hunter2", nkey=seed_file.read_text().strip(), user="me")
    assert "s3cret" not in repr(auth) and "hunter2" not in repr(auth) and "SU" not in repr(auth)


def test_a_seed_is_read_from_its_file_or_taken_as_it_is(seed_file: Path):
    seed = seed_file.read_text().strip()
    assert NatsAuth(nkey=str(seed_file)).nats_options() == {"nkeys_seed_str": seed}
    assert NatsAuth(nkey=seed).nats_options() == {"nkeys_seed_str": seed}


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("DROVER_NATS_NKEY", "SUNOTASEED", "DROVER_NATS_NKEY: not a valid nkey seed"),
        ("NATS_NKEY", "/no/such/seed.nk", "NATS_NKEY: cannot read /no/such/seed.nk: No such file"),
        ("DROVER_NATS_CREDS", "/no/such.creds", "DROVER_NATS_CREDS: cannot read /no/such.creds"),
        ("DROVER_NATS_TLS_CA", "/no/ca.pem", "DROVER_NATS_TLS_CA: cannot read /no/ca.pem"),
        ("DROVER_NATS_PASSWORD", "pw", "DROVER_NATS_PASSWORD is set without a user"),
        ("DROVER_NATS_TLS_CERT", "/some/cert.pem", "set both DROVER_NATS_TLS_CERT and DROVER_NATS_TLS_KEY"),
        ("NATS_KEY", "/some/key.pem", "set both DROVER_NATS_TLS_CERT and NATS_KEY"),
    ],
)
def test_bad_settings_fail_when_the_worker_is_made(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(CredentialsError, match=message):
        Worker("w1")


def test_a_file_that_is_not_what_it_should_be(tmp_path: Path, pki: dict[str, Path]):
    not_a_seed = tmp_path / "seed.nk"
    not_a_seed.write_text("hello\n")
    with pytest.raises(CredentialsError, match=f"the nkey argument \\({not_a_seed}\\): not a valid nkey seed"):
        Worker("w1", nkey=not_a_seed)
    account_seed = tmp_path / "account.nk"
    account_seed.write_bytes(nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(CredentialsError, match="not a user nkey seed"):
        Worker("w1", nkey=account_seed)
    with pytest.raises(CredentialsError, match="is not a creds file"):
        Worker("w1", creds=not_a_seed)
    with pytest.raises(CredentialsError, match="not a CA certificate"):
        Worker("w1", tls_ca=not_a_seed)
    with pytest.raises(CredentialsError, match="not a certificate and its key"):
        Worker("w1", tls_ca=pki["ca"], tls_cert=pki["cert"], tls_key=pki["ca"])


def test_tls_settings_make_a_verifying_context_with_the_client_certificate(pki: dict[str, Path]):
    options = NatsAuth(tls_ca=str(pki["ca"]), tls_cert=str(pki["cert"]), tls_key=str(pki["key"])).nats_options()
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the given CA, not the system's
    assert NatsAuth().nats_options() == {}


def test_the_worker_connects_under_its_name_and_inbox(monkeypatch: pytest.MonkeyPatch, seed_file: Path):
    monkeypatch.setenv("DROVER_WORKER_ID", "pooled-1")  # the supervisor's workerID names it
    monkeypatch.setenv("DROVER_NATS_NKEY", str(seed_file))
    monkeypatch.setenv("DROVER_NATS_TOKEN", "from-env")
    worker = Worker("in-code", token="from-code")
    assert worker._connect_options == {
        "name": "pooled-1",
        "inbox_prefix": "_INBOX.pooled-1",
        "nkeys_seed_str": seed_file.read_text().strip(),
        "token": "from-code",
    }
    assert worker.auth.sources == {"nkey": "DROVER_NATS_NKEY", "token": "the token argument"}
