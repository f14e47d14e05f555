"""The project's Celery app: configured from Django settings, tasks found in installed apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
# Every CELERY_* Django setting becomes the matching lower-case Celery setting.
app.config_from_object("django.conf:settings", namespace="CELERY")

from django.conf import settings  # noqa: E402  (needs DJANGO_SETTINGS_MODULE set above)

if settings.DEMO_SIGNING:
    from proj.signing import setup_signing

    setup_signing(app, settings.DEMO_CERTS_DIR)

app.autodiscover_tasks()
