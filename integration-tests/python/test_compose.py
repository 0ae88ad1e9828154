"""``docker-compose.yml`` as a user runs it, with stand-in images and no pull.

The stand-ins (standin_images.py) replace the public images through the variables the compose
file offers (DROVER_IMAGE, NATS_IMAGE, JAEGER_IMAGE); every published port is moved to a free
one. The test brings the stack up, waits for every healthcheck (the console's included), sees
the console's HTTP API answer on its published port, sees the demo's run SUCCEED on the example
workers that `drover pool` runs and its trace reach the Jaeger stand-in, uses the CLI from the
host, crashes the scheduler with SIGKILL and sees it restarted and the next run succeed, then
takes everything down and checks that nothing of the project is left. Skipped, saying why,
where Docker is absent.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from compose_project import RUN_ID, SERVICES, ComposeProject, user_stack
from drover_harness import REPO, bin_dir, wait_for, wait_until
from otlp_receiver import OtlpReceiver
from standin_images import docker_missing, received_requests


pytestmark = [
    pytest.mark.skipif(docker_missing() is not None, reason=f"container tests: {docker_missing()}"),
    # Image builds (a Debian base once per machine, about 40 s) and the stack's start-up.
    pytest.mark.timeout(600),
]


@pytest.fixture
def project(request):
    yield from user_stack(request, [REPO / "docker-compose.yml"], "drover-compose-test")


def drover(project: ComposeProject, *args: str) -> subprocess.CompletedProcess:
    """The CLI on the host, against the stack's NATS."""
    url = f"nats://127.0.0.1:{project.ports['NATS_PORT']}"
    return subprocess.run(
        [str(bin_dir() / "drover"), "--nats-url", url, *args], capture_output=True, text=True, timeout=120
    )


def openapi(project: ComposeProject) -> dict | None:
    """The console's OpenAPI document, from the host through its published port."""
    url = f"http://127.0.0.1:{project.ports['DROVER_CONSOLE_PORT']}/api/v1/openapi.json"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read()) if response.status == 200 else None


def run_record(project: ComposeProject, run_id: str) -> dict | None:
    result = drover(project, "runs", "get", run_id, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else None


async def test_compose_up_runs_the_demo_survives_a_crash_and_leaves_nothing(project: ComposeProject):
    # docker-compose 1.29 starts each service once what it depends on is healthy (or, for
    # the example worker, once the demo has exited 0), so `up -d` returns after the demo.
    project.up()
    await project.wait_healthy(["nats", *SERVICES], timeout=120)
    assert await project.wait_exited("demo", timeout=60) == 0, project.logs("demo")

    # The console is healthy and its HTTP API answers on its port on the host's loopback.
    assert project.health("console") == "healthy", project.health_log("console")
    document = await wait_for("the console's OpenAPI document", lambda: openapi(project), timeout=30)
    assert "openapi" in document, document

    # The demo printed its run; the example worker runs it to SUCCEEDED.
    demo_output = project.logs("demo")
    found = RUN_ID.search(demo_output)
    assert found, f"no run id in the demo's output:\n{demo_output}"
    run_id = found.group(0)
    record = await wait_for(
        f"demo run {run_id} ended",
        lambda: (r := run_record(project, run_id)) and r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and r,
        timeout=90,
    )
    assert record["status"] == "SUCCEEDED", json.dumps(record, indent=2)

    listed = drover(project, "runs", "list")
    assert listed.returncode == 0 and run_id in listed.stdout, f"{listed.stdout}\n{listed.stderr}"

    # The example workers run under `drover pool` (deploy/pool/example.toml): two processes,
    # registered under the pool's workerIDs with its labels.
    def pooled() -> list[dict]:
        result = drover(project, "workers", "list", "--json", "--label", "pool=compose")
        workers = json.loads(result.stdout) if result.returncode == 0 else []
        return sorted((w for w in workers if w["status"] in ("IDLE", "WORKING")), key=lambda w: w["workerID"])

    workers = await wait_for("two pooled example workers", lambda: w if len(w := pooled()) == 2 else None, timeout=60)
    assert [w["workerID"] for w in workers] == ["compose-example-1", "compose-example-2"], workers
    assert all(w["labels"].get("pool") == "compose" and w["labels"].get("group") == "example" for w in workers), workers
    status = drover(project, "pool", "status", "compose", "--json")
    assert status.returncode == 0, f"{status.stdout}\n{status.stderr}\n{project.logs('example-worker')}"
    [group] = json.loads(status.stdout)["groups"]
    assert (group["name"], group["min"], group["max"], group["target"]) == ("example", 1, 8, 2), group

    # Its trace reached the Jaeger stand-in, with the CLI's, the scheduler's and the worker's spans.
    sink = f"http://127.0.0.1:{project.ports['JAEGER_UI_PORT']}/received"

    def services_in_trace() -> set[str]:
        receiver = OtlpReceiver()
        for content_type, body in received_requests(sink):
            receiver.take(body, content_type)
        traces = receiver.traces_with(lambda s: s.attr("drover.run_id") == run_id)
        return {s.service for t in traces for s in receiver.spans(t)}

    wanted = {"drover-cli", "drover-scheduler", "drover-example-worker"}
    await wait_until(f"spans of {sorted(wanted)} in the demo's trace", lambda: wanted <= services_in_trace(), 60)

    # A crash: SIGKILL the scheduler's process; the restart policy brings it back.
    restarts = project.state("scheduler")["RestartCount"]
    project.crash("scheduler")
    await wait_until(
        "the scheduler restarted", lambda: project.state("scheduler")["RestartCount"] > restarts, timeout=60
    )
    await project.wait_healthy(["scheduler"], timeout=90)
    greeted = drover(project, "submit", "demo.greet", "--params", '{"name":"compose"}', "--wait", "--json")
    assert greeted.returncode == 0, f"{greeted.stdout}\n{greeted.stderr}\n{project.logs('scheduler')}"
    assert "hello, compose" in greeted.stdout, greeted.stdout

    project.down()
    assert project.leftovers() == [], "compose down -v left these behind"
