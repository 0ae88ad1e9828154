"""Container images that stand in for the public ones, built on this machine with no pull.

The compose files name public images (``nats``, the Drover image, Jaeger), each overridable by
an environment variable. Machines without a registry (CI here) cannot pull them, so the
container tests build stand-ins from what the machine has and point those variables at them:

- a Debian base (``debootstrap --variant=minbase``, then ``docker import``), its root file
  system cached under ``.tools/docker/`` keyed by its inputs, so it is made once per machine;
- NATS ``FROM scratch`` around the pinned static nats-server (``scripts/install-nats-server``)
  and a static busybox, which gives it the ``sh`` and ``wget`` of the public alpine image that
  the compose healthcheck uses;
- Drover from the binaries ``cargo build`` left in the target directory, on the base, as a
  non-root user, like ``deploy/Dockerfile``'s image;
- a Jaeger stand-in: ``drover-test-otlp-sink`` on the base, keeping every OTLP/HTTP export it
  is sent for the test to read (:func:`received_spans`).

``python integration-tests/python/standin_images.py`` builds them all and prints the
variables to export, for running the compose files by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from drover_harness import bin_dir, nats_server_binary  # noqa: E402

#: The Debian suite of the base, the one the host binaries are built on.
SUITE = "bookworm"
#: Where debootstrap fetches packages from: the mirror apt uses on this machine.
MIRROR = os.environ.get("DROVER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: Bumped when the way the base is made changes, so that the cache key changes with it.
BASE_RECIPE = "minbase-trimmed-1"
#: Paths removed from the base: documentation, locales and package lists nothing here reads.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")
CACHE = REPO / ".tools" / "docker"
#: Every binary the Drover image holds (deploy/Dockerfile's list).
DROVER_BINARIES = (
    "drover",
    "drover-registry",
    "drover-heartbeat-monitor",
    "drover-scheduler",
    "drover-log-collector",
    "drover-auth",
    "drover-console",
    "drover-example-worker",
)
SINK_BINARY = "drover-test-otlp-sink"
#: The non-root user of the Drover image (the distroless ``nonroot`` user).
NONROOT = "65532:65532"
BUSYBOX = "/bin/busybox"


@dataclass(frozen=True)
class Images:
    """Tags of the stand-ins, and the environment that points the compose files at them."""

    drover: str
    nats: str
    jaeger: str

    def env(self) -> dict[str, str]:
        return {"DROVER_IMAGE": self.drover, "NATS_IMAGE": self.nats, "JAEGER_IMAGE": self.jaeger}


def docker_missing() -> Optional[str]:
    """Why the container tests cannot run here, or ``None`` when Docker and Compose answer."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    if compose_command() is None:
        return "neither docker-compose nor the docker compose plugin is installed"
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the Docker daemon does not answer: {probe.stderr.strip()}"
    return None


def compose_command() -> Optional[list[str]]:
    """``docker-compose`` (1.29 here) or, where only the v2 plugin exists, ``docker compose``."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _say(message: str) -> None:
    print(f"standin-images: {message}", file=sys.stderr, flush=True)


def _digest(*parts: bytes | str) -> str:
    """A short digest of what an image is made of (its Dockerfile, its files): a cached
    stand-in is rebuilt when any of them changes."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
    return hasher.hexdigest()[:12]


def _build(tag: str, dockerfile: str, files: dict[str, Path]) -> str:
    """Builds ``tag`` from ``dockerfile`` with ``files`` (name in context -> source) as context.

    The legacy builder is used: it needs no buildx and, with every ``FROM`` image present
    locally, never contacts a registry.
    """
    with tempfile.TemporaryDirectory(prefix="drover-image-") as context:
        for name, source in files.items():
            target = Path(context) / name
            shutil.copy2(source, target)
            if shutil.which("strip") and name.startswith("drover"):
                # Debug builds carry hundreds of MB of symbols the container does not need.
                subprocess.run(["strip", "--strip-debug", str(target)], capture_output=True)
        (Path(context) / "Dockerfile").write_text(dockerfile)
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        _run(["docker", "build", "--quiet", "-t", tag, context], env=env)
    return tag


def base_key() -> str:
    return hashlib.sha256(f"{SUITE}|{MIRROR}|{BASE_RECIPE}|{TRIM}".encode()).hexdigest()[:12]


def ensure_base() -> str:
    """The Debian base image: from Docker if present, else from the cached root file system,
    else made with debootstrap (about 40 s) and cached."""
    key = base_key()
    tag = f"drover-standin/debian:{SUITE}-{key}"
    if _image_exists(tag):
        return tag
    tarball = CACHE / f"debian-{SUITE}-{key}.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (apt-get install debootstrap; scripts/test does it)")
        CACHE.mkdir(parents=True, exist_ok=True)
        _say(f"making a Debian {SUITE} base with debootstrap (once per machine; cached in {tarball})")
        with tempfile.TemporaryDirectory(prefix="drover-debootstrap-", dir=CACHE) as scratch:
            root = Path(scratch) / "root"
            _run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
            for path in TRIM:
                shutil.rmtree(root / path, ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", str(root), "-cf", str(partial), "."])
            partial.rename(tarball)
    _say(f"importing {tarball.name} as {tag}")
    with tarball.open("rb") as stream:
        _run(["docker", "import", "-", tag], stdin=stream)
    return tag


def ensure_nats() -> str:
    """NATS ``FROM scratch``: the pinned static nats-server with busybox for the healthcheck."""
    server = Path(nats_server_binary()).resolve()
    version = _run([str(server), "--version"]).stdout.strip().split()[-1].lstrip("v")
    busybox = Path(BUSYBOX)
    if not busybox.exists() or "statically linked" not in _run(["file", "-L", str(busybox)]).stdout:
        raise RuntimeError(f"a static busybox is needed at {BUSYBOX} (apt-get install busybox-static; scripts/test does it)")
    dockerfile = "\n".join(
        [
            "FROM scratch",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
            "COPY nats-server /usr/local/bin/nats-server",
            "ENV PATH=/usr/local/bin:/bin",
            "EXPOSE 4222 6222 8222",
            'ENTRYPOINT ["/usr/local/bin/nats-server"]',
            "",
        ]
    )
    tag = f"drover-standin/nats:{version}-{_digest(dockerfile, server.read_bytes(), busybox.read_bytes())}"
    if _image_exists(tag):
        return tag
    _say(f"building {tag}")
    return _build(tag, dockerfile, {"busybox": busybox, "nats-server": server})


def _binaries(names: tuple[str, ...]) -> dict[str, Path]:
    directory = bin_dir()
    found = {name: directory / name for name in names}
    missing = [name for name, path in found.items() if not path.is_file()]
    if missing:
        raise RuntimeError(f"not built in {directory}: {', '.join(missing)} (cargo build --workspace --bins)")
    return found


def build_drover(base: str, tag: str = "drover-standin/drover:test") -> str:
    """The Drover image from the host's binaries, as a non-root user, tagged ``tag`` (a test
    of its own can use a tag of its own, which a concurrent build of another test's binaries
    cannot move under it)."""
    _say(f"building {tag} from {bin_dir()}")
    copies = "\n".join(f"COPY {name} /usr/local/bin/{name}" for name in DROVER_BINARIES)
    dockerfile = f"FROM {base}\n{copies}\nUSER {NONROOT}\nCMD [\"drover\", \"--help\"]\n"
    return _build(tag, dockerfile, _binaries(DROVER_BINARIES))


def build_jaeger(base: str) -> str:
    """The Jaeger stand-in: the OTLP sink on Jaeger's OTLP/HTTP (4318) and UI (16686) ports."""
    tag = "drover-standin/jaeger:test"
    _say(f"building {tag}")
    dockerfile = (
        f"FROM {base}\nCOPY {SINK_BINARY} /usr/local/bin/{SINK_BINARY}\nUSER {NONROOT}\nEXPOSE 4318 16686\n"
        f'ENTRYPOINT ["/usr/local/bin/{SINK_BINARY}", "0.0.0.0:4318", "0.0.0.0:16686"]\n'
    )
    return _build(tag, dockerfile, _binaries((SINK_BINARY,)))


def ensure_distroless(base: str) -> str:
    """A stand-in for ``gcr.io/distroless/cc-debian12:nonroot``: ``FROM scratch`` with only
    the C runtime the binaries link (glibc, libm, libgcc_s) and the nonroot user; no shell
    (and, unlike the real one, no CA certificates: nothing here speaks TLS). deploy/Dockerfile's
    runtime, to show the binaries need nothing more."""
    libs = ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libgcc_s.so.1")
    dockerfile = "\n".join(
        [
            f"FROM {base} AS debian",
            "RUN echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > /passwd"
            " && echo 'nonroot:x:65532:' > /group && mkdir -p /home/nonroot /tmp-empty",
            "FROM scratch",
            *(f"COPY --from=debian /lib/x86_64-linux-gnu/{lib} /lib/x86_64-linux-gnu/{lib}" for lib in libs),
            "COPY --from=debian /lib64/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2",
            "COPY --from=debian /passwd /etc/passwd",
            "COPY --from=debian /group /etc/group",
            "COPY --from=debian --chown=65532:65532 /home/nonroot /home/nonroot",
            "COPY --from=debian /tmp-empty /tmp",
            "USER 65532:65532",
            "",
        ]
    )
    tag = f"drover-standin/distroless-cc:{_digest(dockerfile)}"
    if _image_exists(tag):
        return tag
    _say(f"building {tag}")
    return _build(tag, dockerfile, {})


def ensure_rust(base: str) -> str:
    """A stand-in for ``rust:1-bookworm``: the base with gcc, this machine's stable Rust
    toolchain (``rustup``'s copy) and its CA certificates, so that cargo inside a build
    reaches crates.io as cargo on the host does."""
    rustc = _run(["rustc", "--print", "sysroot"]).stdout.strip()
    toolchain = Path(rustc)
    version = _run(["rustc", "--version"]).stdout.split()[1]
    # apt reaches Debian over plain HTTP; cargo's HTTPS goes through this machine's CAs.
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
            " gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*",
            "COPY ca-certificates.crt /usr/local/share/ca-certificates/host.crt",
            "COPY rust /usr/local/rust",
            "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            " CARGO_HOME=/usr/local/cargo SSL_CERT_FILE=/usr/local/share/ca-certificates/host.crt"
            " CARGO_HTTP_CAINFO=/usr/local/share/ca-certificates/host.crt",
            "",
        ]
    )
    tag = f"drover-standin/rust:{version}-{_digest(dockerfile)}"
    if _image_exists(tag):
        return tag
    _say(f"building {tag} from {toolchain} (copies the toolchain; a minute or two)")
    with tempfile.TemporaryDirectory(prefix="drover-rust-image-") as context:
        shutil.copytree(toolchain, Path(context) / "rust", symlinks=True, ignore=shutil.ignore_patterns("doc", "share"))
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", Path(context) / "ca-certificates.crt")
        (Path(context) / "Dockerfile").write_text(dockerfile)
        _run(["docker", "build", "--quiet", "-t", tag, context], env=dict(os.environ, DOCKER_BUILDKIT="0"))
    return tag


def ensure_all() -> Images:
    """Every stand-in, built or found. ``DROVER_TEST_DROVER_IMAGE`` names a Drover image to
    use instead of building one from the host's binaries (scripts/check-dockerfile passes the
    image deploy/Dockerfile built)."""
    base = ensure_base()
    drover = os.environ.get("DROVER_TEST_DROVER_IMAGE") or build_drover(base)
    return Images(drover=drover, nats=ensure_nats(), jaeger=build_jaeger(base))


def received_requests(url: str) -> list[tuple[str, bytes]]:
    """The export requests the sink at ``url`` (its ``/received``) has kept: (content type, body)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        data = response.read()
    kept, at = [], 0
    while at < len(data):
        parts = []
        for _ in range(2):
            (length,) = struct.unpack_from(">I", data, at)
            at += 4
            parts.append(data[at : at + length])
            at += length
        kept.append((parts[0].decode(), parts[1]))
    return kept


def main() -> int:
    reason = docker_missing()
    if reason:
        print(f"standin-images: {reason}", file=sys.stderr)
        return 1
    for key, value in ensure_all().env().items():
        print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
