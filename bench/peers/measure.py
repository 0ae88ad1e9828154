"""The two measurements every peer makes, as drover-bench makes them for Drover, printed as
JSON lines that drover-bench reads:

- lanes: N client threads, each submits a job, waits for its result, submits the next;
  {"measure": "lanes", "in_flight", "count", "seconds", "per_second", "latency"}.
- drain: a backlog submitted at once by several threads, timed from the first submission
  until every result is in;
  {"measure": "drain", "count", "submit_seconds", "seconds", "per_second"}.

A peer's client passes `submit()` (enqueue one job, return a handle) and `wait(handle)`
(block until that job's result is in).
"""

import argparse
import json
import threading
import time


def percentile(samples, p):
    if not samples:
        return 0.0
    return samples[round((len(samples) - 1) * p)] * 1000.0


def lanes(submit, wait, count, in_flight):
    latencies = []
    lock = threading.Lock()
    next_job = [0]

    def lane():
        while True:
            with lock:
                if next_job[0] >= count:
                    return
                next_job[0] += 1
            started = time.perf_counter()
            wait(submit())
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=lane) for _ in range(in_flight)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    latencies.sort()
    return {
        "measure": "lanes",
        "in_flight": in_flight,
        "count": len(latencies),
        "seconds": wall,
        "per_second": len(latencies) / wall,
        "latency": {
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "p999_ms": percentile(latencies, 0.999),
        },
    }


def drain(submit, wait, count, submitters):
    """Each of `submitters` threads submits its share of `count` as fast as it can, then
    waits for those results; the clock stops when the last thread has all of its own."""
    shares = [count // submitters + (1 if i < count % submitters else 0) for i in range(submitters)]
    submitted = [0.0] * submitters
    done = [0] * submitters
    start = threading.Barrier(submitters + 1)

    def submitter(index):
        start.wait()
        handles = [submit() for _ in range(shares[index])]
        submitted[index] = time.perf_counter()
        for handle in handles:
            wait(handle)
            done[index] += 1

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(submitters)]
    for thread in threads:
        thread.start()
    wall = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - wall
    return {
        "measure": "drain",
        "count": sum(done),
        "submit_seconds": max(submitted) - wall,
        "seconds": seconds,
        "per_second": sum(done) / seconds,
    }


def run(submit, wait, ready, args):
    """Waits for the workers (`ready()` succeeds), warms up, then prints one lanes line per
    concurrency in `args.in_flight` and, unless `args.drain` is 0, one drain line."""
    deadline = time.time() + 60
    while True:
        try:
            ready()
            break
        except Exception:
            if time.time() > deadline:
                raise
    lanes(submit, wait, 200, 8)
    for in_flight in [int(n) for n in args.in_flight.split(",") if n]:
        print(json.dumps(lanes(submit, wait, args.tasks, in_flight)), flush=True)
    if args.drain > 0:
        print(json.dumps(drain(submit, wait, args.drain, args.submitters)), flush=True)


def add_arguments(parser):
    parser.add_argument("--tasks", type=int, default=2000, help="jobs per lanes measurement")
    parser.add_argument("--in-flight", default="1,16,256", help="lanes, comma-separated")
    parser.add_argument("--drain", type=int, default=5000, help="backlog to drain (0 skips)")
    parser.add_argument("--submitters", type=int, default=16, help="threads submitting the backlog")


def main(submit, wait, ready):
    """A peer client's whole program: reads the arguments, then [`run`]s."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(submit, wait, ready, parser.parse_args())
