"""Payload decoding: kombu's Redis envelope and AMQP bodies; JSON only, every drop has a reason."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from celery_events_exporter.decode import Invalid, decode_body, decode_envelope


class Exploding:
    def __reduce__(self):
        # Unpickling this would call os.abort(): the test process dying is the failure signal.
        import os

        return (os.abort, ())


EVENT = {"type": "task-started", "uuid": "a", "hostname": "celery@w", "timestamp": 1.0}


def envelope(body: bytes | str, content_type: str = "application/json",
             encoding: str | None = "base64") -> bytes:
    if encoding == "base64":
        body = base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode()
    props = {"delivery_info": {"routing_key": "task.started"}}
    if encoding:
        props["body_encoding"] = encoding
    return json.dumps({"body": body, "content-type": content_type, "content-encoding": "utf-8",
                       "headers": {"hostname": "celery@w"}, "properties": props}).encode()


def test_single_event_envelope() -> None:
    assert decode_envelope(envelope(json.dumps(EVENT))) == [EVENT]


def test_task_multi_batch_is_unpacked() -> None:
    batch = [dict(EVENT, uuid=str(i)) for i in range(24)]
    assert decode_envelope(envelope(json.dumps(batch))) == batch


def test_plain_body_without_base64() -> None:
    assert decode_envelope(envelope(json.dumps(EVENT), encoding=None)) == [EVENT]


def test_pickle_is_rejected_without_being_loaded() -> None:
    payload = pickle.dumps(Exploding())
    with pytest.raises(Invalid) as err:
        decode_envelope(envelope(payload, content_type="application/x-python-serialize"))
    assert err.value.reason == "content_type"
    with pytest.raises(Invalid) as err:
        decode_body(payload, "application/x-python-serialize")
    assert err.value.reason == "content_type"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", "malformed_envelope"),
    (b"[1, 2]", "malformed_envelope"),
    (b'{"content-type": "application/json", "body": 5}', "malformed_envelope"),
    (envelope("!!!not base64!!!", encoding=None).replace(b'"body_encoding"', b'"x"'),
     "malformed_json"),
    (envelope(b"{truncated"), "malformed_json"),
    (envelope(b"42"), "not_an_object"),
    (envelope("abc", encoding="base64").replace(b'"YWJj"', b'"Y"'), "malformed_body"),
    (envelope(json.dumps(EVENT), encoding="quoted-printable"), "body_encoding"),
    (envelope(json.dumps(EVENT), content_type="application/x-yaml"), "content_type"),
])
def test_bad_envelopes_name_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Invalid) as err:
        decode_envelope(raw)
    assert err.value.reason == reason


def test_oversized_messages_are_dropped_before_parsing() -> None:
    raw = envelope(json.dumps(dict(EVENT, args="x" * 5000)))
    with pytest.raises(Invalid) as err:
        decode_envelope(raw, max_bytes=1000)
    assert err.value.reason == "oversized"
    with pytest.raises(Invalid) as err:
        decode_body(b"{" + b" " * 2000 + b"}", "application/json", max_bytes=1000)
    assert err.value.reason == "oversized"


def test_amqp_body() -> None:
    assert decode_body(json.dumps([EVENT, EVENT]).encode(), "application/json") == [EVENT, EVENT]
    with pytest.raises(Invalid) as err:
        decode_body(b"\xff\xfe", "application/json")
    assert err.value.reason == "malformed_json"
