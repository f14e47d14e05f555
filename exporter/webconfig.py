"""The web config file of Prometheus' exporter-toolkit: TLS and basic auth for /metrics.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, default NoClientCert
      client_ca_file: ca.crt                         # with VerifyClientCertIfGiven /
                                                     # RequireAndVerifyClientCert
      min_version: TLS12                             # optional
      max_version: TLS13                             # optional
      client_allowed_sans: [prometheus.example]      # optional, with RequireAny... /
                                                     # RequireAndVerifyClientCert
    basic_auth_users:
      alice: $2y$10$...   # bcrypt hash (htpasswd -nBC 10 alice)

client_auth_type means what it means for exporter-toolkit (Go's tls.ClientAuthType):
    NoClientCert                no certificate asked for
    RequestClientCert           asked for, not required, not verified
    RequireAnyClientCert        required, not verified    (alias: RequireClientCert)
    VerifyClientCertIfGiven     not required; verified against client_ca_file if sent
    RequireAndVerifyClientCert  required and verified against client_ca_file
Only the last one authenticates clients by itself. Refused at start, each with an error
naming the key: a client_ca_file that would verify nothing (with NoClientCert, as
exporter-toolkit refuses it, and with the two unverified types), and a verifying type
without client_ca_file (Go would fall back to the system's web CAs, which cannot be meant
for scrapers).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from celery_events_exporter import tlsverify
from celery_events_exporter.config import ConfigError
from celery_events_exporter.webauth import BasicAuth, cost

FLAG = "--web-config-file"

# client_auth_type -> (verify_mode, verified): the unverified ones go through tlsverify.
_CLIENT_AUTH: dict[str, tuple[ssl.VerifyMode, bool]] = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, False),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, False),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # exporter-toolkit keeps it too
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version", "client_allowed_sans"}
# SAN matching needs a certificate on every connection (exporter-toolkit's rule too).
_SAN_TYPES = ("RequireAnyClientCert", "RequireAndVerifyClientCert")

PeerCheck = Callable[[ssl.SSLSocket], bool]


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    client_auth_type: str = "NoClientCert"
    users: dict[str, bytes] = field(default_factory=dict)
    peer_check: PeerCheck | None = None  # client_allowed_sans, run after the handshake
    auth: BasicAuth = field(init=False)

    def __post_init__(self) -> None:
        self.auth = BasicAuth(self.users)

    @property
    def auth_required(self) -> bool:
        return self.auth.required


def load(path: str) -> WebConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{FLAG}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{FLAG}: {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{FLAG}: {path} must be a mapping")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise ConfigError(f"{FLAG}: unknown keys {sorted(unknown)}")
    _http_server_config(doc.get("http_server_config") or {})
    users = _users(doc.get("basic_auth_users") or {})
    tls = doc.get("tls_server_config")
    if not tls:
        return WebConfig(users=users)
    if not isinstance(tls, dict):
        raise ConfigError(f"{FLAG}: tls_server_config must be a mapping")
    auth_type = _client_auth_type(tls)
    return WebConfig(tls=_tls_context(tls, auth_type, Path(path).parent),
                     client_auth_type=auth_type, users=users,
                     peer_check=_allowed_sans(tls, auth_type))


def _http_server_config(http: object) -> None:
    """`http2` is accepted and has nothing to switch (the server speaks HTTP/1.x); extra
    response `headers` are not implemented, and a file asking for them (HSTS, CSP, ...)
    must not start as if they were sent."""
    if not isinstance(http, dict):
        raise ConfigError(f"{FLAG}: http_server_config must be a mapping")
    unknown = set(http) - {"http2"}
    if unknown:
        raise ConfigError(f"{FLAG}: http_server_config keys {sorted(unknown)} are not "
                          "supported (supported: http2)")


def _users(users: object) -> dict[str, bytes]:
    if not isinstance(users, dict):
        raise ConfigError(f"{FLAG}: basic_auth_users must map user names to bcrypt hashes")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{FLAG}: the password of user {user!r} is not a bcrypt hash")
        try:
            rounds = cost(hashed.encode())
        except ValueError:
            rounds = 0
        if not 4 <= rounds <= 31:  # bcrypt's range; outside it no password can match
            raise ConfigError(f"{FLAG}: the password of user {user!r} is not a bcrypt hash "
                              "(the cost factor must be 04 to 31)")
        out[str(user)] = hashed.encode()
    return out


def _client_auth_type(tls: dict) -> str:
    auth = str(tls.get("client_auth_type") or "NoClientCert")
    auth = _ALIASES.get(auth, auth)
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"{FLAG}: client_auth_type {auth!r} is not one of "
                          f"{', '.join(_CLIENT_AUTH)}")
    has_ca = bool(tls.get("client_ca_file"))
    verified = _CLIENT_AUTH[auth][1]
    if verified and not has_ca:
        raise ConfigError(f"{FLAG}: client_auth_type {auth} verifies client certificates "
                          "and needs client_ca_file (the CA that signs them)")
    if has_ca and not verified:
        raise ConfigError(
            f"{FLAG}: client_ca_file is set but client_auth_type is {auth}, which "
            "verifies no client certificate against it; use RequireAndVerifyClientCert "
            "(or VerifyClientCertIfGiven), or drop client_ca_file")
    return auth


def _normal(value: str) -> str:
    """IP addresses compare by value (2001:db8::1 == 2001:DB8:0:0:0:0:0:1), names as written."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def _allowed_sans(tls: dict, auth: str) -> PeerCheck | None:
    sans = tls.get("client_allowed_sans")
    if sans is None:
        return None
    if not isinstance(sans, list) or not sans or not all(isinstance(v, str) for v in sans):
        raise ConfigError(f"{FLAG}: client_allowed_sans must be a list of DNS names, IP "
                          "addresses, e-mail addresses or URIs")
    if auth not in _SAN_TYPES:
        raise ConfigError(f"{FLAG}: client_allowed_sans needs client_auth_type "
                          f"RequireAndVerifyClientCert or RequireAnyClientCert (with {auth} a "
                          "client may send no certificate, leaving no SAN to match)")
    allowed = frozenset(_normal(v) for v in sans)

    def check(sock: ssl.SSLSocket) -> bool:
        # getpeercert() decodes whenever the context asks for a certificate, verified or not.
        cert = sock.getpeercert() or {}
        found = {_normal(str(value)) for kind, value in cert.get("subjectAltName", ())
                 if kind in ("DNS", "IP Address", "email", "URI")}
        return not allowed.isdisjoint(found)

    return check


def _version(tls: dict, key: str, default: str) -> ssl.TLSVersion:
    name = str(tls.get(key) or default)
    if name not in _VERSIONS:
        raise ConfigError(f"{FLAG}: {key} {name!r} is not one of {', '.join(_VERSIONS)}")
    return _VERSIONS[name]


def _tls_context(tls: dict, auth: str, base: Path) -> ssl.SSLContext:
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        # Silently ignoring e.g. client_allowed_sans would leave a door open that the
        # file claims is shut.
        raise ConfigError(f"{FLAG}: tls_server_config keys {sorted(unknown)} are not "
                          f"supported (supported: {', '.join(sorted(_TLS_KEYS))})")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise ConfigError(f"{FLAG}: tls_server_config needs cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(tls, "min_version", "TLS12")
    ctx.maximum_version = _version(tls, "max_version", "TLS13")
    if ctx.minimum_version > ctx.maximum_version:
        raise ConfigError(f"{FLAG}: min_version is above max_version")
    try:
        ctx.load_cert_chain(base / cert, base / key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{FLAG}: cannot load cert_file/key_file: {exc}") from None
    mode, verified = _CLIENT_AUTH[auth]
    if verified:
        try:
            ctx.load_verify_locations(base / tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{FLAG}: cannot load client_ca_file: {exc}") from None
        ctx.verify_mode = mode
    elif mode != ssl.CERT_NONE:
        try:
            tlsverify.accept_unverified(ctx, required=mode == ssl.CERT_REQUIRED)
        except tlsverify.Unsupported as exc:
            raise ConfigError(f"{FLAG}: client_auth_type {auth} (a client certificate "
                              f"taken unverified) is not available with this Python's "
                              f"ssl module ({exc}); use RequireAndVerifyClientCert") from None
    return ctx
