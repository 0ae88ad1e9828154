"""Measures Celery on the no-op task (bench/peers/measure.py): lanes waiting on each
result, then a drained backlog. JSON lines on stdout, as drover-bench reads them."""

import measure
from noop import noop


def submit():
    return noop.delay(None)


def wait(result):
    result.get(timeout=120)


def ready():
    noop.delay(None).get(timeout=2)


if __name__ == "__main__":
    measure.main(submit, wait, ready)
