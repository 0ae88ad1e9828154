"""A Dramatiq app with one no-op actor on a Redis broker, with the Results middleware on a
Redis backend so that a client can wait for each job's result.

The broker keeps Dramatiq's default middleware except Prometheus: metrics export is off
here as Drover's telemetry export is off in drover-bench. The Redis broker acknowledges a
message only once the actor has returned, so a crashed worker's jobs are redelivered.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Prometheus, default_middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

broker = RedisBroker(
    url=os.environ["DRAMATIQ_BROKER_URL"],
    middleware=[middleware() for middleware in default_middleware if middleware is not Prometheus],
)
broker.add_middleware(Results(backend=RedisBackend(url=os.environ["DRAMATIQ_RESULT_BACKEND"])))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop(params=None):
    return None
