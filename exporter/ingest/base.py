"""The reconnect loop shared by consumers: connect, consume, back off, forever."""

from __future__ import annotations

import logging
import random
import threading
import time
from urllib.parse import urlsplit

from celery_events_exporter.config import Config
from celery_events_exporter.pipeline import Pipeline

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
IMMEDIATE_RETRY_EVERY = 30.0


class Consumer:
    name = "consumer"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def consume(self) -> None:
        """Connect and consume until the connection fails (raise) or `stopping` is set."""
        raise NotImplementedError

    def close(self) -> None:
        """Break out of `consume` from another thread."""

    def run(self) -> None:
        delay = BACKOFF_START
        url = self.config.redacted_broker_url
        last_immediate = -IMMEDIATE_RETRY_EVERY
        while not self.stopping.is_set():
            connected_at = time.monotonic()
            try:
                self.consume()
            except Exception as exc:  # any failure of the broker or its client: reconnect
                was_up = self.pipeline.connected
                self.pipeline.set_connected(False, time.time())
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                if now - connected_at > 30:
                    delay = BACKOFF_START
                # A live connection that drops (e.g. Redis closing a subscriber that fell
                # behind) is retried at once: pub/sub keeps nothing for us meanwhile.
                # Only once per IMMEDIATE_RETRY_EVERY, so a flapping broker still backs off.
                immediate = was_up and now - last_immediate >= IMMEDIATE_RETRY_EVERY
                log.warning("%s: lost or could not open broker connection to %s: %s; "
                            "retrying in %.1fs", self.name, url,
                            _describe(exc, self.config.broker_url), 0.0 if immediate else delay)
                if immediate:
                    last_immediate = now
                    continue
                # Full jitter keeps a fleet of exporters from reconnecting in step.
                self.stopping.wait(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, BACKOFF_MAX)
            else:
                delay = BACKOFF_START
        self.pipeline.set_connected(False, time.time())

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=f"ingest-{self.name}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.close()
        if self.thread is not None:
            self.thread.join(timeout)


def _describe(exc: BaseException, broker_url: str) -> str:
    """The error for a log line, with the broker password scrubbed should a client echo it."""
    text = str(exc) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
    for part in broker_url.split(";"):
        password = urlsplit(part).password
        if password:
            text = text.replace(password, "***")
    return text
