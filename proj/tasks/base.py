"""The base class every project task uses: Django-aware, and loud about failures."""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.contrib.django.task import DjangoTask

logger = logging.getLogger("tasks")


class ObservedTask(DjangoTask):
    """Logs each failure and retry once, with the context an on-call engineer needs.

    The message carries key=value pairs for plain-text logs and the same fields go into
    `extra` for JSON formatters. Arguments are deliberately left out: they hold user data
    (emails, tokens) that does not belong in logs.
    """

    abstract = True
    #: Floor for retry countdowns. Full jitter (retry_jitter=True) draws from 0..backoff,
    #: and a 0 s countdown lets the next attempt finish before this attempt has stored its
    #: RETRY state: the result row then ends as RETRY although the task succeeded (seen
    #: with django-db on RabbitMQ). Half a second keeps the states in order.
    min_retry_countdown: float = 0.5

    def _context(self, exc: BaseException, task_id: str) -> dict[str, Any]:
        request = self.request
        delivery = request.delivery_info or {}
        return {
            "task_id": task_id,
            "task_name": self.name,
            "task_retries": request.retries or 0,
            "task_max_retries": self.max_retries,
            "task_queue": delivery.get("routing_key") or "unknown",
            "task_worker": request.hostname or "unknown",
            "exc_type": type(exc).__name__,
        }

    @staticmethod
    def _render(event: str, ctx: dict[str, Any]) -> str:
        return event + " " + " ".join(f"{k}={v}" for k, v in ctx.items())

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: Any = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Any:
        if eta is None and countdown is not None:
            countdown = max(countdown, self.min_retry_countdown)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: ExceptionInfo) -> None:
        ctx = self._context(exc, task_id)
        logger.error("%s", self._render("task_failed", ctx), extra=ctx)

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: ExceptionInfo) -> None:
        ctx = self._context(exc, task_id)
        logger.warning("%s", self._render("task_retry", ctx), extra=ctx)
