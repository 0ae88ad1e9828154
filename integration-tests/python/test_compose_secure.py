"""``docker-compose.yml`` with ``docker-compose.secure.yml`` over it, as a user runs it.

Stand-in images (standin_images.py) and free ports, as in test_compose.py. The test brings the
secured stack up, waits for every healthcheck (NATS, ``drover-auth``, the four services and the
console, which connect with the services' key), sees the one-shot containers (``keys``,
``pool-credential``, ``demo-credential``, ``demo``) exit 0 and the demo's run SUCCEED on the
pooled example workers, which ``drover-auth`` admitted with the pool's credential. Then it shows
what a client needs: from the host, the CLI with only the CA is refused (mutual TLS), with the
CA and the client certificate but no credential it is refused by the auth callout, and with the
demo's credential it is admitted; inside, ``run --rm demo drover runs list`` lists the demo's
run. Finally ``down -v`` leaves nothing of the project. Skipped, saying why, where Docker is
absent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from compose_project import RUN_ID, SERVICES, ComposeProject, user_stack
from drover_harness import REPO, bin_dir, wait_for
from standin_images import docker_missing

ONE_SHOTS = ("keys", "pool-credential", "demo-credential", "demo")
POOLED = ("compose-example-1", "compose-example-2")

pytestmark = [
    pytest.mark.skipif(docker_missing() is not None, reason=f"container tests: {docker_missing()}"),
    # Image builds (a Debian base once per machine, about 40 s) and the stack's start-up.
    pytest.mark.timeout(600),
]


@pytest.fixture
def project(request):
    files = [REPO / "docker-compose.yml", REPO / "docker-compose.secure.yml"]
    yield from user_stack(request, files, "drover-compose-secure-test")


def host_drover(project: ComposeProject, *args: str, tls: dict[str, Path], nkey: Path | None = None):
    """The CLI on the host against the stack's published NATS port, with the TLS files given
    (``ca``, ``cert``, ``key``) and nothing else: no credential comes from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DROVER_NATS_", "NATS_"))}
    argv = [str(bin_dir() / "drover"), "--nats-url", f"tls://127.0.0.1:{project.ports['NATS_PORT']}"]
    for option, name in (("--tlsca", "ca"), ("--tlscert", "cert"), ("--tlskey", "key")):
        if name in tls:
            argv += [option, str(tls[name])]
    if nkey is not None:
        argv += ["--nkey", str(nkey)]
    return subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_secure_compose_admits_credentials_and_refuses_clients_without(project: ComposeProject, tmp_path: Path):
    # keys -> nats -> services and auth -> pool-credential -> demo-credential -> demo ->
    # example-worker: docker-compose 1.29 waits for each condition, so `up -d` returns after
    # the demo has been started.
    project.up()
    await project.wait_healthy(["nats", "auth", *SERVICES], timeout=120)
    for one_shot in ONE_SHOTS:
        assert await project.wait_exited(one_shot, timeout=60) == 0, project.logs(one_shot)

    demo_output = project.logs("demo")
    found = RUN_ID.search(demo_output)
    assert found, f"no run id in the demo's output:\n{demo_output}"
    run_id = found.group(0)

    # What a client on the host can have: the files of the `secrets` volume.
    secrets = {
        "ca": "/secrets/tls/ca.pem",
        "cert": "/secrets/tls/client.pem",
        "key": "/secrets/tls/client-key.pem",
        "demo": "/secrets/demo.nk",
    }
    files = {name: project.copy_out("keys", path, tmp_path / Path(path).name) for name, path in secrets.items()}
    tls = {name: files[name] for name in ("ca", "cert", "key")}

    # With the demo's credential the host is admitted (the server certificate holds
    # 127.0.0.1 too): the demo's run ends SUCCEEDED on one of the pooled example workers.
    def ended() -> dict | None:
        result = host_drover(project, "runs", "get", run_id, "--json", tls=tls, nkey=files["demo"])
        record = json.loads(result.stdout) if result.returncode == 0 else None
        return record if record and record["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    record = await wait_for(f"demo run {run_id} ended", ended, timeout=90)
    assert record["status"] == "SUCCEEDED", json.dumps(record, indent=2)
    assert record["workerID"] in POOLED, record

    # drover-auth admitted the pool and its two processes with the pool's credential.
    auth_log = project.logs("auth", tail=400)
    for connection in ("drover-pool-compose", *POOLED):
        assert re.search(rf'connection admitted credential=compose .*connection="{connection}"', auth_log), auth_log

    # Only the CA: the server demands a client certificate; refused at the TLS handshake.
    only_ca = host_drover(project, "runs", "list", tls={"ca": files["ca"]})
    assert only_ca.returncode != 0 and run_id not in only_ca.stdout, f"{only_ca.stdout}\n{only_ca.stderr}"

    # The CA and the client certificate, no credential: the auth callout refuses it.
    anonymous = host_drover(project, "runs", "list", tls=tls)
    assert anonymous.returncode != 0 and run_id not in anonymous.stdout, f"{anonymous.stdout}\n{anonymous.stderr}"
    auth_log = project.logs("auth", tail=400)
    assert re.search(r'connection refused .*connection="drover-cli"', auth_log), auth_log

    # Inside, with the demo's credential from the volume.
    inside = project.run("run", "--rm", "-T", "demo", "drover", "runs", "list", timeout=120)
    assert run_id in inside.stdout, f"{inside.stdout}\n{inside.stderr}"

    project.down()
    assert project.leftovers() == [], "compose down -v left these behind"
