"""``deploy/cluster/docker-compose.yml`` under chaos: the short form of ``scripts/cluster-chaos``.

Three NATS nodes in one JetStream cluster and two replicas of every Drover service, from
stand-in images (standin_images.py), on free ports. Runs are driven through it from the host
while the JetStream meta leader is killed (SIGKILL to its nats-server by the container's pid;
the restart policy starts it again) and a node is cut off the network for 15 s (30 s in the
long form, which people run by hand). Afterwards every accepted run must have exactly one
terminal state, announced with one outcome, the one its last attempt produced (how each is
checked: cluster_chaos.py), and ``down -v`` must leave nothing behind. About a minute and a
half on two cores; skipped, saying why, where Docker is absent.

DROVER_CHAOS_SEED picks another seed (the order of the faults, the pauses before them, the
node cut off, the runs' parameters).
"""

from __future__ import annotations

import os
import sys
import time

import pytest

import cluster_chaos as chaos
from drover_harness import request_failed
from standin_images import docker_missing

SEED = int(os.environ.get("DROVER_CHAOS_SEED", "11"))
SHORT = chaos.Settings(seed=SEED, duration=40.0, partition=15.0)

pytestmark = [
    pytest.mark.skipif(docker_missing() is not None, reason=f"container tests: {docker_missing()}"),
    # Image builds, a cluster's start-up (a minute on two cores), the load and the faults.
    pytest.mark.timeout(600),
]


@pytest.fixture
def cluster(request):
    project, ports = chaos.cluster_project(chaos.stand_ins())
    yield project, ports
    if request_failed(request):
        project.dump()
    project.down()


async def test_killing_and_cutting_off_nats_nodes_loses_no_run_and_ends_none_twice(cluster):
    project, ports = cluster
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"cluster-chaos +{time.monotonic() - started:6.1f}s {message}", file=sys.stderr, flush=True)

    report = await chaos.chaos(project, ports, SHORT, say)
    print("\n".join(report.lines()))
    assert not report.problems, "\n".join(report.lines())

    figures = report.figures
    assert figures["kills"] >= 1 and figures["partitions"] >= 1, figures["faults"]
    assert all(fault.rejoined and fault.healthy for fault in report.faults), figures["faults"]
    ended = figures["runs_succeeded"] + figures["runs_failed"] + figures["runs_cancelled"]
    assert figures["runs_accepted"] > 0 and ended == figures["runs_accepted"], figures

    project.down()
    assert project.leftovers() == [], "compose down -v left these behind"
