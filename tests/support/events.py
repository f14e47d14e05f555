"""Publishing raw Celery events to a real Redis the way kombu does, hostile ones included.

Celery's own dispatcher refuses to send what a hostile or broken publisher can: this
writes kombu's pub/sub envelope (base64 JSON body) straight to the event channel, so the
exporter's real Redis consumer receives exactly these bytes.
"""

from __future__ import annotations

import base64
import uuid

import orjson


def envelope(events: object, content_type: str = "application/json",
             body: bytes | None = None) -> bytes:
    data = orjson.dumps(events) if body is None else body
    return orjson.dumps({
        "body": base64.b64encode(data).decode(),
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": {"hostname": "hostile@127.0.0.1"},
        "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "delivery_info": {"exchange": "celeryev", "routing_key": "task.multi"},
                       "priority": 0, "delivery_mode": 1},
    })


def channel(db: int = 0, exchange: str = "celeryev", routing_key: str = "task.multi") -> str:
    """kombu's fanout channel for the event exchange (fanout_prefix and patterns on)."""
    return f"/{db}.{exchange}/{routing_key}"


def publish(client, payloads: list[bytes], db: int = 0) -> int:  # client: redis.Redis
    """PUBLISH each payload; returns how many subscribers the last one reached."""
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(channel(db), payload)
    replies = pipe.execute()
    return int(replies[-1]) if replies else 0
