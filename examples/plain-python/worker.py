"""A Drover worker with no SDK: nats-py plus docs/protocol.md ("§" below are its sections).

Runs one routine, plain.upper: {"text": "hi"} -> {"text": "HI"}.

    DROVER_NATS_URL=nats://127.0.0.1:4222 python worker.py

Credentials and TLS come from the variables every Drover program reads: DROVER_NATS_CREDS,
_NKEY, _TOKEN, _USER, _PASSWORD, _TLS_CA, _TLS_CERT, _TLS_KEY (else the NATS_* ones).

Under `drover pool` it registers with the workerID the pool gives it and labels pool and group.
"""

import asyncio
import contextlib
import json
import os
import signal
import ssl

import nats

URL = os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4222")
W = os.environ.get("DROVER_WORKER_ID", f"plain-{os.getpid()}")  # §2: one subject token
POOL = {"pool": os.environ.get("DROVER_POOL_ID"), "group": os.environ.get("DROVER_POOL_GROUP")}
LABELS = {label: value for label, value in POOL.items() if value}  # set by drover pool
NATS_TLS_VARS = {"TLS_CA": "NATS_CA", "TLS_CERT": "NATS_CERT", "TLS_KEY": "NATS_KEY"}


def env(name: str) -> str | None:  # DROVER_NATS_<name>, else the NATS tools' variable; "" is unset
    return os.environ.get(f"DROVER_NATS_{name}") or os.environ.get(NATS_TLS_VARS.get(name, f"NATS_{name}")) or None


def credentials() -> dict:  # nats.connect options: creds file, nkey seed, token, user, TLS
    options = {"user_credentials": env("CREDS"), "token": env("TOKEN"), "user": env("USER"), "password": env("PASSWORD")}
    if seed := env("NKEY"):  # a file holding the seed, or the seed itself
        options["nkeys_seed_str" if seed.startswith("SU") and "/" not in seed else "nkeys_seed"] = seed
    if env("TLS_CA") or env("TLS_CERT"):  # verify the server against the CA; present our certificate
        options["tls"] = ssl.create_default_context(cafile=env("TLS_CA"))
        if env("TLS_CERT"):
            options["tls"].load_cert_chain(env("TLS_CERT"), env("TLS_KEY"))
    return {name: value for name, value in options.items() if value}


def envelope(key: str, payload: dict) -> bytes:  # §1: every body is {"payloadKey", "payload"}
    return json.dumps({"payloadKey": key, "payload": payload}).encode()


async def main() -> None:
    # Named after the worker, with replies on _INBOX.<w>.>: secured, a worker may subscribe only that and its inbox.
    nc = await nats.connect(URL, max_reconnect_attempts=-1, name=W, inbox_prefix=f"_INBOX.{W}", **credentials())
    runs: dict[tuple[str, int], asyncio.Task] = {}  # the attempts we hold, by (runID, attempt)
    status = "INITIALIZING"

    async def stored(key: str, payload: dict, msg_id: str) -> None:
        # §3: as a request, retried until JetStream's PubAck; the same Nats-Msg-Id every time.
        while True:
            try:
                reply = await nc.request(f"{key}.{W}", envelope(key, payload), timeout=2, headers={"Nats-Msg-Id": msg_id})
                if "stream" in json.loads(reply.data):
                    return
            except Exception:  # no reply yet (NATS or JetStream away): try again
                pass
            await asyncio.sleep(0.5)

    async def pulse(probe_id: str | None = None) -> None:  # §4.3; echo the probe's id when answering one
        payload = {"incarnation": incarnation, "status": status, "runs": [{"runID": r, "attempt": a} for r, a in runs]}
        if probe_id:
            payload["id"] = probe_id
        await nc.publish(f"v1.heartbeat.give_pulse.{W}", envelope("v1.heartbeat.give_pulse", payload))

    async def run(a: dict) -> None:  # §5.2 starting, the work, §5.3 completed
        ref, tag = {"runID": a["runID"], "attempt": a["attempt"]}, f"{a['runID']}-{a['attempt']}"
        try:
            await stored("v1.routine.starting", ref, f"{tag}-starting")
            try:
                end = {"outcome": "succeeded", "result": {"text": a["params"]["text"].upper()}}
            except (TypeError, KeyError, AttributeError):
                end = {"outcome": "failed", "error": {"message": "params.text must be a string", "type": "BadParams", "retryable": False}}
            await stored("v1.routine.completed", ref | end, f"{tag}-completed")
        finally:
            runs.pop((a["runID"], a["attempt"]), None)

    async def on_inbox(msg) -> None:  # §3: Drover to worker, on v1.worker.<w>.>
        body = json.loads(msg.data)
        key, p = body["payloadKey"], body["payload"]
        if key == "v1.heartbeat.check_pulse":  # §4.3: answer a probe at once
            await pulse(p["id"])
        elif key == "v1.routine.request_start" and status != "TERMINATING":  # §5.1 (§4.4: none after terminating)
            runs[(p["runID"], p["attempt"])] = asyncio.create_task(run(p))
        elif key == "v1.routine.cancel" and (task := runs.pop((p["runID"], p["attempt"]), None)):  # §5.4
            task.cancel()
        elif key == "v1.error":  # §9 (a real worker registers again on unknown_worker, §4.3)
            print("refused:", p["code"], p["message"], flush=True)

    await nc.subscribe(f"v1.worker.{W}.>", cb=on_inbox)  # §4.2: subscribe before ready
    register = {"workerID": W, "routines": ["plain.upper"], "labels": LABELS, "capacity": 4, "name": "plain python worker", "pid": os.getpid()}
    reply = await nc.request(f"v1.register.{W}", envelope("v1.register", register), timeout=5)  # §4.1
    registered = json.loads(reply.data)["payload"]
    incarnation, interval = registered["incarnation"], registered["heartbeatIntervalMs"] / 1000
    await pulse()  # §4.3: pulse from registration on, before ready
    await stored("v1.ready", {"incarnation": incarnation}, f"{W}-{incarnation}-ready")  # §4.2
    print(f"ready {W}", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():  # §4.3: every heartbeatIntervalMs, IDLE or WORKING by what we hold
        status = "WORKING" if runs else "IDLE"
        await pulse()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    status = "TERMINATING"  # §4.4: say so, finish what we hold (pulsing on), then go quiet
    await stored("v1.terminating", {"incarnation": incarnation, "reason": "SIGTERM"}, f"{W}-{incarnation}-terminating")
    while runs:
        await pulse()
        await asyncio.wait(list(runs.values()), timeout=interval)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
