"""Counts the NATS messages one Drover run costs, by subject, with their average size.

Run against a local stack (`drover dev --nats-port 4333`), with the Python SDK installed
(scripts/test puts it in .tools/venv):

    .tools/venv/bin/python bench/profile/messages_per_run.py [RUNS] [IN_FLIGHT]

It starts one Python SDK worker for `bench.noop`, subscribes to every subject (`>`, which
also sees JetStream deliveries, API calls and acknowledgements), keeps IN_FLIGHT runs going
until RUNS are done, and prints messages per run by subject pattern. IDs are folded into
`*`, the worker's ID into `<w>`; `*.*.*` are replies (PubAcks and request replies).
"""
import asyncio, collections, json, os, re, sys, time

import nats
from drover_worker import Worker

URL = os.environ.get("DROVER_NATS_URL", "nats://127.0.0.1:4333")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
LANES = int(sys.argv[2]) if len(sys.argv) > 2 else 16

def norm(subject):
    t = subject.split(".")
    out = []
    for i, tok in enumerate(t):
        if re.fullmatch(r"[0-9A-Za-z_-]{20,}", tok) or re.fullmatch(r"\d+", tok) or tok.startswith("_INBOX") or re.fullmatch(r"[0-9a-f-]{30,}", tok):
            out.append("*")
        elif subject.startswith("$JS.ACK") and i >= 2:
            out.append("*")
        elif tok.startswith("bench-w"):
            out.append("<w>")
        else:
            out.append(tok)
    s = ".".join(out)
    if s.startswith("_INBOX"): s = "_INBOX (replies)"
    return s

async def main():
    spy = await nats.connect(URL)
    counts = collections.Counter(); sizes = collections.Counter()
    counting = False
    async def cb(msg):
        if counting:
            k = norm(msg.subject); counts[k] += 1; sizes[k] += len(msg.data)
    await spy.subscribe(">", cb=cb)
    w = Worker("bench-w1", nats_url=URL, capacity=64)
    @w.routine("bench.noop")
    async def noop(ctx, params):
        return None
    await w.start()
    nc = await nats.connect(URL)
    done = {}
    async def ev(msg):
        b = json.loads(msg.data)
        if b["payload"]["status"] == "SUCCEEDED":
            f = done.pop(b["payload"]["runID"], None)
            if f and not f.done(): f.set_result(True)
    await nc.subscribe("v1.run.events.*", cb=ev)
    await asyncio.sleep(2)
    spec = json.dumps({"v": 1, "payloadKey": "v1.routine.request_start", "payload": {"routineID": "bench.noop", "params": {}}}).encode()
    async def one():
        r = await nc.request("v1.routine.request_start", spec, timeout=10)
        body = json.loads(r.data)
        rid = body["payload"]["runID"]
        f = asyncio.get_running_loop().create_future()
        done[rid] = f
        await asyncio.wait_for(f, 30)
    # warm-up
    for _ in range(20): await one()
    nonlocal_n = [0]
    async def lane():
        while nonlocal_n[0] < N:
            nonlocal_n[0] += 1
            await one()
    counting = True
    t = time.time()
    await asyncio.gather(*[lane() for _ in range(LANES)])
    el = time.time() - t
    counting = False
    print(f"{N} runs in {el:.2f}s ({N/el:.0f}/s), messages per run by subject:")
    total = 0
    for k, v in counts.most_common():
        total += v
        print(f"  {v/N:6.2f}  {sizes[k]/max(v,1):7.0f} B  {k}")
    print(f"  total {total/N:.2f} messages per run")
    await w.stop(grace=1)
asyncio.run(main())
