"""A Celery app with one no-op task, configured the way a careful user would: acks_late
(a task is acknowledged only once done, so a crashed worker's task is redelivered) and a
prefetch of one."""

import os

from celery import Celery

app = Celery(
    "noop",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(params=None):
    return None
