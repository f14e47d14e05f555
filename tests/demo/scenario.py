"""A short end-to-end scenario run in its own interpreter, against whatever the environment
names (broker, database, signing). Used where the test process' own Django settings cannot
be (re)configured: message signing on, PostgreSQL instead of SQLite.

Prints one JSON line with what it observed; exits non-zero if a step timed out.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROJ_DIR = Path(__file__).resolve().parents[2] / "proj"
TIMEOUT = float(os.environ.get("SCENARIO_TIMEOUT", "30"))


def main() -> dict[str, Any]:
    sys.path.insert(0, str(PROJ_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    import django

    django.setup()
    from django.conf import settings
    from proj.celery import app
    from tasks import tasks
    from tasks.models import Signup
    from tasks.services import register_signup

    out: dict[str, Any] = {
        "signing": settings.DEMO_SIGNING,
        "task_serializer": app.conf.task_serializer,
        "db_engine": settings.DATABASES["default"]["ENGINE"],
    }
    crunch = tasks.crunch_numbers.delay(100)
    bad = tasks.import_record.delay({"email": "x@example.com"})
    flaky = tasks.call_flaky_service.delay("billing", fail_first=1, latency=0)
    signup = register_signup("scenario@example.com")

    out["crunch"] = crunch.get(timeout=TIMEOUT, interval=0.1)
    bad.get(timeout=TIMEOUT, interval=0.1, propagate=False)
    out["bad"] = {"state": bad.state, "exc_type": type(bad.result).__name__}
    out["flaky"] = flaky.get(timeout=TIMEOUT, interval=0.1)
    out["task_ids"] = [crunch.id, bad.id, flaky.id]

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        signup.refresh_from_db()
        if signup.welcome_sent_at is not None:
            break
        time.sleep(0.1)
    out["welcome_sent"] = signup.welcome_sent_at is not None
    out["signups"] = Signup.objects.count()
    return out


if __name__ == "__main__":
    print(json.dumps(main(), default=str))
