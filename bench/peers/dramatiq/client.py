"""Measures Dramatiq on the no-op actor (bench/peers/measure.py): lanes waiting on each
result, then a drained backlog. JSON lines on stdout, as drover-bench reads them."""

import measure
from noop import noop


def submit():
    return noop.send(None)


def wait(message):
    message.get_result(block=True, timeout=120_000)


def ready():
    noop.send(None).get_result(block=True, timeout=2_000)


if __name__ == "__main__":
    measure.main(submit, wait, ready)
