"""The web config file of Prometheus' exporter-toolkit: TLS and basic auth for /metrics.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                         # optional
      min_version: TLS12                             # optional
    basic_auth_users:
      alice: $2y$10$...   # bcrypt hash (htpasswd -nBC 10 alice)
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

from celery_events_exporter.config import ConfigError

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _ok: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    def check(self, user: str, password: str) -> bool:
        """bcrypt costs ~50 ms by design, so a verified pair is remembered (as a digest)."""
        hashed = self.users.get(user)
        if hashed is None:
            # Spend the same time as a real check so user names cannot be probed.
            bcrypt.checkpw(password.encode(), _DUMMY)
            return False
        token = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        with self._lock:
            if any(hmac.compare_digest(token, seen) for seen in self._ok):
                return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._ok) > 1000:
                self._ok.clear()
            self._ok.add(token)
        return True


_DUMMY = bcrypt.hashpw(b"dummy", bcrypt.gensalt(4))


def load(path: str) -> WebConfig:
    flag = "--web-config-file"
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{flag}: {path} must be a mapping")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise ConfigError(f"{flag}: unknown keys {sorted(unknown)}")
    config = WebConfig()
    tls = doc.get("tls_server_config")
    if tls:
        config.tls = _tls_context(tls, Path(path).parent, flag)
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError(f"{flag}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{flag}: the password of user {user!r} is not a bcrypt hash")
        config.users[str(user)] = hashed.encode()
    return config


def _tls_context(tls: dict, base: Path, flag: str) -> ssl.SSLContext:
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise ConfigError(f"{flag}: tls_server_config needs cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(str(tls.get("min_version", "TLS12")),
                                        ssl.TLSVersion.TLSv1_2)
    try:
        ctx.load_cert_chain(base / cert, base / key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{flag}: cannot load cert_file/key_file: {exc}") from None
    auth = str(tls.get("client_auth_type", "NoClientCert"))
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"{flag}: client_auth_type {auth!r} is not one of "
                          f"{', '.join(_CLIENT_AUTH)}")
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if tls.get("client_ca_file"):
        try:
            ctx.load_verify_locations(base / tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{flag}: cannot load client_ca_file: {exc}") from None
    elif auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"):
        raise ConfigError(f"{flag}: client_auth_type {auth} needs client_ca_file")
    return ctx
