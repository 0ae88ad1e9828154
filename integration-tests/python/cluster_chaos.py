"""The chaos check of ``deploy/cluster``: NATS nodes killed and cut off under load, nothing lost.

``scripts/cluster-chaos`` runs it by hand and test_cluster.py runs a short form. The cluster
compose file is brought up with stand-in images (standin_images.py) as the project
``drover-cluster-test-<random>`` on free ports; once every healthcheck passes, runs are
driven through it from the host:

- submitters send ``chaos.work`` runs, and some ``demo.greet`` runs for the example worker
  in its container, through a NATS client that knows all three nodes. Each run has an
  idempotency key and is sent again until a runID comes back, so an outage delays a
  submission but never drops one; every runID that comes back is recorded;
- two Python SDK workers on the host run ``chaos.work`` and record every execution they
  start and finish, with its runID and attempt; the run's result names them too.

Meanwhile, in an order and after pauses drawn from the seed (:func:`plan`), it

- kills the JetStream meta leader: SIGKILL to its nats-server by the container's pid (not
  ``docker kill``, which the restart policy takes for a manual stop), sees the restart policy
  start it again, and waits until the node has rejoined: its /healthz is ok (JetStream in
  contact with the meta leader, its replicas current) and the meta leader counts it current;
- cuts a node off the network for ``partition`` seconds (``docker network disconnect``),
  connects it again with its aliases, and waits until it has rejoined.

Then it drains (waits until every accepted run is terminal) and checks DESIGN.md §6.3
(:meth:`Chaos.check`): every accepted run has a record with exactly one terminal transition,
and the record does not change afterwards; no run was announced on ``v1.run.events.*`` with
two outcomes; a succeeded run's result is what its last attempt returned; every run a worker
executed is the one its submitter was given. Runs executed more than once (allowed after a
fault, as long as they have one outcome) are counted. :class:`Report` holds the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import nats
from nats.aio.client import Client as NatsClient

from compose_project import ComposeProject
from drover_harness import REPO, free_port, http_get, patient, wait_for, wait_until
from standin_images import build_drover, ensure_base, ensure_nats

# The SDK of this checkout, not whichever one the venv has installed.
sys.path.insert(0, str(REPO / "sdk" / "python" / "src"))
from drover_worker import Context, Worker  # noqa: E402

COMPOSE_FILE = REPO / "deploy" / "cluster" / "docker-compose.yml"
PROJECT_PREFIX = "drover-cluster-test"
#: A tag of its own, which another test's build of the Drover stand-in cannot move.
DROVER_TAG = "drover-standin/drover:cluster-test"
NODES = ("nats-1", "nats-2", "nats-3")
SERVICES = tuple(f"{s}-{i}" for s in ("registry", "heartbeat-monitor", "scheduler", "log-collector") for i in (1, 2))
CLIENT_PORT = {"nats-1": "NATS_PORT", "nats-2": "NATS_2_PORT", "nats-3": "NATS_3_PORT"}
MONITOR_PORT = {"nats-1": "NATS_MONITOR_PORT", "nats-2": "NATS_2_MONITOR_PORT", "nats-3": "NATS_3_MONITOR_PORT"}
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
WORK = "chaos.work"  # run by the host workers, which record every execution
GREET = "demo.greet"  # run by the example worker in its container

# Timeouts in seconds of waits on conditions (scaled by DROVER_TEST_PATIENCE).
UP_TIMEOUT = 180  # every healthcheck after `up`
WARM_UP_TIMEOUT = 120  # a run of each routine succeeded
RESTART_TIMEOUT = 60  # the restart policy starts a killed node again
REJOIN_TIMEOUT = 120  # a node is back: healthy, caught up and current
HEALTHY_TIMEOUT = 120  # every container's healthcheck says healthy again
ACCEPT_TIMEOUT = 120  # one submission, sent again and again, until a runID comes back
DRAIN_TIMEOUT = 120  # every accepted run is terminal once the load stops
REQUEST_TIMEOUT = 5.0  # one request
SETTLE = 3.0  # after the drain: a window in which no ended run may change

Say = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    seed: int
    duration: float = 120.0  # seconds of load; the faults happen within it (or it waits for them)
    partition: float = 30.0  # how long a node stays cut off
    rate: float = 8.0  # submissions per second, all submitters together
    submitters: int = 4
    greet_share: float = 0.2  # the share of runs for the example worker


@dataclass
class Submission:
    index: int
    routine: str
    params: dict[str, Any]
    sent: float
    tries: int = 0
    run_id: Optional[str] = None
    accepted: Optional[float] = None
    refused: Optional[str] = None
    misses: list[tuple[float, str]] = field(default_factory=list)  # when and why a try got no runID


@dataclass
class Execution:
    run_id: str
    attempt: int
    worker: str
    index: int
    began: float
    ended: Optional[float] = None


@dataclass
class Fault:
    kind: str  # "kill" (the meta leader) or "partition"
    node: str = ""
    pause: float = 0.0  # before it began, drawn from the seed
    leader: str = ""  # the meta leader when it began
    began: float = 0.0
    restarted: Optional[float] = None  # kill: the restart policy started the node again
    healed: Optional[float] = None  # partition: the node was connected again
    rejoined: Optional[float] = None
    healthy: Optional[float] = None  # every container healthy again
    new_leader: str = ""
    first_success: Optional[float] = None  # a run accepted after it began ended SUCCEEDED

    def line(self, started: float, reported: bool = True) -> str:
        """What happened, in seconds after it began (``started``: the load's start); with the
        first success after it once the runs' records are in (``reported``)."""

        def since(moment: Optional[float], start: Optional[float] = None) -> str:
            start = self.began if start is None else start
            return "never" if moment is None or not start else f"+{moment - start:.1f}s"

        if self.kind == "kill":
            story = (
                f"kill {self.node} (meta leader): restarted {since(self.restarted)}, "
                f"rejoined {since(self.rejoined)}, all healthy {since(self.healthy)}"
            )
        else:
            role = "the meta leader" if self.node == self.leader else f"meta leader {self.leader or '?'}"
            story = (
                f"partition {self.node} ({role}) for {(self.healed or self.began) - self.began:.0f}s: "
                f"after the heal, rejoined {since(self.rejoined, self.healed)}, "
                f"all healthy {since(self.healthy, self.healed)}"
            )
        success = f"; first run accepted after it began succeeded {since(self.first_success)}" if reported else ""
        return f"at +{self.began - started:.1f}s {story}{success}; meta leader now {self.new_leader or '?'}"


def plan(settings: Settings) -> list[Fault]:
    """The faults in order: one of each kind in an order drawn from the seed, then more while
    the duration leaves room; each with the pause before it, and the node to cut off (a kill
    takes whichever node leads when it comes)."""
    rng = random.Random(settings.seed)
    cost = {"kill": 20.0, "partition": settings.partition + 20.0}
    kinds = ["kill", "partition"]
    rng.shuffle(kinds)
    faults: list[Fault] = []
    spent = 0.0
    while True:
        kind = kinds[len(faults)] if len(faults) < 2 else rng.choice(("kill", "partition"))
        pause = rng.uniform(3.0, 8.0)
        if len(faults) >= 2 and spent + pause + cost[kind] > settings.duration:
            return faults
        faults.append(Fault(kind, node=rng.choice(NODES) if kind == "partition" else "", pause=pause))
        spent += pause + cost[kind]


def envelope(key: str, payload: Any) -> bytes:
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def pace(seconds: float) -> None:
    """A pause the plan asks for (the load's rate, the gap before a fault, the rest of the
    duration): time passing on purpose, not a wait on a condition."""
    await asyncio.sleep(max(seconds, 0.0))


async def hold_cut(seconds: float) -> None:
    """The partition itself: the node stays cut off this long, whatever happens meanwhile."""
    await asyncio.sleep(seconds)


async def hold_settled(seconds: float) -> None:
    """A window in which nothing may happen: an ended run's record must not change in it."""
    await asyncio.sleep(patient(seconds))


class Chaos:
    """One chaos check of a cluster project that is up and healthy."""

    def __init__(self, project: ComposeProject, ports: dict[str, int], settings: Settings, say: Optional[Say] = None):
        self.project = project
        self.ports = ports
        self.settings = settings
        self.say = say or (lambda message: None)
        self.submissions: dict[int, Submission] = {}
        self.by_run: dict[str, Submission] = {}
        self.executions: list[Execution] = []
        self.announced: dict[str, set[tuple[str, str]]] = defaultdict(set)  # terminal (status, result) events
        self.faults: list[Fault] = []
        self.problems: list[str] = []
        self.ended: dict[str, dict[str, Any]] = {}  # each run's record as it was when the drain saw it end
        self.final: dict[str, dict[str, Any]] = {}  # and after the settling window
        self.unfinished: list[str] = []  # accepted runs the drain gave up on
        self.stop_load = asyncio.Event()
        self.started = self.load_stopped = self.drained = 0.0

    # ------------------------------------------------------------------ the cluster

    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.ports[CLIENT_PORT[node]]}" for node in NODES]

    async def monitor(self, node: str, path: str) -> tuple[int, str]:
        return await http_get("127.0.0.1", self.ports[MONITOR_PORT[node]], path, timeout=2.0)

    async def meta_leader(self) -> Optional[str]:
        """The JetStream meta leader that most reachable nodes name, if it says so itself."""
        named: Counter[str] = Counter()
        for node in NODES:
            try:
                status, body = await self.monitor(node, "/jsz")
                leader = json.loads(body).get("meta_cluster", {}).get("leader") if status == 200 else None
            except (OSError, asyncio.TimeoutError, ValueError, IndexError):
                leader = None
            if leader in NODES:
                named[leader] += 1
        for leader, _ in named.most_common(1):
            try:
                status, _ = await self.monitor(leader, "/jsz?leader-only=true")
            except (OSError, asyncio.TimeoutError, ValueError, IndexError):
                return None
            return leader if status == 200 else None
        return None

    async def rejoined(self, node: str) -> bool:
        """The node's /healthz is ok (JetStream up, in contact with the meta leader, its streams
        and consumers current) and the meta leader counts it current."""
        status, _ = await self.monitor(node, "/healthz")
        leader = await self.meta_leader()
        if status != 200 or leader is None:
            return False
        if leader == node:
            return True
        _, body = await self.monitor(leader, "/jsz")
        replicas = json.loads(body).get("meta_cluster", {}).get("replicas", [])
        return any(r.get("name") == node and r.get("current") and not r.get("offline") for r in replicas)

    async def all_healthy(self) -> bool:
        healths = await asyncio.to_thread(self.project.healths, (*NODES, *SERVICES))
        return all(health == "healthy" for health in healths.values())

    async def wait_rejoined(self, fault: Fault) -> None:
        await wait_until(f"{fault.node} rejoined the cluster", lambda: self.rejoined(fault.node), REJOIN_TIMEOUT)
        fault.rejoined = time.time()
        await wait_until("every container healthy", self.all_healthy, HEALTHY_TIMEOUT)
        fault.healthy = time.time()
        fault.new_leader = await self.meta_leader() or ""

    async def kill_leader(self, fault: Fault) -> None:
        leader = await wait_for("a JetStream meta leader", self.meta_leader, REJOIN_TIMEOUT)
        fault.node = fault.leader = leader
        restarts = (await asyncio.to_thread(self.project.state, leader))["RestartCount"]
        fault.began = time.time()
        pid = await asyncio.to_thread(self.project.crash, leader)
        self.say(f"killed {leader}'s nats-server (the meta leader; pid {pid})")
        await wait_until(
            f"{leader} started again by its restart policy",
            lambda: asyncio.to_thread(lambda: self.project.state(leader)["RestartCount"] > restarts),
            RESTART_TIMEOUT,
        )
        fault.restarted = time.time()
        await self.wait_rejoined(fault)

    async def cut_off(self, fault: Fault) -> None:
        fault.leader = await self.meta_leader() or ""
        fault.began = time.time()
        cut = await asyncio.to_thread(self.project.disconnect, fault.node)
        self.say(f"cut {fault.node} off for {self.settings.partition:.0f}s (meta leader: {fault.leader})")
        try:
            await hold_cut(self.settings.partition)
        finally:
            await asyncio.to_thread(self.project.reconnect, fault.node, cut)
        fault.healed = time.time()
        self.say(f"connected {fault.node} again")
        await self.wait_rejoined(fault)

    async def run_faults(self, faults: list[Fault]) -> None:
        for fault in faults:
            await pace(fault.pause)
            self.faults.append(fault)
            if fault.kind == "kill":
                await self.kill_leader(fault)
            else:
                await self.cut_off(fault)
            self.say(fault.line(self.started, reported=False))

    # ------------------------------------------------------------------ the load

    async def connect(self) -> NatsClient:
        async def quiet(error: Exception) -> None:
            pass

        return await nats.connect(
            servers=self.urls(),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=quiet,
        )

    async def on_event(self, message) -> None:
        payload = json.loads(message.data)["payload"]
        if payload.get("status") in TERMINAL:
            result = json.dumps((payload.get("run") or {}).get("result"), sort_keys=True)
            self.announced[payload["runID"]].add((payload["status"], result))

    def worker(self, number: int) -> Worker:
        """A host worker that runs ``chaos.work`` and records every execution."""
        worker_id = f"chaos-host-{number}"
        urls = self.urls() if number % 2 else self.urls()[::-1]
        worker = Worker(worker_id, urls, capacity=4, nats_options={"ping_interval": 5, "max_outstanding_pings": 2})

        async def work(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
            execution = Execution(ctx.run_id, ctx.attempt, worker_id, params["index"], time.time())
            self.executions.append(execution)
            await asyncio.sleep(params["ms"] / 1000)
            execution.ended = time.time()
            return {"runID": ctx.run_id, "attempt": ctx.attempt, "worker": worker_id, "index": params["index"]}

        worker.add_routine(WORK, work)
        return worker

    def submission(self, index: int) -> Submission:
        rng = random.Random(f"{self.settings.seed}/{index}")
        if rng.random() < self.settings.greet_share:
            routine, params = GREET, {"name": f"chaos-{index}"}
        else:
            routine, params = WORK, {"index": index, "ms": rng.randint(20, 400)}
        return Submission(index, routine, params, time.time())

    async def submit(self, nc: NatsClient, sub: Submission) -> None:
        """Sends the run until a runID comes back; the idempotency key makes every try the same run."""
        key = f"chaos-{self.settings.seed}-{sub.index}"
        spec = {"routineID": sub.routine, "params": sub.params, "idempotencyKey": key}
        request = envelope("v1.routine.request_start", spec)
        deadline = time.monotonic() + patient(ACCEPT_TIMEOUT)
        while time.monotonic() < deadline:
            sub.tries += 1
            try:
                body = json.loads((await nc.request("v1.routine.request_start", request, timeout=REQUEST_TIMEOUT)).data)
            except (nats.errors.Error, asyncio.TimeoutError, ValueError) as error:
                sub.misses.append((time.time(), type(error).__name__))
                await pace(0.2)
                continue
            if body["payloadKey"] == "v1.routine.accepted":
                sub.run_id, sub.accepted = body["payload"]["runID"], time.time()
                self.by_run[sub.run_id] = sub
                return
            if body["payload"].get("code") != "unavailable":
                sub.refused = f"refused: {body['payload']}"
                return
            sub.misses.append((time.time(), f"unavailable: {body['payload'].get('message')}"))
            await pace(0.2)
        sub.refused = f"no runID after {sub.tries} tries in {patient(ACCEPT_TIMEOUT):.0f}s"

    async def submitter(self, nc: NatsClient, indexes: itertools.count) -> None:
        interval = self.settings.submitters / self.settings.rate
        while not self.stop_load.is_set():
            sub = self.submission(next(indexes))
            self.submissions[sub.index] = sub
            await self.submit(nc, sub)
            await pace(interval)

    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions.values() if s.run_id]

    def warmed_up(self) -> bool:
        """A run of each routine has succeeded."""
        succeeded = {
            self.by_run[run].routine
            for run, outcomes in self.announced.items()
            if run in self.by_run and any(status == "SUCCEEDED" for status, _ in outcomes)
        }
        return {WORK, GREET} <= succeeded

    # ------------------------------------------------------------------ drain and checks

    async def fetch(self, nc: NatsClient, run_id: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """The run's record, or why there is none (an error code, or "unanswered")."""
        try:
            reply = await nc.request("v1.run.get", envelope("v1.run.get", {"runID": run_id}), timeout=REQUEST_TIMEOUT)
            body = json.loads(reply.data)
        except (nats.errors.Error, asyncio.TimeoutError, ValueError):
            return None, "unanswered"
        if body["payloadKey"] == "v1.run.record":
            return body["payload"], None
        return None, body["payload"].get("code", "?")

    async def fetch_all(self, nc: NatsClient, run_ids: list[str]) -> dict[str, tuple[Optional[dict], Optional[str]]]:
        gate = asyncio.Semaphore(32)

        async def one(run_id: str):
            async with gate:
                return await self.fetch(nc, run_id)

        return dict(zip(run_ids, await asyncio.gather(*(one(r) for r in run_ids))))

    async def drain(self, nc: NatsClient, timeout: float) -> None:
        """Waits until every accepted run is terminal, keeping each record as it ended."""
        pending = [s.run_id for s in self.accepted()]

        async def progress() -> bool:
            batch, rest = pending[:64], pending[64:]
            found = await self.fetch_all(nc, batch)
            for run_id, (record, _) in found.items():
                if record and record["status"] in TERMINAL:
                    self.ended[run_id] = record
            pending[:] = rest + [r for r in batch if r not in self.ended]
            return not pending

        try:
            await wait_until("every accepted run terminal", progress, timeout)
        except TimeoutError:
            self.unfinished = list(pending)
        self.drained = time.time()

    async def check(self, nc: NatsClient) -> None:
        """DESIGN §6.3 over every accepted run, its record, its events and its executions."""
        problem = self.problems.append
        for sub in self.submissions.values():
            if sub.refused:
                problem(f"submission {sub.index} ({sub.routine}) got no runID: {sub.refused}")
        await hold_settled(SETTLE)
        final = await self.fetch_all(nc, [s.run_id for s in self.accepted()])
        self.final = {run: record for run, (record, _) in final.items() if record}
        finished = {(e.run_id, e.attempt) for e in self.executions if e.ended is not None}
        never_ended = []
        for sub in self.accepted():
            run = sub.run_id
            record, why = final[run]
            if record is None:
                problem(f"run {run} (submission {sub.index}) was accepted but its record is gone: {why}")
                continue
            status = record["status"]
            if status not in TERMINAL:
                never_ended.append(f"{run} still {status} at attempt {record.get('attempt')}")
                continue
            terminal = [t["status"] for t in record.get("transitions", []) if t["status"] in TERMINAL]
            if len(terminal) != 1:
                problem(f"run {run} has {len(terminal)} terminal transitions: {terminal}")
            kept = self.ended.get(run)
            if kept and [kept.get(k) for k in ("status", "result", "transitions")] != [
                record.get(k) for k in ("status", "result", "transitions")
            ]:
                problem(f"run {run} changed after it ended: {kept['status']} became {status}")
            outcomes = self.announced.get(run, set()) | {(status, json.dumps(record.get("result"), sort_keys=True))}
            if len(outcomes) > 1:
                problem(f"run {run} was announced with two outcomes: {sorted(outcomes)}")
            if status != "SUCCEEDED":
                continue
            result = record.get("result") or {}
            if sub.routine == WORK:
                if result.get("runID") != run or result.get("attempt") != record["attempt"]:
                    problem(f"run {run} ended with attempt {record['attempt']} but the result of {result}")
                elif (run, record["attempt"]) not in finished:
                    problem(f"run {run} succeeded with attempt {record['attempt']}, which no worker finished")
            elif result != {"greeting": f"hello, {sub.params['name']}"}:
                problem(f"run {run} ({GREET}) ended with the wrong result {result}")
        if never_ended:
            waited = time.time() - self.load_stopped
            examples = "; ".join(never_ended[:5]) + ("; ..." if len(never_ended) > 5 else "")
            problem(f"{len(never_ended)} accepted runs never ended ({waited:.0f}s after the load stopped): {examples}")
        for e in self.executions:
            sub = self.submissions.get(e.index)
            if sub is None or (sub.run_id and sub.run_id != e.run_id):
                problem(f"a worker ran {e.run_id} for submission {e.index}, which was given {sub and sub.run_id}")

    # ------------------------------------------------------------------ the whole check

    async def run(self) -> Report:
        nc = await self.connect()
        await nc.subscribe("v1.run.events.*", cb=self.on_event)
        workers = [self.worker(n) for n in (1, 2)]
        for worker in workers:
            await worker.start()
        indexes = itertools.count()
        self.started = time.time()
        submitters = [asyncio.ensure_future(self.submitter(nc, indexes)) for _ in range(self.settings.submitters)]
        recovered = True
        try:
            await wait_until(f"a run of {WORK} and of {GREET} succeeded", self.warmed_up, WARM_UP_TIMEOUT)
            faults = plan(self.settings)
            steps = (f"{f.kind} {f.node or 'the meta leader'} after {f.pause:.1f}s" for f in faults)
            self.say("plan: " + ", then ".join(steps))
            try:
                await self.run_faults(faults)
            except (TimeoutError, AssertionError) as error:
                recovered = False
                fault = self.faults[-1]
                self.problems.append(f"the cluster did not recover from the {fault.kind} of {fault.node}: {error}")
            if recovered:
                await pace(self.started + self.settings.duration - time.time())
        finally:
            self.stop_load.set()
            await asyncio.gather(*submitters, return_exceptions=True)
        self.load_stopped = time.time()
        self.say(f"load stopped: {len(self.accepted())} runs accepted; draining")
        await self.drain(nc, DRAIN_TIMEOUT if recovered else 60)
        await self.check(nc)
        for worker in workers:
            await worker.stop(grace=5)
        await nc.close()
        return Report(self)


def why_sent_again(accepted: list[Submission], started: float) -> dict[str, str]:
    """Each reason a try got no runID: how often, and from when to when in the load."""
    seen: dict[str, list[float]] = defaultdict(list)
    for sub in accepted:
        for at, reason in sub.misses:
            seen[reason].append(at - started)
    ordered = sorted(seen.items(), key=lambda item: -len(item[1]))
    return {reason: f"{len(times)}x at +{min(times):.1f}..{max(times):.1f}s" for reason, times in ordered}


def longest_pause(chaos: Chaos) -> float:
    """The longest stretch of the load in which no run ended SUCCEEDED."""
    ends = sorted(epoch(r["endedAt"]) for r in chaos.final.values() if r["status"] == "SUCCEEDED")
    moments = [chaos.started, *[t for t in ends if chaos.started <= t <= chaos.load_stopped], chaos.load_stopped]
    return max((b - a for a, b in zip(moments, moments[1:])), default=0.0)


class Report:
    """The figures of one chaos check, and what went wrong (``problems``)."""

    def __init__(self, chaos: Chaos):
        self.problems = chaos.problems
        self.faults = chaos.faults
        self.started = chaos.started
        accepted, final = chaos.accepted(), chaos.final
        for fault in self.faults:
            fault.first_success = min(
                (
                    epoch(final[s.run_id]["endedAt"])
                    for s in accepted
                    if s.accepted >= fault.began and final.get(s.run_id, {}).get("status") == "SUCCEEDED"
                ),
                default=None,
            )
        statuses = Counter(record["status"] for record in final.values())
        starts = Counter(e.run_id for e in chaos.executions)
        settings = chaos.settings
        self.figures: dict[str, Any] = {
            "seed": settings.seed,
            "duration_s": settings.duration,
            "partition_s": settings.partition,
            "project": chaos.project.name,
            "runs_accepted": len(accepted),
            "runs_succeeded": statuses["SUCCEEDED"],
            "runs_failed": statuses["FAILED"],
            "runs_cancelled": statuses["CANCELLED"],
            "failure_reasons": dict(Counter(r.get("failureReason") for r in final.values() if r["status"] == "FAILED")),
            "tries_sent_again": sum(s.tries - 1 for s in accepted),
            "why_sent_again": why_sent_again(accepted, chaos.started),
            "longest_wait_for_run_id_s": round(max((s.accepted - s.sent for s in accepted), default=0.0), 2),
            "executions": len(chaos.executions),
            "re_executed_runs": sum(1 for n in starts.values() if n > 1),
            "runs_with_several_attempts": sum(1 for r in final.values() if r.get("attempt", 0) > 1),
            "kills": sum(1 for f in self.faults if f.kind == "kill"),
            "partitions": sum(1 for f in self.faults if f.kind == "partition"),
            "faults": [{**asdict(f), "story": f.line(chaos.started)} for f in self.faults],
            "longest_pause_s": round(longest_pause(chaos), 1),
            "drain_s": round(chaos.drained - chaos.load_stopped, 1),
            "unfinished_runs": len(chaos.unfinished),
            "problems": self.problems,
        }

    def lines(self) -> list[str]:
        f = self.figures
        failed = f" {f['failure_reasons']}" if f["failure_reasons"] else ""
        lines = [
            f"cluster chaos: seed {f['seed']}, {f['duration_s']:.0f}s of load, partitions of {f['partition_s']:.0f}s "
            f"(project {f['project']})",
            f"  runs accepted          {f['runs_accepted']} "
            f"(longest wait for a runID {f['longest_wait_for_run_id_s']}s; "
            f"{f['tries_sent_again']} tries sent again: {f['why_sent_again'] or 'none'})",
            f"  runs succeeded         {f['runs_succeeded']} "
            f"(failed {f['runs_failed']}{failed}, cancelled {f['runs_cancelled']})",
            f"  re-executions          {f['re_executed_runs']} runs executed more than once by the host workers; "
            f"{f['runs_with_several_attempts']} runs needed more than one attempt",
            f"  kills                  {f['kills']}",
            f"  partitions             {f['partitions']}",
            *[f"  fault {n}: {fault.line(self.started)}" for n, fault in enumerate(self.faults, 1)],
            f"  longest pause          {f['longest_pause_s']}s of the load without a run succeeding",
            f"  drain                  every accepted run terminal {f['drain_s']}s after the load stopped"
            if not f["unfinished_runs"]
            else f"  drain                  gave up after {f['drain_s']}s with {f['unfinished_runs']} runs not terminal",
        ]
        return lines + ([f"  VIOLATION: {p}" for p in self.problems] or ["  violations             none"])


# ---------------------------------------------------------------------- the project


def stand_ins() -> dict[str, str]:
    """The stand-in images, as the variables that point the compose file at them."""
    base = ensure_base()
    return {"DROVER_IMAGE": build_drover(base, DROVER_TAG), "NATS_IMAGE": ensure_nats()}


def cluster_project(images: dict[str, str]) -> tuple[ComposeProject, dict[str, int]]:
    """The cluster compose file as a project of its own, every published port on a free one."""
    ports = {name: free_port() for name in (*CLIENT_PORT.values(), *MONITOR_PORT.values())}
    env = {**images, **{name: str(port) for name, port in ports.items()}}
    return ComposeProject([COMPOSE_FILE], PROJECT_PREFIX, env, Path(COMPOSE_FILE).parent), ports


async def bring_up(project: ComposeProject) -> None:
    """``up`` and every healthcheck healthy (docker-compose 1.29 has no ``--wait``)."""
    await asyncio.to_thread(project.up)
    await project.wait_healthy((*NODES, *SERVICES), timeout=UP_TIMEOUT)


async def chaos(
    project: ComposeProject, ports: dict[str, int], settings: Settings, say: Optional[Say] = None
) -> Report:
    """Brings the project up and runs the check against it; the caller takes it down."""
    await bring_up(project)
    return await Chaos(project, ports, settings, say).run()
