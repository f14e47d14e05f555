"""Basic auth against the bcrypt hashes of a web config file.

Two properties matter on a network-facing port:
- every request gets an answer: bcrypt refuses passwords over 72 bytes (it would only
  look at the first 72), so such a password is a plain "no", never an exception;
- an unknown user costs what a known one costs: the stand-in hash has the highest cost
  factor among the configured hashes, so the answer time does not tell which names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading

import bcrypt

# bcrypt's input limit; longer passwords cannot match a hash (exporter-toolkit's Go
# bcrypt refuses them too), so they are turned away before any hashing.
MAX_PASSWORD_BYTES = 72
_CACHE_LIMIT = 1000


def cost(hashed: bytes) -> int:
    """The cost factor of a modular-crypt bcrypt hash: `$2b$10$...` -> 10."""
    parts = hashed.split(b"$")
    if len(parts) < 4 or not parts[2].isdigit():
        raise ValueError("not a bcrypt hash")
    return int(parts[2])


def parse_header(header: str) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header; None when malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return None
    return user, password


class BasicAuth:
    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = dict(users)
        # The stand-in hash for unknown users is made once, at the highest configured cost
        # (a user list mixing costs times like its most expensive entry).
        self.dummy_cost = max((cost(h) for h in self.users.values()), default=4)
        self.dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(self.dummy_cost))
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self.users)

    def check_header(self, header: str) -> bool:
        creds = parse_header(header)
        return creds is not None and self.check(*creds)

    def check(self, user: str, password: str) -> bool:
        """bcrypt costs tens of ms by design, so a verified pair is remembered (as a digest,
        like exporter-toolkit's cache): a scrape every few seconds does not pay it again."""
        secret = password.encode("utf-8")
        if len(secret) > MAX_PASSWORD_BYTES:
            return False
        hashed = self.users.get(user)
        if hashed is None:
            bcrypt.checkpw(secret, self.dummy)
            return False
        token = hashlib.sha256(hashed + b"\0" + secret).digest()
        with self._lock:
            if any(hmac.compare_digest(token, seen) for seen in self._ok):
                return True
        if not bcrypt.checkpw(secret, hashed):
            return False
        with self._lock:
            if len(self._ok) >= _CACHE_LIMIT:
                self._ok.clear()
            self._ok.add(token)
        return True
