from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from proj.signing import CertPaths, generate_demo_certs


class Command(BaseCommand):
    help = ("Write a throw-away self-signed key pair for DEMO_SIGNING=1 "
            "(default: DEMO_CERTS_DIR, i.e. proj/demo-certs/). Demo only.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, default=None)
        parser.add_argument("--days", type=int, default=365)
        # docker compose runs this on every `up`: a new key would not match the certificate
        # the running workers verify with.
        parser.add_argument("--keep", action="store_true",
                            help="leave an existing key pair alone instead of replacing it")

    def handle(self, *args: Any, **opts: Any) -> None:
        directory = Path(opts["dir"] or settings.DEMO_CERTS_DIR)
        if opts["keep"] and not CertPaths.in_dir(directory).missing():
            self.stdout.write(f"kept the existing key pair in {directory}/ (--keep)")
            return
        paths = generate_demo_certs(directory, days=opts["days"])
        self.stdout.write(f"key {paths.key}\ncertificate {paths.cert}\nstore {paths.store}/")
