"""Message priorities that mean the same thing on Redis and RabbitMQ.

The two brokers read the number the opposite way: RabbitMQ serves the highest priority
first (0-9 within a queue declared with x-max-priority), kombu's Redis transport serves
priority step 0 first. Callers say "high" or "low" and we pick the number.
"""

from __future__ import annotations

from typing import Literal

from proj.envconfig import broker_scheme

Level = Literal["high", "normal", "low"]

_REDIS = {"high": 0, "normal": 5, "low": 9}
_AMQP = {"high": 9, "normal": 5, "low": 0}


def priority_for(level: Level, broker_url: str) -> int:
    table = _REDIS if broker_scheme(broker_url) == "redis" else _AMQP
    return table[level]
