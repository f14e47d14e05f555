"""Message signing for the demo: throw-away certificates and Celery's auth serializer.

Celery signs task (and control) messages with `security_key` and verifies them against the
certificates in `security_cert_store`. Events are not signed: they stay JSON, so the
exporter reads them exactly as it does without signing.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class CertPaths:
    key: Path
    cert: Path
    store: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CertPaths:
        return cls(directory / "worker.key", directory / "worker.crt", directory / "store")

    def missing(self) -> list[Path]:
        return [p for p in (self.key, self.cert, self.store) if not p.exists()]


def setup_signing(app: Celery, certs_dir: Path) -> None:
    paths = CertPaths.in_dir(Path(certs_dir))
    missing = paths.missing()
    if missing:
        raise ImproperlyConfigured(
            f"DEMO_SIGNING=1 but {', '.join(map(str, missing))} not found; create them with "
            "`DEMO_SIGNING=0 python manage.py democerts`")
    # Disables pickle, yaml and msgpack process-wide and keeps json for results and
    # events; 'auth' is registered by setup_security itself.
    app.setup_security(allowed_serializers=["json"])


def generate_demo_certs(directory: Path, common_name: str = "celery-demo-worker",
                        days: int = 365) -> CertPaths:
    """Write a self-signed key pair for the demo. Not for production: no CA, no rotation."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    paths = CertPaths.in_dir(Path(directory))
    paths.store.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little so a worker with a slightly slow clock accepts it.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    paths.key.chmod(0o600)  # O_CREAT's mode does not apply to an existing file
    paths.cert.write_bytes(cert_pem)
    # Celery loads every file in the store as a certificate: keep the key out of it.
    (paths.store / "worker.crt").write_bytes(cert_pem)
    return paths
