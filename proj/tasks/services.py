"""Business operations called by views and commands; they own their transactions."""

from __future__ import annotations

from django.db import transaction

from tasks.models import Signup
from tasks.tasks import send_welcome_email


def register_signup(email: str) -> Signup:
    """Create the signup and queue its welcome email once the row is committed.

    delay_on_commit (Celery 5.4+) publishes from transaction.on_commit: a worker can never
    pick the task up before the row is visible, and a rollback, here or in a caller's outer
    transaction, means no task at all.
    """
    with transaction.atomic():
        signup = Signup.objects.create(email=email)
        send_welcome_email.delay_on_commit(signup.pk)
    return signup
