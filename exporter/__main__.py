"""`python -m exporter`: the same as the `celery-events-exporter` console script."""

import sys

from exporter.cli import main

sys.exit(main())
