"""Submits no-op tasks with a fixed number in flight and reports throughput and latency
(submit to result) as JSON lines, like drover-bench does for Drover."""

import argparse
import json
import threading
import time

from noop import noop


def percentile(samples, p):
    if not samples:
        return 0.0
    return samples[round((len(samples) - 1) * p)] * 1000.0


def measure(count, in_flight):
    latencies = []
    lock = threading.Lock()
    next_task = [0]

    def lane():
        while True:
            with lock:
                if next_task[0] >= count:
                    return
                next_task[0] += 1
            started = time.perf_counter()
            noop.delay(None).get(timeout=60)
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--in-flight", default="1,16,256")
    args = parser.parse_args()
    # Wait for the worker, and warm up.
    deadline = time.time() + 60
    while True:
        try:
            noop.delay(None).get(timeout=2)
            break
        except Exception:
            if time.time() > deadline:
                raise
    measure(200, 8)
    for in_flight in [int(n) for n in args.in_flight.split(",")]:
        print(json.dumps(measure(args.tasks, in_flight)), flush=True)


if __name__ == "__main__":
    main()
