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

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: ExceptionInfo) -> None:
        ctx = self._context(exc, task_id)
        logger.error("%s", self._render("task_failed", ctx), extra=ctx)

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: ExceptionInfo) -> None:
        ctx = self._context(exc, task_id)
        logger.warning("%s", self._render("task_retry", ctx), extra=ctx)
