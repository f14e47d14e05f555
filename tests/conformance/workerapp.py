"""The Celery app the conformance fleet runs: the integration app plus the task shapes only
the conformance workload needs (autoretry with countdown, Reject).

Imported by workers of every Celery version under test (5.3 to the newest), so it uses no
API newer than 5.3.
"""

from __future__ import annotations

from celery.exceptions import Reject

from tests.support.celeryapp import add, app, fail, sleep

__all__ = ["add", "app", "autoretry", "fail", "reject", "sleep"]


@app.task(name="conf.autoretry", bind=True, autoretry_for=(RuntimeError,),
          retry_kwargs={"countdown": 0.5, "max_retries": 3})
def autoretry(self, fail_times: int = 2) -> int:
    if self.request.retries < fail_times:
        raise RuntimeError(f"attempt {self.request.retries}")
    return self.request.retries


# Reject acts on a message not yet acknowledged: with early acks (the default) the worker
# sends no task-rejected at all.
@app.task(name="conf.reject", bind=True, acks_late=True)
def reject(self) -> None:
    raise Reject("refused on purpose", requeue=False)
