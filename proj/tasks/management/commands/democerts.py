from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from proj.signing import generate_demo_certs


class Command(BaseCommand):
    help = ("Write a throw-away self-signed key pair for DEMO_SIGNING=1 "
            "(default: DEMO_CERTS_DIR, i.e. proj/demo-certs/). Demo only.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, default=None)
        parser.add_argument("--days", type=int, default=365)

    def handle(self, *args: Any, **opts: Any) -> None:
        directory = opts["dir"] or settings.DEMO_CERTS_DIR
        paths = generate_demo_certs(directory, days=opts["days"])
        self.stdout.write(f"key {paths.key}\ncertificate {paths.cert}\nstore {paths.store}/")
