"""Decoding edges the mutation run (scripts/mutation) found untested: the size limit is
inclusive, and a drop's reason is also its message (logs print the exception)."""

from __future__ import annotations

import json

import pytest

from celery_events_exporter.decode import Invalid, decode_body, decode_envelope

EVENT = {"type": "worker-heartbeat", "hostname": "celery@w", "timestamp": 1.0}


def test_body_of_exactly_max_bytes_is_decoded_one_more_is_oversized() -> None:
    body = json.dumps(EVENT).encode()
    assert decode_body(body, "application/json", max_bytes=len(body)) == [EVENT]
    with pytest.raises(Invalid) as info:
        decode_body(body, "application/json", max_bytes=len(body) - 1)
    assert info.value.reason == "oversized"


def test_envelope_of_exactly_max_bytes_is_decoded_one_more_is_oversized() -> None:
    raw = json.dumps({"body": json.dumps(EVENT), "content-type": "application/json"}).encode()
    assert decode_envelope(raw, max_bytes=len(raw)) == [EVENT]
    with pytest.raises(Invalid) as info:
        decode_envelope(raw, max_bytes=len(raw) - 1)
    assert info.value.reason == "oversized"


def test_invalid_carries_its_reason_as_message() -> None:
    with pytest.raises(Invalid, match=r"^content_type$"):
        decode_body(b"{}", None)
