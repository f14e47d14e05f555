"""The actual work behind the tasks, as plain functions: testable without a worker."""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tasks.exceptions import ExternalServiceError

PLANS = frozenset({"free", "team", "enterprise"})


def count_primes(limit: int) -> int:
    """Sieve of Eratosthenes: CPU-bound, memory ~limit bytes, deterministic."""
    if limit < 2:
        return 0
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


def make_thumbnail(width: int, height: int, max_side: int, seed: int) -> dict[str, Any]:
    """Render a noisy test card, shrink it and encode it as PNG, like an upload pipeline."""
    from PIL import Image, ImageDraw, ImageFilter

    if not (0 < width <= 8000 and 0 < height <= 8000):
        raise ValueError(f"image size {width}x{height} is out of range")
    if max_side <= 0:
        raise ValueError("max_side must be positive")
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (rng.randrange(256), 40, 90))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        draw.ellipse((x0, y0, x0 + width // 6, y0 + height // 6),
                     fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    return {"width": image.width, "height": image.height, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    """Validate one imported customer record; bad input raises KeyError or ValueError."""
    email = str(record["email"]).strip().lower()  # KeyError: the export lost a column
    plan = str(record["plan"]).strip().lower()
    seats = int(record.get("seats", 1))  # ValueError: "ten" is not a number
    if "@" not in email:
        raise ValueError(f"malformed email in record {record.get('id', '?')}")
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}")
    if seats < 1:
        raise ValueError(f"seats must be positive, got {seats}")
    return {"email": email, "plan": plan, "seats": seats}


def call_external_service(endpoint: str, attempt: int, fail_first: int,
                          latency: float) -> dict[str, Any]:
    """Stand-in for an HTTP call to a partner API that answers 503 for its first calls.

    `fail_first` makes the outage deterministic, so tests and the load generator decide how
    many retries a call needs (a value above the task's max_retries means it never recovers).
    """
    time.sleep(max(0.0, latency))
    if attempt < fail_first:
        raise ExternalServiceError(f"{endpoint} answered 503 (attempt {attempt + 1})")
    return {"endpoint": endpoint, "attempts": attempt + 1, "status": 200}


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size <= 0:
        raise ValueError("chunk size must be positive")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_item(item: int) -> int:
    if item < 0:
        raise ValueError(f"negative item {item}")
    return (item * item + 7) % 1_000_003
