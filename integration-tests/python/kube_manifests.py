"""Checks the Kubernetes manifests of ``deploy/kubernetes`` against the code they run.

Nothing is applied to a cluster; instead every kustomization is built (here, in Python:
resources, ConfigMap generators, namespace and images; and by ``kubectl kustomize`` where
kubectl is installed) and each object is held against facts taken from the code:

- a container's command is a binary that cargo built, and its arguments are ones that
  binary's clap parser accepts (the binary itself parses them, with ``--help`` appended);
- every environment variable, given directly or through a ConfigMap, is one the binary
  reads: for the services, the setting keys and variables that drover-service-kit
  publishes (``crates/service-kit/src/settings/mod.rs``) and those the binary's own flags
  read (the ``[env: ...]`` of its ``--help``); one taken from a Secret that the manifests
  do not hold is marked optional;
- the admin port: ``--admin-addr`` binds every interface, the containerPort named
  ``admin`` is its port, probes and Prometheus annotations point there, at paths the admin
  server routes (``crates/service-kit/src/admin.rs``); liveness uses ``/healthz``, which
  stays up while NATS is down; a binary that serves more (the console's ``--listen``) binds
  that to every interface too, and every containerPort is one of those ports;
- the termination grace outlasts the drain grace; PodDisruptionBudgets, Services and
  selectors match pods; every ``resources:`` entry of a kustomization exists and every
  manifest is part of one;
- the NATS Helm values run 3 clustered servers with JetStream on files, on the port and
  with at least the replicas the services are told to use.

Run it by hand with ``python integration-tests/python/kube_manifests.py [DIR]``; it prints
one line per problem and exits 1 if there is any. The binaries are found as the harness
finds them (``DROVER_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else ``target/debug``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import yaml

from drover_harness import bin_dir, patient

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
#: The kustomization fields Builder applies (labels only add labels, which no check reads).
KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "namespace",
    "images",
    "labels",
}
NATS_VALUES = "nats-values.yaml"
#: Addresses that accept connections from outside the pod (the kubelet's probes).
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}
#: The only path a liveness probe may use: it answers while the process runs, whatever NATS
#: does. /readyz fails while NATS is down, and would have every pod restarted in an outage.
LIVENESS_PATH = "/healthz"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
#: Binaries that are not services, with the source that reads their environment.
#: The sources whose environment reads make up a binary's, the SDK's included (it reads
#: the variables a supervisor such as `drover pool` sets, named by `*_VAR` constants).
OTHER_BINARY_SOURCES = {
    "drover-example-worker": (
        "examples/rust-worker/src/main.rs",
        "crates/worker/src/builder.rs",
        "crates/worker/src/pool_env.rs",
    )
}
#: What a service serves on besides its admin server: (flag, variable) of each address,
#: which defaults to loopback.
SERVING_ADDRESSES = {
    "drover-console": (("--listen", "DROVER_CONSOLE_LISTEN"),),
}
#: Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_TERMINATION_GRACE_S = 30
HELP_TIMEOUT_S = 10.0
KUBECTL_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------
# What the code says
# ---------------------------------------------------------------------------------------


def rust_str_array(source: str, name: str) -> list[str]:
    """The string literals of ``pub const NAME: [&str; N] = [...]`` in Rust ``source``."""
    match = re.search(rf"pub const {name}: \[&str; (\d+)\] = \[(.*?)\];", source, flags=re.DOTALL)
    if not match:
        raise LookupError(f"no `pub const {name}: [&str; N]` found")
    items = re.findall(r'"([^"]*)"', match.group(2))
    if len(items) != int(match.group(1)):
        raise LookupError(f"{name}: read {len(items)} strings of {match.group(1)}")
    return items


@dataclass
class Facts:
    """Facts about the binaries, read from the repository and from the binaries themselves."""

    repo: Path = REPO
    bin_dir: Path = field(default_factory=bin_dir)
    _help: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)

    def _read(self, relative: str) -> str:
        return (self.repo / relative).read_text()

    @cached_property
    def _settings_source(self) -> str:
        return self._read("crates/service-kit/src/settings/mod.rs")

    @cached_property
    def telemetry_env(self) -> frozenset[str]:
        """What ``drover_telemetry::init`` reads."""
        return frozenset(rust_str_array(self._settings_source, "TELEMETRY_ENV_VARS"))

    @cached_property
    def service_env(self) -> frozenset[str]:
        """Every variable a service reads: ``DROVER_<KEY>``, the loader's, the NATS credentials'
        and TLS's, telemetry's."""
        keys = rust_str_array(self._settings_source, "SETTING_KEYS")
        loader = rust_str_array(self._settings_source, "LOADER_ENV_VARS")
        auth = rust_str_array(self._settings_source, "NATS_AUTH_ENV_VARS")
        return frozenset([f"DROVER_{key.upper()}" for key in keys] + loader + auth) | self.telemetry_env

    @cached_property
    def default_drain_grace_ms(self) -> int:
        match = re.search(r"drain_grace_ms: ([\d_]+),", self._settings_source)
        if not match:
            raise LookupError("no default drain_grace_ms in the settings")
        return int(match.group(1).replace("_", ""))

    @cached_property
    def admin_paths(self) -> frozenset[str]:
        """The paths the admin server routes."""
        paths = re.findall(r'\.route\(\s*"([^"]+)"', self._read("crates/service-kit/src/admin.rs"))
        if not paths:
            raise LookupError("no routes found in crates/service-kit/src/admin.rs")
        return frozenset(paths)

    @cached_property
    def services(self) -> frozenset[str]:
        """Binaries that start through ``run_service``, and so read the kit's settings."""
        names = set()
        for main in sorted(self.repo.glob("services/*/src/main.rs")):
            names.update(re.findall(r'run_service\(\s*"([^"]+)"', main.read_text()))
        if not names:
            raise LookupError("no run_service call found in services/*/src/main.rs")
        return frozenset(names)

    def flag_env(self, binary: str) -> frozenset[str]:
        """The variables ``binary``'s own flags read: the ``[env: NAME]`` its ``--help`` lists
        (clap prints it for every argument with ``env = ...``)."""
        _, text = self.help(binary)
        return frozenset(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)", text))

    def env_read_by(self, binary: str) -> Optional[frozenset[str]]:
        """The variables ``binary`` reads, or ``None`` when that is not known."""
        if binary in self.services:
            return self.service_env | self.flag_env(binary)
        sources = OTHER_BINARY_SOURCES.get(binary)
        if sources is None:
            return None
        text = "\n".join(self._read(source) for source in sources)
        names = set(re.findall(r'env(?:::var(?:_os)?)?\("([A-Z][A-Z0-9_]*)"\)', text))
        names |= set(re.findall(r'const [A-Z0-9_]+_VAR: &str = "([A-Z][A-Z0-9_]*)"', text))
        if "drover_telemetry::init" in text:
            names |= self.telemetry_env
        return frozenset(names)

    def binary(self, name: str) -> Optional[Path]:
        path = self.bin_dir / name
        return path if path.is_file() and os.access(path, os.X_OK) else None

    def help(self, name: str, args: Iterable[str] = ()) -> tuple[int, str]:
        """Runs ``name ARGS --help``: clap parses ARGS, then prints help and exits 0."""
        key = "\0".join([name, *args])
        if key not in self._help:
            path = self.binary(name)
            assert path is not None, name
            try:
                done = subprocess.run(
                    [str(path), *args, "--help"],
                    capture_output=True,
                    text=True,
                    timeout=patient(HELP_TIMEOUT_S),
                    stdin=subprocess.DEVNULL,
                )
                self._help[key] = (done.returncode, done.stdout + done.stderr)
            except subprocess.TimeoutExpired:
                self._help[key] = (-1, "did not answer --help")
        return self._help[key]

    def flags(self, name: str) -> frozenset[str]:
        """The long and short flags ``name --help`` lists."""
        _, text = self.help(name)
        found = set()
        for line in text.splitlines():
            if line.lstrip().startswith("-"):
                found.update(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", line))
        return frozenset(found)


# ---------------------------------------------------------------------------------------
# Building kustomizations
# ---------------------------------------------------------------------------------------


@dataclass
class Obj:
    """One Kubernetes object and the file it came from."""

    body: dict
    origin: str

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))


def load_docs(path: Path) -> list[dict]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomization_file(directory: Path) -> Optional[Path]:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def split_image(image: str) -> tuple[str, str]:
    """``name[:tag][@digest]`` as (name, the rest with its separator)."""
    at = image.find("@")
    base, digest = (image, "") if at < 0 else (image[:at], image[at:])
    colon = base.rfind(":")
    if colon > base.rfind("/"):
        return base[:colon], base[colon:] + digest
    return base, digest


class Builder:
    """A small kustomize: resources, ConfigMap generators, namespace and images."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[tuple[str, str]] = []
        self.listed: set[Path] = set()

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def build(self, directory: Path, seen: tuple[Path, ...] = ()) -> list[Obj]:
        kfile = kustomization_file(directory)
        if kfile is None:
            self.problems.append((self.rel(directory), "no kustomization.yaml"))
            return []
        if directory in seen:
            self.problems.append((self.rel(kfile), "includes itself"))
            return []
        spec = load_docs(kfile)[0]
        where = self.rel(kfile)
        for unknown in sorted(set(spec) - KUSTOMIZATION_FIELDS):
            self.problems.append((where, f"{unknown}: not applied by this check (extend Builder)"))
        objs: list[Obj] = []
        for entry in spec.get("resources") or []:
            path = (directory / entry).resolve()
            if "://" in entry:
                self.problems.append((where, f"resource {entry} is remote"))
            elif path.is_dir():
                objs += self.build(path, seen + (directory,))
            elif path.is_file():
                self.listed.add(path)
                objs += [Obj(doc, self.rel(path)) for doc in load_docs(path)]
            else:
                self.problems.append((where, f"resource {entry} does not exist"))
        for generator in spec.get("configMapGenerator") or []:
            objs = self._generate(directory, where, generator, objs)
        namespace = spec.get("namespace")
        if namespace:
            for obj in objs:
                if obj.kind not in CLUSTER_SCOPED:
                    obj.body.setdefault("metadata", {})["namespace"] = namespace
        for image in spec.get("images") or []:
            for container in (c for obj in objs for c in containers(obj.body)):
                name, rest = split_image(str(container.get("image", "")))
                if name == image.get("name"):
                    tag = f":{image['newTag']}" if "newTag" in image else rest
                    if "digest" in image:
                        tag = f"@{image['digest']}"
                    container["image"] = image.get("newName", name) + tag
        return objs

    def _generate(self, directory: Path, where: str, generator: dict, objs: list[Obj]) -> list[Obj]:
        data: dict[str, str] = {}
        for literal in generator.get("literals") or []:
            key, _, value = str(literal).partition("=")
            data[key] = value
        for env_file in generator.get("envs") or []:
            path = directory / env_file
            if not path.is_file():
                self.problems.append((where, f"env file {env_file} does not exist"))
                continue
            for line in path.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = value
        for file_entry in generator.get("files") or []:
            key, _, source = str(file_entry).rpartition("=")
            path = directory / source
            if not path.is_file():
                self.problems.append((where, f"file {source} does not exist"))
                continue
            data[key or path.name] = path.read_text()
        name = generator.get("name", "")
        behavior = generator.get("behavior", "create")
        existing = [o for o in objs if o.kind == "ConfigMap" and o.name == name]
        if behavior in ("merge", "replace") and existing:
            target = existing[0].body
            target["data"] = {**(target.get("data") or {}), **data} if behavior == "merge" else data
            return objs
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        return objs + [Obj(body, where)]


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def pod_spec(body: dict) -> Optional[dict]:
    kind = body.get("kind")
    spec = body.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get(
            "spec"
        )
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec")
    return None


def pod_labels(body: dict) -> dict:
    if body.get("kind") == "Pod":
        return (body.get("metadata") or {}).get("labels") or {}
    template = (body.get("spec") or {}).get("template") or {}
    return (template.get("metadata") or {}).get("labels") or {}


def pod_annotations(body: dict) -> dict:
    template = (body.get("spec") or {}).get("template") or {}
    return (template.get("metadata") or {}).get("annotations") or {}


def containers(body: dict) -> Iterator[dict]:
    spec = pod_spec(body) or {}
    for key in ("initContainers", "containers"):
        yield from spec.get(key) or []


def selects(wanted: dict, labels: dict) -> bool:
    """Whether ``labels`` carry every label of ``wanted`` (a Service selector, or the
    matchLabels of a workload or PDB selector); an empty selector selects nothing here."""
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def flag_value(args: list[str], flag: str) -> Optional[str]:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


QUANTITY_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2}
QUANTITY_UNITS["Gi"] = 1024**3


def quantity(value: object) -> Optional[float]:
    """A Kubernetes quantity (``250m``, ``1``, ``64Mi``) as a number, or ``None``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    return float(match.group(1)) * QUANTITY_UNITS[match.group(2) or ""] if match else None


def parse_port(value: str) -> Optional[tuple[str, int]]:
    host, sep, port = value.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else None


Say = Callable[[str], None]


class Checker:
    """Collects the problems of one manifest tree, one line each: ``origin: what``."""

    def __init__(self, root: Path = MANIFESTS, facts: Optional[Facts] = None):
        self.root = root
        self.facts = facts or Facts()
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def report(self, origin: str, what: str, key: Optional[str] = None) -> None:
        key = key or f"{origin}: {what}"
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(f"{origin}: {what}")

    def about(self, obj: Obj, detail: str = "") -> Say:
        """Reports problems of ``obj`` (``detail`` names a part of it, e.g. a container).

        An object met in several builds, or again in kubectl's output, is reported once."""
        subject = f"{obj.kind} {obj.name}{detail}"
        return lambda what: self.report(obj.origin, f"{subject}: {what}", f"{subject}: {what}")

    def run(self, python: bool = True, kubectl: bool = False) -> list[str]:
        """Checks every kustomization under the root as built here (``python``) and as
        ``kubectl kustomize`` builds it (``kubectl``), plus the NATS values."""
        builder = Builder(self.root)
        yaml_files = sorted(p for p in self.root.rglob("*") if p.suffix in (".yaml", ".yml"))
        for path in yaml_files:
            try:
                load_docs(path)
            except yaml.YAMLError as error:
                self.report(builder.rel(path), f"not YAML: {str(error).splitlines()[0]}")
                return self.problems
        kustomizations = [p for p in yaml_files if p.name in KUSTOMIZATION_NAMES]
        if not kustomizations:
            self.report(str(self.root), "no kustomization")
        values = self.nats_values(self.root / NATS_VALUES)
        for kfile in kustomizations:
            if python:
                self.check_build(builder.build(kfile.parent), values)
            if kubectl:
                self.check_rendered(kfile.parent, values)
        if python:
            for origin, what in builder.problems:
                self.report(origin, what)
            for path in yaml_files:
                exempt = path.name in KUSTOMIZATION_NAMES or path.name == NATS_VALUES
                if not exempt and path.resolve() not in builder.listed:
                    self.report(builder.rel(path), "not listed in any kustomization's resources")
        return self.problems

    def check_rendered(self, directory: Path, values: Optional[dict]) -> None:
        origin = f"kubectl kustomize {directory.relative_to(self.root.parent)}"
        done = subprocess.run(
            ["kubectl", "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=patient(KUBECTL_TIMEOUT_S),
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["failed"]
            self.report(origin, lines[-1])
            return
        docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
        self.check_build([Obj(doc, origin) for doc in docs], values)

    # -- one build ------------------------------------------------------------------------

    def check_build(self, objs: list[Obj], values: Optional[dict]) -> None:
        workloads = [o for o in objs if pod_spec(o.body) is not None]
        config_maps = {o.name: o for o in objs if o.kind == "ConfigMap"}
        secrets = {o.name for o in objs if o.kind == "Secret"}
        for obj in objs:
            if obj.kind not in CLUSTER_SCOPED and not obj.body["metadata"].get("namespace"):
                self.about(obj)("no namespace")
        images = {c.get("image") for o in workloads for c in containers(o.body)}
        if len(images) > 1:
            self.report(objs[0].origin, f"containers run different images {sorted(images)}")
        for obj in workloads:
            self.check_workload(obj, config_maps, secrets)
        for obj in objs:
            if obj.kind == "Service":
                self.check_service(obj, workloads)
            elif obj.kind == "PodDisruptionBudget":
                self.check_pdb(obj, workloads)
            elif obj.kind == "ConfigMap" and values is not None:
                self.check_nats_target(obj, values)

    def check_workload(self, obj: Obj, config_maps: dict[str, Obj], secrets: set[str]) -> None:
        spec = pod_spec(obj.body) or {}
        selector = (obj.body.get("spec") or {}).get("selector")
        if selector is not None and not selects(
            selector.get("matchLabels") or {}, pod_labels(obj.body)
        ):
            self.about(obj)("the selector does not match the pod labels")
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)
        for container in containers(obj.body):
            say = self.about(obj, f", container {container.get('name')}")
            image = str(container.get("image", ""))
            if not split_image(image)[1]:
                say(f"image {image!r} has no tag")
            security = {
                **(spec.get("securityContext") or {}),
                **(container.get("securityContext") or {}),
            }
            if security.get("runAsNonRoot") is not True:
                say("runAsNonRoot is not true")
            self.check_resources(say, container.get("resources") or {})
            command = [str(part) for part in container.get("command") or []]
            if not command:
                say("no command (the image runs none of itself)")
                continue
            binary = command[0]
            if self.facts.binary(binary) is None:
                say(f"{binary} is not a binary of the workspace (none in {self.facts.bin_dir})")
                continue
            args = command[1:] + [str(arg) for arg in container.get("args") or []]
            self.check_args(say, binary, args)
            env = self.container_env(say, container, config_maps)
            self.check_secret_refs(say, container, secrets)
            self.check_env(say, binary, env)
            if binary in self.facts.services:
                self.check_admin(say, obj, binary, container, args, env)
                given = env.get("DROVER_DRAIN_GRACE_MS") or ""
                drain_ms = int(given) if given.isdigit() else self.facts.default_drain_grace_ms
                if grace * 1000 <= drain_ms:
                    say(
                        f"terminationGracePeriodSeconds {grace} does not outlast the drain "
                        f"grace of {drain_ms} ms"
                    )

    def check_resources(self, say: Say, resources: dict) -> None:
        for what in ("cpu", "memory"):
            amounts = {}
            for part in ("requests", "limits"):
                value = (resources.get(part) or {}).get(what)
                if value is None:
                    say(f"no {what} {part}")
                elif quantity(value) is None:
                    say(f"{what} {part} {value!r} is not a quantity")
                else:
                    amounts[part] = quantity(value)
            if len(amounts) == 2 and amounts["requests"] > amounts["limits"]:
                say(f"{what} requests exceed the limits")

    def check_args(self, say: Say, binary: str, args: list[str]) -> None:
        if not args:
            return
        flags = self.facts.flags(binary)
        unknown = [arg.split("=", 1)[0] for arg in args if arg.startswith("-")]
        unknown = [flag for flag in unknown if flag not in flags]
        for flag in unknown:
            say(f"{binary} does not accept {flag}")
        if unknown:
            return
        code, text = self.facts.help(binary, args)
        if code != 0:
            first = next((line for line in text.splitlines() if line.strip()), "")
            say(f"{binary} refuses its arguments {args}: {first}")

    def container_env(
        self, say: Say, container: dict, config_maps: dict[str, Obj]
    ) -> dict[str, str]:
        """Every variable the container gets, with its value (empty when not plain)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            name = (source.get("configMapRef") or {}).get("name")
            if name is None:
                say("envFrom other than a ConfigMap cannot be checked")
            elif name not in config_maps:
                say(f"envFrom names ConfigMap {name}, which is not there")
            else:
                for key, value in (config_maps[name].body.get("data") or {}).items():
                    env[source.get("prefix", "") + key] = str(value)
        for item in container.get("env") or []:
            value = item.get("value")
            ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
            if ref is not None:
                data = (
                    config_maps[ref["name"]].body.get("data") or {}
                    if ref.get("name") in config_maps
                    else {}
                )
                if ref.get("key") not in data:
                    say(
                        f"{item['name']} comes from {ref.get('name')}/{ref.get('key')}, "
                        "which is not there"
                    )
                value = data.get(ref.get("key"))
            env[str(item["name"])] = "" if value is None else str(value)
        return env

    def check_secret_refs(self, say: Say, container: dict, secrets: set[str]) -> None:
        """A variable from a Secret these manifests do not hold (one the user creates) must be
        optional: otherwise the pod does not start until someone has made it."""
        for item in container.get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None or ref.get("name") in secrets:
                continue
            if ref.get("optional") is not True:
                say(
                    f"{item['name']} comes from Secret {ref.get('name')}, which is not part of "
                    "these manifests: mark it optional"
                )

    def check_env(self, say: Say, binary: str, env: dict[str, str]) -> None:
        known = self.facts.env_read_by(binary)
        if known is None:
            if env:
                say(f"which variables {binary} reads is not known")
            return
        for name in env:
            if name not in known:
                say(f"{binary} does not read the variable {name}")

    def check_admin(
        self, say: Say, obj: Obj, binary: str, container: dict, args: list[str], env: dict
    ) -> None:
        addr = flag_value(args, "--admin-addr") or env.get("DROVER_ADMIN_ADDR")
        if not addr:
            say("no --admin-addr: the admin server listens on 127.0.0.1 only")
            return
        parsed = parse_port(addr)
        if parsed is None:
            say(f"admin address {addr!r} is not host:port")
            return
        host, port = parsed
        if host not in ALL_INTERFACES:
            say(f"admin address {addr} cannot be reached from outside the pod")
        served = {port: "admin"}
        for flag, variable in SERVING_ADDRESSES.get(binary, ()):
            given = flag_value(args, flag) or env.get(variable)
            if not given:
                say(f"no {flag} (or {variable}): {binary} serves on 127.0.0.1 only")
                continue
            parsed = parse_port(given)
            if parsed is None:
                say(f"{flag} address {given!r} is not host:port")
                continue
            if parsed[0] not in ALL_INTERFACES:
                say(f"{flag} address {given} cannot be reached from outside the pod")
            served.setdefault(parsed[1], flag)
        ports = container.get("ports") or []
        named = {p.get("name"): p.get("containerPort") for p in ports if p.get("name")}
        if named.get("admin") != port:
            say(
                f"containerPort named admin is {named.get('admin')}, "
                f"not the --admin-addr port {port}"
            )
        listening = ", ".join(f"{what} is {number}" for number, what in served.items())
        for number in {p.get("containerPort") for p in ports} - set(served):
            say(f"containerPort {number}: nothing listens there ({listening})")
        paths = self.facts.admin_paths
        for kind in ("readiness", "liveness", "startup"):
            probe = container.get(f"{kind}Probe")
            if not probe:
                if kind != "startup":
                    say(f"no {kind}Probe")
                continue
            http = probe.get("httpGet")
            if http is None:
                say(f"{kind}Probe is not an httpGet of the admin server")
                continue
            target = http.get("port")
            resolved = named.get(target) if isinstance(target, str) else target
            if resolved != port:
                shown = target if resolved == target else f"{target} ({resolved})"
                say(f"{kind}Probe port {shown} is not the admin port {port}")
            path = str(http.get("path", "/")).split("?", 1)[0]
            if path not in paths:
                say(f"{kind}Probe path {path} is not served (only {sorted(paths)})")
            elif kind == "liveness" and path != LIVENESS_PATH:
                say(f"livenessProbe uses {path}; only {LIVENESS_PATH} stays up while NATS is down")
        annotations = pod_annotations(obj.body)
        if annotations.get("prometheus.io/scrape") == "true":
            scrape_port = str(annotations.get("prometheus.io/port", "(none)"))
            if scrape_port != str(port):
                say(f"prometheus.io/port {scrape_port} is not the admin port {port}")
            scrape_path = annotations.get("prometheus.io/path", "/metrics")
            if scrape_path not in paths:
                say(f"prometheus.io/path {scrape_path} is not served")

    def check_service(self, obj: Obj, workloads: list[Obj]) -> None:
        say = self.about(obj)
        selector = (obj.body.get("spec") or {}).get("selector") or {}
        pods = [w for w in workloads if selects(selector, pod_labels(w.body))]
        if not pods:
            say("selects no pods")
        for port in (obj.body.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for pod in pods:
                offered = [p for c in containers(pod.body) for p in c.get("ports") or []]
                if not any(target in (p.get("name"), p.get("containerPort")) for p in offered):
                    say(f"targetPort {target} is not a port of {pod.kind} {pod.name}")

    def check_pdb(self, obj: Obj, workloads: list[Obj]) -> None:
        say = self.about(obj)
        spec = obj.body.get("spec") or {}
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        pods = [w for w in workloads if selects(wanted, pod_labels(w.body))]
        if not pods:
            say("selects no pods")
        minimum = spec.get("minAvailable")
        for pod in pods:
            replicas = (pod.body.get("spec") or {}).get("replicas", 1)
            if isinstance(minimum, int) and minimum >= replicas:
                say(
                    f"minAvailable {minimum} with {replicas} replicas of {pod.name} "
                    "blocks every node drain"
                )

    # -- NATS ---------------------------------------------------------------------------

    def nats_values(self, path: Path) -> Optional[dict]:
        """The Helm values, checked; ``None`` when the file is missing."""
        if not path.is_file():
            self.report(NATS_VALUES, "missing")
            return None
        docs = load_docs(path)
        values = docs[0] if docs else {}
        config = values.get("config") or {}
        cluster = config.get("cluster") or {}
        jetstream = config.get("jetstream") or {}
        file_store = jetstream.get("fileStore") or {}
        pvc = file_store.get("pvc") or {}
        monitor = config.get("monitor") or {}
        wrong = [
            (cluster.get("enabled") is not True, "config.cluster.enabled is not true"),
            (
                cluster.get("replicas") != 3,
                f"config.cluster.replicas is {cluster.get('replicas')}, not 3",
            ),
            (jetstream.get("enabled") is not True, "config.jetstream.enabled is not true"),
            (
                file_store.get("enabled") is not True,
                "config.jetstream.fileStore.enabled is not true",
            ),
            (
                pvc.get("enabled") is False or not pvc.get("size"),
                "JetStream files are not on a volume (fileStore.pvc)",
            ),
            (
                monitor.get("enabled") is False or monitor.get("port", 8222) != 8222,
                "monitoring is not on 8222",
            ),
        ]
        for is_wrong, what in wrong:
            if is_wrong:
                self.report(NATS_VALUES, what)
        return values

    def check_nats_target(self, cm: Obj, values: dict) -> None:
        """The services' NATS URL and JetStream replicas fit the chart's values."""
        say = self.about(cm)
        data = cm.body.get("data") or {}
        config = values.get("config") or {}
        port = int((config.get("nats") or {}).get("port") or 4222)
        for url in str(data.get("DROVER_NATS_URL") or data.get("NATS_URL") or "").split(","):
            if not url.strip():
                continue
            parsed = parse_port(url.strip().split("://", 1)[-1].rsplit("@", 1)[-1])
            if parsed is None or parsed[1] != port:
                say(f"NATS URL {url.strip()} is not on the chart's client port {port}")
        replicas = str(data.get("DROVER_JS_REPLICAS", "1"))
        servers = int((config.get("cluster") or {}).get("replicas") or 1)
        if not replicas.isdigit() or int(replicas) > servers:
            say(f"DROVER_JS_REPLICAS={replicas} with {servers} NATS servers")


def check(
    root: Path = MANIFESTS, facts: Optional[Facts] = None, use_kubectl: Optional[bool] = None
) -> list[str]:
    """The problems of the manifest tree at ``root``; ``kubectl kustomize`` too if found."""
    if use_kubectl is None:
        use_kubectl = shutil.which("kubectl") is not None
    return Checker(root, facts).run(python=True, kubectl=use_kubectl)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else MANIFESTS
    problems = check(root)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {root}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
