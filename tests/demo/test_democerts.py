"""`manage.py democerts`: the demo's throw-away key pair, and --keep for re-runs.

docker-compose.yml runs `democerts --keep` on every `up`; replacing the key there would
leave running workers verifying with a certificate that no longer matches it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.usefixtures("demo")

FILES = ("worker.key", "worker.crt", "store/worker.crt")


def democerts(*args: str) -> str:
    out = io.StringIO()
    call_command("democerts", *args, stdout=out)
    return out.getvalue()


def contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def test_democerts_writes_a_key_pair_the_signing_setup_accepts(tmp_path: Path) -> None:
    from cryptography import x509
    from proj.signing import CertPaths

    directory = tmp_path / "certs"
    out = democerts("--dir", str(directory), "--days", "2")
    paths = CertPaths.in_dir(directory)
    assert paths.missing() == []
    assert f"key {paths.key}" in out
    assert paths.key.stat().st_mode & 0o777 == 0o600
    # Celery loads every file in the store as a certificate: only the certificate is there.
    assert [p.name for p in paths.store.iterdir()] == ["worker.crt"]
    assert (paths.store / "worker.crt").read_bytes() == paths.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 2 * 86400 <= lifetime.total_seconds() <= 2 * 86400 + 3600


def test_keep_leaves_an_existing_key_pair_alone(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    democerts("--dir", str(directory))
    before = contents(directory)

    out = democerts("--keep", "--dir", str(directory))
    assert out.strip() == f"kept the existing key pair in {directory}/ (--keep)"
    assert contents(directory) == before

    # Without --keep the pair is replaced.
    democerts("--dir", str(directory))
    after = contents(directory)
    assert after["worker.key"] != before["worker.key"]
    assert after["worker.crt"] != before["worker.crt"]


@pytest.mark.parametrize("present", [(), ("worker.key",), ("worker.key", "worker.crt")],
                         ids=["empty", "key-only", "no-store"])
def test_keep_writes_a_pair_that_is_missing_or_incomplete(tmp_path: Path,
                                                          present: tuple[str, ...]) -> None:
    from proj.signing import CertPaths

    directory = tmp_path / "certs"
    directory.mkdir()
    for name in present:
        (directory / name).write_bytes(b"stale")

    out = democerts("--keep", "--dir", str(directory))
    assert "kept" not in out
    assert CertPaths.in_dir(directory).missing() == []
    assert all(data != b"stale" for data in contents(directory).values())
