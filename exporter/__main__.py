"""`python -m celery_events_exporter`: the same as the `celery-events-exporter` console script."""

import sys

from celery_events_exporter.cli import main

sys.exit(main())
