"""Broker payloads -> event dicts. JSON only: nothing from the broker is ever unpickled.

Two entry points, one per transport family:
- `decode_envelope` for Redis pub/sub, where kombu wraps each message in a JSON envelope
  whose `body` is base64-encoded JSON;
- `decode_body` for AMQP, where the body and content type arrive as message properties.
A worker's `task.multi` message is a JSON array of events; both return a list of events.
Anything else raises `Invalid` with a short reason used as a metric label.
"""

from __future__ import annotations

import binascii

import orjson

JSON = "application/json"
# Every reason `Invalid` can carry, so the drop counters exist (at 0) before the first drop.
REASONS = ("oversized", "malformed_envelope", "content_type", "body_encoding", "malformed_body",
           "malformed_json", "not_an_object")
DEFAULT_MAX_BYTES = 1 << 20

_loads = orjson.loads
_a2b = binascii.a2b_base64
_JSONError = orjson.JSONDecodeError


class Invalid(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _events(payload: object) -> list:
    if type(payload) is dict:
        return [payload]
    if type(payload) is list:
        return payload
    raise Invalid("not_an_object")


def decode_body(body: bytes | str, content_type: str | None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> list:
    if content_type != JSON:
        raise Invalid("content_type")
    if len(body) > max_bytes:
        raise Invalid("oversized")
    try:
        return _events(_loads(body))
    except _JSONError:
        raise Invalid("malformed_json") from None


def decode_envelope(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> list:
    if len(raw) > max_bytes:
        raise Invalid("oversized")
    try:
        env = _loads(raw)
    except _JSONError:
        raise Invalid("malformed_envelope") from None
    if type(env) is not dict:
        raise Invalid("malformed_envelope")
    if env.get("content-type") != JSON:
        raise Invalid("content_type")
    body = env.get("body")
    props = env.get("properties")
    encoding = props.get("body_encoding") if type(props) is dict else None
    if type(body) is not str:
        raise Invalid("malformed_envelope")
    if encoding == "base64":
        try:
            body = _a2b(body)
        except (binascii.Error, ValueError):
            raise Invalid("malformed_body") from None
    elif encoding is not None:
        raise Invalid("body_encoding")
    try:
        return _events(_loads(body))
    except _JSONError:
        raise Invalid("malformed_json") from None
