"""deploy/kubernetes runs what the code offers: the checks of kube_manifests.py.

The manifests are checked against the binaries that ``cargo build --workspace --bins``
left in the target directory (their clap parsers judge the arguments) and against the
setting names drover-service-kit publishes. Each negative case breaks one thing in a
copy of the manifests and expects the checker to name it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

import kube_manifests as km

SERVICES = {
    "drover-registry",
    "drover-heartbeat-monitor",
    "drover-scheduler",
    "drover-log-collector",
    "drover-console",
}
#: Services of the secured setup only; the base manifests do not run them.
SECURE_SERVICES = {"drover-auth"}
HAS_KUBECTL = shutil.which("kubectl") is not None


@pytest.fixture(scope="module")
def facts() -> km.Facts:
    """Facts shared by every test, so each binary answers ``--help`` once."""
    facts = km.Facts()
    missing = [b for b in sorted(SERVICES | {"drover-example-worker"}) if facts.binary(b) is None]
    assert not missing, f"{missing} not in {facts.bin_dir}: run cargo build --workspace --bins"
    return facts


def test_the_facts_come_from_the_code(facts: km.Facts) -> None:
    assert facts.services == SERVICES | SECURE_SERVICES
    assert facts.admin_paths == {"/healthz", "/readyz", "/metrics"}
    assert {
        "DROVER_NATS_URL",
        "DROVER_JS_REPLICAS",
        "DROVER_DRAIN_GRACE_MS",
        "NATS_URL",
    } <= facts.service_env
    assert {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= facts.service_env
    assert "DROVER_WORKER_ID" not in facts.service_env
    assert {"DROVER_NATS_URL", "DROVER_WORKER_ID", "RUST_LOG"} <= facts.env_read_by(
        "drover-example-worker"
    )
    assert {"--admin-addr", "--nats-url", "--config"} <= facts.flags("drover-scheduler")
    # A service's own flags add the variables they read, to that service only.
    console = {"DROVER_CONSOLE_LISTEN", "DROVER_CONSOLE_TOKEN", "DROVER_CONSOLE_JAEGER_URL"}
    assert console <= facts.env_read_by("drover-console")
    assert not console & facts.env_read_by("drover-scheduler")
    assert "DROVER_AUTH_ISSUER_SEED" in facts.env_read_by("drover-auth")
    assert {"--listen", "--token", "--jaeger-url"} <= facts.flags("drover-console")
    assert facts.default_drain_grace_ms > 0


def test_the_manifests_pass(facts: km.Facts) -> None:
    assert km.check(facts=facts, use_kubectl=False) == []


@pytest.mark.skipif(not HAS_KUBECTL, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_every_kustomization_and_the_output_passes(
    facts: km.Facts,
) -> None:
    assert km.check(facts=facts, use_kubectl=True) == []


# ---------------------------------------------------------------------------------------
# Broken copies
# ---------------------------------------------------------------------------------------

Docs = list[dict]


def find(docs: Docs, kind: str) -> dict:
    return next(doc for doc in docs if doc.get("kind") == kind)


def container(docs: Docs) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def pod(docs: Docs) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]


def set_args(*args: str) -> Callable[[Docs], None]:
    return lambda docs: container(docs).__setitem__("args", list(args))


def add_env(name: str, value: str) -> Callable[[Docs], None]:
    return lambda docs: container(docs).setdefault("env", []).append({"name": name, "value": value})


def probe(kind: str, **http: object) -> Callable[[Docs], None]:
    return lambda docs: container(docs)[f"{kind}Probe"]["httpGet"].update(http)


def add_literal(literal: str) -> Callable[[Docs], None]:
    return lambda docs: docs[0]["configMapGenerator"][0]["literals"].append(literal)


def replace_literal(old: str, new: str) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        literals = docs[0]["configMapGenerator"][0]["literals"]
        literals[literals.index(old)] = new

    return edit


def nats(path: str, value: object) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        *parents, last = path.split(".")
        node = docs[0]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def set_container_port(port: int) -> Callable[[Docs], None]:
    return lambda docs: container(docs)["ports"][0].__setitem__("containerPort", port)


def set_env(name: str, value: str) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        item = next(item for item in container(docs)["env"] if item["name"] == name)
        item.pop("valueFrom", None)
        item["value"] = value

    return edit


def drop_env(name: str) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        env = container(docs)["env"]
        env[:] = [item for item in env if item["name"] != name]

    return edit


def secret_ref(name: str, **changes: object) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        item = next(item for item in container(docs)["env"] if item["name"] == name)
        item["valueFrom"]["secretKeyRef"].update(changes)

    return edit


# (case, file, edit, what the checker must say)
BREAKAGES: list[tuple[str, str, Callable[[Docs], None], list[str]]] = [
    (
        "unknown flag",
        "base/registry.yaml",
        set_args("--admin-adr", "0.0.0.0:9710"),
        ["drover-registry does not accept --admin-adr", "no --admin-addr"],
    ),
    (
        "flag without its value",
        "base/registry.yaml",
        set_args("--admin-addr"),
        ["drover-registry refuses its arguments ['--admin-addr']"],
    ),
    (
        "admin on loopback",
        "base/scheduler.yaml",
        set_args("--admin-addr", "127.0.0.1:9712"),
        ["admin address 127.0.0.1:9712 cannot be reached from outside the pod"],
    ),
    (
        "unknown variable",
        "base/scheduler.yaml",
        add_env("DROVER_HEARTBEAT_INTERVAL", "1000"),
        ["drover-scheduler does not read the variable DROVER_HEARTBEAT_INTERVAL"],
    ),
    (
        "unknown variable in the ConfigMap",
        "base/kustomization.yaml",
        add_literal("DROVER_JS_REPLICA=3"),
        [f"{s} does not read the variable DROVER_JS_REPLICA" for s in sorted(SERVICES)],
    ),
    (
        "variable the worker does not read",
        "demo/example-worker.yaml",
        add_env("DROVER_CAPACITY", "4"),
        ["drover-example-worker does not read the variable DROVER_CAPACITY"],
    ),
    (
        "containerPort off the admin port",
        "base/log-collector.yaml",
        set_container_port(9799),
        [
            "containerPort named admin is 9799, not the --admin-addr port 9713",
            "containerPort 9799: nothing listens there",
        ],
    ),
    (
        "probe path not served",
        "base/heartbeat-monitor.yaml",
        probe("readiness", path="/health"),
        ["readinessProbe path /health is not served"],
    ),
    (
        "liveness on readiness",
        "base/heartbeat-monitor.yaml",
        probe("liveness", path="/readyz"),
        ["livenessProbe uses /readyz; only /healthz stays up while NATS is down"],
    ),
    (
        "probe on another port",
        "base/registry.yaml",
        probe("liveness", port=9999),
        ["livenessProbe port 9999 is not the admin port 9710"],
    ),
    (
        "no such binary",
        "base/registry.yaml",
        lambda docs: container(docs).__setitem__("command", ["drover-registri"]),
        ["drover-registri is not a binary of the workspace"],
    ),
    (
        "missing resource",
        "base/kustomization.yaml",
        lambda docs: docs[0]["resources"].append("metrics.yaml"),
        ["base/kustomization.yaml: resource metrics.yaml does not exist"],
    ),
    (
        "two NATS servers",
        "nats-values.yaml",
        nats("config.cluster.replicas", 1),
        ["config.cluster.replicas is 1, not 3", "DROVER_JS_REPLICAS=3 with 1 NATS servers"],
    ),
    (
        "JetStream in memory",
        "nats-values.yaml",
        nats("config.jetstream.fileStore.enabled", False),
        ["config.jetstream.fileStore.enabled is not true"],
    ),
    (
        "NATS on another port",
        "base/kustomization.yaml",
        replace_literal("DROVER_NATS_URL=nats://nats:4222", "DROVER_NATS_URL=nats://nats:4223"),
        ["NATS URL nats://nats:4223 is not on the chart's client port 4222"],
    ),
    (
        "grace shorter than the drain",
        "base/scheduler.yaml",
        lambda docs: pod(docs).__setitem__("terminationGracePeriodSeconds", 5),
        ["terminationGracePeriodSeconds 5 does not outlast the drain grace of"],
    ),
    (
        "drain longer than the grace",
        "base/scheduler.yaml",
        add_env("DROVER_DRAIN_GRACE_MS", "60000"),
        ["terminationGracePeriodSeconds 30 does not outlast the drain grace of 60000 ms"],
    ),
    (
        "budget that blocks drains",
        "base/registry.yaml",
        lambda docs: find(docs, "PodDisruptionBudget")["spec"].__setitem__("minAvailable", 2),
        ["minAvailable 2 with 2 replicas of drover-registry blocks every node drain"],
    ),
    (
        "Service on a port no pod has",
        "base/registry.yaml",
        lambda docs: find(docs, "Service")["spec"]["ports"][0].__setitem__("targetPort", "metrics"),
        ["targetPort metrics is not a port of"],
    ),
    (
        "scraped on another port",
        "base/registry.yaml",
        lambda docs: find(docs, "Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ].__setitem__("prometheus.io/port", "9090"),
        ["prometheus.io/port 9090 is not the admin port 9710"],
    ),
    (
        "root allowed",
        "base/log-collector.yaml",
        lambda docs: pod(docs)["securityContext"].__setitem__("runAsNonRoot", False),
        ["runAsNonRoot is not true"],
    ),
    (
        "no memory limit",
        "base/log-collector.yaml",
        lambda docs: container(docs)["resources"]["limits"].pop("memory"),
        ["no memory limits"],
    ),
    (
        "console on loopback",
        "base/console.yaml",
        set_env("DROVER_CONSOLE_LISTEN", "127.0.0.1:7480"),
        ["--listen address 127.0.0.1:7480 cannot be reached from outside the pod"],
    ),
    (
        "console without a listen address",
        "base/console.yaml",
        drop_env("DROVER_CONSOLE_LISTEN"),
        ["no --listen (or DROVER_CONSOLE_LISTEN): drover-console serves on 127.0.0.1 only"],
    ),
    (
        "console containerPort off its listen port",
        "base/console.yaml",
        set_container_port(7481),
        ["containerPort 7481: nothing listens there (admin is 9715, --listen is 7480)"],
    ),
    (
        "console token Secret required",
        "base/console.yaml",
        secret_ref("DROVER_CONSOLE_TOKEN", optional=False),
        [
            "DROVER_CONSOLE_TOKEN comes from Secret drover-console, which is not part of "
            "these manifests: mark it optional"
        ],
    ),
    (
        "console variable given to another service",
        "base/scheduler.yaml",
        add_env("DROVER_CONSOLE_TOKEN", "secret"),
        ["drover-scheduler does not read the variable DROVER_CONSOLE_TOKEN"],
    ),
    (
        "image not mapped",
        "base/kustomization.yaml",
        lambda docs: docs[0]["images"][0].__setitem__("name", "drover-image"),
        ["image 'drover' has no tag"],
    ),
]


def broken_copy(tmp_path: Path, breakages: list[tuple[str, Callable[[Docs], None]]]) -> Path:
    root = tmp_path / "kubernetes"
    shutil.copytree(km.MANIFESTS, root)
    for relative, edit in breakages:
        path = root / relative
        docs = km.load_docs(path)
        edit(docs)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return root


def missing(problems: list[str], expected: list[str]) -> list[str]:
    return [text for text in expected if not any(text in problem for problem in problems)]


@pytest.mark.parametrize(
    "relative, edit, expected", [b[1:] for b in BREAKAGES], ids=[b[0] for b in BREAKAGES]
)
def test_each_breakage_is_reported(
    facts: km.Facts,
    tmp_path: Path,
    relative: str,
    edit: Callable[[Docs], None],
    expected: list[str],
) -> None:
    root = broken_copy(tmp_path, [(relative, edit)])
    problems = km.check(root, facts, use_kubectl=False)
    assert problems, "nothing reported"
    assert not missing(problems, expected), "\n".join(problems)


def test_an_unlisted_manifest_is_reported(facts: km.Facts, tmp_path: Path) -> None:
    root = broken_copy(tmp_path, [])
    (root / "base" / "extra.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
    )
    assert km.check(root, facts, use_kubectl=False) == [
        "base/extra.yaml: not listed in any kustomization's resources"
    ]


def test_a_manifest_broken_in_several_ways_has_each_way_reported(
    facts: km.Facts, tmp_path: Path
) -> None:
    chosen = {
        "unknown flag",
        "unknown variable",
        "containerPort off the admin port",
        "two NATS servers",
    }
    picked = [b for b in BREAKAGES if b[0] in chosen]
    root = broken_copy(tmp_path, [(b[1], b[2]) for b in picked])
    expected = [text for b in picked for text in b[3]]
    problems = km.check(root, facts, use_kubectl=False)
    assert not missing(problems, expected), "\n".join(problems)
    if HAS_KUBECTL:
        # What kubectl kustomize renders shows the same problems.
        rendered = km.Checker(root, facts).run(python=False, kubectl=True)
        assert all(
            p.startswith("kubectl kustomize ") or p.startswith("nats-values.yaml") for p in rendered
        )
        assert not missing(rendered, expected), "\n".join(rendered)


@pytest.mark.skipif(not HAS_KUBECTL, reason="kubectl is not installed")
def test_a_kustomization_kubectl_cannot_build_is_reported(facts: km.Facts, tmp_path: Path) -> None:
    root = broken_copy(tmp_path, [])
    # An overlay inside the directory it builds on: kustomize refuses the cycle.
    (root / "base" / "overlay").mkdir()
    (root / "base" / "overlay" / "kustomization.yaml").write_text("resources:\n  - ..\n")
    problems = km.check(root, facts, use_kubectl=True)
    assert any(p.startswith("kubectl kustomize") and "cycle" in p for p in problems), "\n".join(
        problems
    )
