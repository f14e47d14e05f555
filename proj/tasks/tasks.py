"""The project's Celery tasks.

Names are explicit (`tasks.<verb>`) so they stay stable when modules move: they are the
`name` label on every exporter metric and the keys of CELERY_TASK_ROUTES.

acks_late is on where running a task twice is harmless (pure computations, reports,
idempotent imports): a worker killed mid-task then leaves the message for another worker.
The emails keep early acks: a duplicate email is worse than a retry by hand.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from datetime import timedelta
from smtplib import SMTPException
from typing import Any

from billiard.process import current_process
from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from tasks import work
from tasks.base import ObservedTask
from tasks.exceptions import ExternalServiceError
from tasks.models import Signup

logger = logging.getLogger("tasks")

_MAIL_RETRY = {"autoretry_for": (SMTPException, ConnectionError), "retry_backoff": True,
               "retry_backoff_max": 300, "retry_jitter": True, "max_retries": 5}


@shared_task(name="tasks.send_welcome_email", base=ObservedTask, bind=True, **_MAIL_RETRY)
def send_welcome_email(self: ObservedTask, signup_id: int) -> dict[str, Any]:
    signup = Signup.objects.get(pk=signup_id)
    if signup.welcome_sent_at is not None:
        return {"signup": signup_id, "sent": False}
    send_mail("Welcome aboard", "Thanks for signing up.", settings.DEFAULT_FROM_EMAIL,
              [signup.email])
    Signup.objects.filter(pk=signup_id, welcome_sent_at__isnull=True).update(
        welcome_sent_at=timezone.now())
    return {"signup": signup_id, "sent": True}


@shared_task(name="tasks.send_password_reset", base=ObservedTask, bind=True, **_MAIL_RETRY)
def send_password_reset(self: ObservedTask, email: str) -> dict[str, Any]:
    # The token is only ever in the email body: not in args, results or logs.
    token = secrets.token_urlsafe(24)
    send_mail("Reset your password", f"Use this code within 15 minutes: {token}",
              settings.DEFAULT_FROM_EMAIL, [email])
    return {"sent": True}


@shared_task(name="tasks.resize_image", base=ObservedTask, bind=True, acks_late=True)
def resize_image(self: ObservedTask, width: int = 1600, height: int = 1200,
                 max_side: int = 256, seed: int = 0) -> dict[str, Any]:
    return work.make_thumbnail(width, height, max_side, seed)


@shared_task(name="tasks.crunch_numbers", base=ObservedTask, bind=True, acks_late=True,
             soft_time_limit=60, time_limit=90)
def crunch_numbers(self: ObservedTask, limit: int) -> dict[str, Any]:
    started = time.perf_counter()
    primes = work.count_primes(limit)
    return {"limit": limit, "primes": primes,
            "seconds": round(time.perf_counter() - started, 4)}


@shared_task(name="tasks.import_record", base=ObservedTask, bind=True, acks_late=True)
def import_record(self: ObservedTask, record: dict[str, Any]) -> dict[str, Any]:
    # Bad records fail (KeyError/ValueError) rather than retry: retrying cannot fix them.
    return work.normalise_record(record)


@shared_task(name="tasks.call_flaky_service", base=ObservedTask, bind=True, acks_late=True,
             autoretry_for=(ExternalServiceError,),
             retry_backoff=1,  # 1 s, 2 s, 4 s, ... before jitter
             retry_backoff_max=60,
             retry_jitter=True,  # full jitter: spreads a thundering herd of retries
             max_retries=3)
def call_flaky_service(self: ObservedTask, endpoint: str = "billing", fail_first: int = 0,
                       latency: float = 0.05) -> dict[str, Any]:
    return work.call_external_service(endpoint, self.request.retries or 0, fail_first, latency)


@shared_task(name="tasks.process_batch", base=ObservedTask, bind=True, acks_late=True)
def process_batch(self: ObservedTask, items: list[int], chunk_size: int = 100) -> dict[str, Any]:
    total, checksum, chunks = len(items), 0, 0
    for chunk in work.chunked(items, chunk_size):
        checksum = (checksum + sum(work.score_item(i) for i in chunk)) % 1_000_003
        chunks += 1
        # One progress write per chunk, not per item: the result backend is a database.
        self.update_state(state="PROGRESS", meta={"done": min(chunks * chunk_size, total),
                                                  "total": total})
    return {"items": total, "chunks": chunks, "checksum": checksum}


@shared_task(name="tasks.slow_report", base=ObservedTask, bind=True, acks_late=True,
             soft_time_limit=600, time_limit=660)
def slow_report(self: ObservedTask, seconds: float, rows: int = 1000) -> dict[str, Any]:
    # Stands in for a report that waits on a slow database: it mostly sleeps, which is what
    # makes queues and prefetch buffers back up behind it.
    deadline = time.monotonic() + max(0.0, seconds)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
    return {"rows": rows, "seconds": seconds}


# --- periodic tasks (CELERY_BEAT_SCHEDULE in proj/settings.py) ------------------------------
# Each is cheap, idempotent and safe to run late or twice: beat gives no exactly-once.

#: A welcome email still unsent this long after its signup is taken as lost (the process died
#: between the commit and the publish, or the message was dropped) and queued again.
WELCOME_EMAIL_GRACE = timedelta(minutes=5)
#: At most this many re-queued per sweep, so a backlog drains over several runs.
RESEND_BATCH = 100


@shared_task(name="tasks.resend_welcome_emails", base=ObservedTask, bind=True, acks_late=True)
def resend_welcome_emails(self: ObservedTask) -> dict[str, Any]:
    """Re-queue welcome emails whose signup committed but whose email never went out."""
    cutoff = timezone.now() - WELCOME_EMAIL_GRACE
    ids = list(Signup.objects.filter(welcome_sent_at__isnull=True, created_at__lt=cutoff)
               .order_by("pk").values_list("pk", flat=True)[:RESEND_BATCH])
    for signup_id in ids:
        # send_welcome_email checks welcome_sent_at itself: a duplicate sends nothing.
        send_welcome_email.delay(signup_id)
    if ids:
        logger.warning("re-queued %d lost welcome email(s)", len(ids))
    return {"requeued": len(ids)}


@shared_task(name="tasks.cleanup_results", base=ObservedTask, bind=True, acks_late=True)
def cleanup_results(self: ObservedTask) -> dict[str, Any]:
    """Delete stored task results older than CELERY_RESULT_EXPIRES.

    celery.backend_cleanup does the same once a night; under the demo's steady load the
    result table grows by hundreds of thousands of rows a day, so this runs more often and
    keeps every delete small.
    """
    from django_celery_results.models import TaskResult

    cutoff = timezone.now() - settings.CELERY_RESULT_EXPIRES
    deleted, _ = TaskResult.objects.filter(date_done__lt=cutoff).delete()
    return {"deleted": deleted}


@shared_task(name="tasks.signup_report", base=ObservedTask, bind=True, acks_late=True)
def signup_report(self: ObservedTask, minutes: int = 5) -> dict[str, Any]:
    """Signups of the last `minutes` and welcome emails still pending, for the log."""
    since = timezone.now() - timedelta(minutes=minutes)
    recent = Signup.objects.filter(created_at__gte=since)
    report = {"minutes": minutes, "signups": recent.count(),
              "welcome_pending": recent.filter(welcome_sent_at__isnull=True).count()}
    logger.info("signup report: %(signups)d signup(s) in %(minutes)d min, "
                "%(welcome_pending)d welcome email(s) pending", report)
    return report


@shared_task(name="tasks.crash_worker", base=ObservedTask, bind=True)
def crash_worker(self: ObservedTask, after: float = 3.0) -> None:
    """DEMO ONLY (`loadgen --scenario interrupted`): kills the worker that runs it.

    Stands in for what takes a worker down mid-task in production (the OOM killer, a node
    drained without a grace period): it SIGKILLs its prefork worker's main process, so no
    worker-offline and no terminal task event are sent, heartbeats stop, and the exporter
    counts the task in celery_task_interrupted_total. Routed to its own queue (`fragile`):
    only a worker started with `-Q fragile` ever runs it. Early ack (no acks_late): the
    message is gone once started, so a restarted worker does not crash again on it.
    """
    # In a pool child, billiard's process object remembers its parent: the worker's main
    # process. Anywhere else (the solo or threads pool, a direct call) the parent would be
    # whatever started the worker, so refuse rather than kill that.
    parent = getattr(current_process(), "_parent_pid", None)
    if not parent or parent == os.getpid():
        raise RuntimeError("tasks.crash_worker runs only in a prefork pool child")
    # task-started is sent by the main process when the pool accepts the job: give it time
    # to go out, or the exporter would never see the task running.
    time.sleep(max(0.0, after))
    os.kill(parent, signal.SIGKILL)
    os._exit(70)  # the orphaned pool child leaves with its worker
