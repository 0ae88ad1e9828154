"""Fixtures of the SDK tests: the integration harness's fixtures (real nats-server and
service binaries from target/debug), plus ``drover``, a started stack with a plain client.

The harness lives in integration-tests/python (put on sys.path by the pytest settings in
sdk/python/pyproject.toml); its conftest is loaded under another module name so that its
fixtures and its report hook can be reused here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS_DIR = Path(__file__).resolve().parents[3] / "integration-tests" / "python"
if str(HARNESS_DIR) not in sys.path:
    sys.path.insert(0, str(HARNESS_DIR))

_spec = importlib.util.spec_from_file_location("drover_integration_conftest", HARNESS_DIR / "conftest.py")
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

# Re-exported: pytest finds fixtures and hooks among a conftest's attributes.
nats_server = _shared.nats_server
nats_client = _shared.nats_client
stack = _shared.stack
pytest_runtest_makereport = _shared.pytest_runtest_makereport

from sdk_support import Drover  # noqa: E402  (needs the harness on sys.path)

INTERVAL_MS = 200
LOST_AFTER_MS = 1000


@pytest.fixture
async def drover_with(stack):
    """A factory: ``d = await drover_with(lost_after_ms=...)`` starts registry, heartbeat-monitor
    and scheduler (pulse 200 ms, lost after 1 s unless overridden) and a plain client. At the
    end it stops the test's workers and checks that no SDK message was refused as malformed."""
    made: list[Drover] = []

    async def start(**options) -> Drover:
        options.setdefault("heartbeat_interval_ms", INTERVAL_MS)
        options.setdefault("lost_after_ms", LOST_AFTER_MS)
        s = await stack("registry", "monitor", "scheduler", **options)
        d = Drover(s, await s.client())
        await d.watch_errors()
        made.append(d)
        return d

    try:
        yield start
    finally:
        for d in made:
            await d.close()
    for d in made:
        assert d.malformed_errors() == [], f"the services refused SDK messages: {d.malformed_errors()}"


@pytest.fixture
async def drover(drover_with) -> Drover:
    """The stack with default timings (see ``drover_with``)."""
    return await drover_with()
