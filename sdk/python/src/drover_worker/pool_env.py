"""What a supervisor such as ``drover pool`` hands a worker process through its environment
(DESIGN §9): the workerID to register under, and the pool and group the process belongs to,
which become the labels ``pool`` and ``group``.

The supervisor's values win over those in code: the pool knows its processes by these
workerIDs and labels, and a worker registering under another workerID breaks its start-up
order. An empty value counts as unset.
"""

from __future__ import annotations

import logging
from typing import Mapping

from . import protocol
from .errors import ProtocolViolation

log = logging.getLogger("drover_worker")

#: The workerID the process registers under; it replaces the one given to ``Worker``.
WORKER_ID_VAR = "DROVER_WORKER_ID"
#: The poolID of the supervising pool, registered as the label ``pool``.
POOL_ID_VAR = "DROVER_POOL_ID"
#: The pool's group that started the process, registered as the label ``group``.
POOL_GROUP_VAR = "DROVER_POOL_GROUP"

POOL_LABEL = "pool"
GROUP_LABEL = "group"


def apply(worker_id: str, labels: Mapping[str, str], environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The workerID and labels to register with, given those in code and the environment.

    Raises :class:`~drover_worker.ProtocolViolation` when the workerID that counts is not
    valid, naming ``DROVER_WORKER_ID`` when it came from there.
    """
    labels = dict(labels)
    for label, var in ((POOL_LABEL, POOL_ID_VAR), (GROUP_LABEL, POOL_GROUP_VAR)):
        value = environ.get(var)
        if not value:
            continue
        previous = labels.get(label)
        if previous is not None and previous != value:
            log.info("drover: label %s=%s from %s replaces %s", label, value, var, previous)
        labels[label] = value
    from_env = environ.get(WORKER_ID_VAR)
    if not from_env:
        return protocol.check_worker_id(worker_id), labels
    try:
        protocol.check_worker_id(from_env)
    except ProtocolViolation as error:
        raise ProtocolViolation(f"{WORKER_ID_VAR}: {error}") from None
    if from_env != worker_id:
        log.info("drover: workerID %s from %s replaces %s", from_env, WORKER_ID_VAR, worker_id)
    return from_env, labels
