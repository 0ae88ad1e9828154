"""Smoke tests of the harness against real processes."""

from __future__ import annotations

import os

import pytest
from nats.js.api import StorageType, StreamConfig

import drover_harness as harness


def process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def test_request_reply_round_trip(nats_server, nats_client):
    async def echo(msg):
        await msg.respond(b"pong:" + msg.data)

    responder = await nats_server.client()
    try:
        await responder.subscribe("harness.echo", cb=echo)
        await responder.flush()
        reply = await nats_client.request("harness.echo", b"ping", timeout=5)
        assert reply.data == b"pong:ping"
    finally:
        await responder.close()


async def test_restart_keeps_jetstream_messages(nats_server, nats_client):
    js = nats_client.jetstream()
    await js.add_stream(StreamConfig(name="HARNESS", subjects=["harness.>"], storage=StorageType.FILE))
    for i in range(3):
        await js.publish(f"harness.{i}", f"message {i}".encode())
    port, store, old_pid = nats_server.port, nats_server.store_dir, nats_server.pid

    await nats_server.restart()

    assert nats_server.port == port
    assert nats_server.store_dir == store
    assert nats_server.pid != old_pid and not process_exists(old_pid)
    fresh = await nats_server.client()
    try:
        info = await fresh.jetstream().stream_info("HARNESS")
        assert info.state.messages == 3
        for i in range(3):
            msg = await fresh.jetstream().get_msg("HARNESS", i + 1)
            assert (msg.subject, msg.data) == (f"harness.{i}", f"message {i}".encode())
    finally:
        await fresh.close()

    # The client from before the restart reconnects by itself.
    async def old_client_publishes() -> bool:
        await js.publish("harness.after", b"x", timeout=1)
        return True

    await harness.wait_until("the old client to publish again", old_client_publishes, timeout=10)
    log = nats_server.log_path.read_text()
    assert "start #1 of nats-server" in log and "start #2 of nats-server" in log


async def test_kill_then_restart(nats_server):
    old_pid = nats_server.pid
    nats_server.kill()
    assert not nats_server.is_running() and not process_exists(old_pid)
    await nats_server.restart()
    assert nats_server.is_running()
    client = await nats_server.client()
    await client.close()


async def test_close_leaves_nothing_behind():
    server = await harness.NatsServer.start()
    pid, directory = server.pid, server.dir
    server.close()
    assert not process_exists(pid)
    assert not directory.exists()


async def test_wait_until_names_what_it_waited_for():
    with pytest.raises(TimeoutError, match="the impossible"):
        await harness.wait_until("the impossible", lambda: False, timeout=0.2)
    calls = []

    def third_call():
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await harness.wait_for("the third call", third_call) == 3


async def test_nats_only_stack(stack):
    s = await stack()
    assert s.services == {}
    client = await s.client()
    try:
        await client.flush()
    finally:
        await client.close()
    await s.restart_nats()
    assert s.nats.is_running()


FAKE = "testkit-sleeper"  # a stand-in service built with the testkit crate


@pytest.mark.skipif(
    not (harness.bin_dir() / FAKE).exists(), reason="testkit-sleeper not built (cargo build --workspace --bins)"
)
async def test_stack_starts_and_restarts_a_service(stack):
    s = await stack(
        FAKE,
        heartbeat_interval_ms=150,
        env={"RUST_LOG": "debug"},
        service_args={FAKE: ["--ready-after-ms", "200", "--echo-env", "DROVER_NATS_URL",
                             "--echo-env", "DROVER_HEARTBEAT_INTERVAL_MS", "--echo-env", "RUST_LOG"]},
    )
    assert (await s.admin_get(FAKE, "/readyz"))[0] == 200
    log = s.service(FAKE).log_contents()
    for expected in (f"env DROVER_NATS_URL={s.url}", "env DROVER_HEARTBEAT_INTERVAL_MS=150", "env RUST_LOG=debug"):
        assert expected in log, log

    old_pid = s.service(FAKE).pid
    await s.restart_service(FAKE)
    assert s.service(FAKE).pid != old_pid and not process_exists(old_pid)
    assert "start #2 of testkit-sleeper" in s.service(FAKE).log_contents()

    assert await s.terminate_service(FAKE) == 0


@pytest.mark.skipif(not (harness.bin_dir() / FAKE).exists(), reason="testkit-sleeper not built")
async def test_a_service_that_dies_at_start_is_reported(stack):
    with pytest.raises(harness.GiveUp, match="exited"):
        await stack(FAKE, service_args={FAKE: ["--exit-after-ms", "0", "--exit-code", "2"]})


async def test_missing_binary_is_reported(stack):
    with pytest.raises(FileNotFoundError, match="cargo build --workspace --bins"):
        await stack("drover-no-such-binary")
