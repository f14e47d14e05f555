"""What kombu's Redis transport would do with a broker URL and transport options.

The fast-path consumer and the queue probe both need kombu's naming rules (event
channel, key prefix, priority sub-lists) and the server address (through Sentinel when
asked), without kombu's per-message machinery.
"""

from __future__ import annotations

import ssl
from bisect import bisect
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


@dataclass(frozen=True)
class RedisTarget:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: dict = field(default_factory=dict)
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_kwargs: dict = field(default_factory=dict)
    global_keyprefix: str = ""
    fanout_prefix: bool | str = True
    fanout_patterns: bool = True
    sep: str = PRIORITY_SEP
    priority_steps: tuple[int, ...] = PRIORITY_STEPS

    def event_subscription(self, exchange: str) -> tuple[str, str]:
        """(command, channel) the Celery event receiver would subscribe with."""
        if self.fanout_prefix is True:
            prefix = f"/{self.db}."
        elif self.fanout_prefix:
            prefix = str(self.fanout_prefix)
        else:
            prefix = ""
        base = f"{self.global_keyprefix}{prefix}{exchange}"
        if self.fanout_patterns:
            return "PSUBSCRIBE", f"{base}/*"
        return "SUBSCRIBE", base

    def queue_keys(self, queue: str) -> list[str]:
        """Every list a queue's messages may sit in: one per priority step."""
        keys = []
        for step in self.priority_steps:
            name = queue if step == 0 else f"{queue}{self.sep}{step}"
            keys.append(self.global_keyprefix + name)
        return keys

    def step_for(self, priority: int) -> int:
        steps = self.priority_steps
        return steps[bisect(steps, max(0, min(9, priority))) - 1]

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        opts = self.tls_options
        ctx = ssl.create_default_context(cafile=opts.get("ssl_ca_certs"))
        reqs = str(opts.get("ssl_cert_reqs", "required")).lower()
        if reqs in ("none", "cert_none"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif reqs in ("optional", "cert_optional"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if opts.get("ssl_certfile"):
            ctx.load_cert_chain(opts["ssl_certfile"], opts.get("ssl_keyfile"))
        return ctx

    def resolve(self, timeout: float) -> tuple[str, int]:
        """The address to connect to, asking Sentinel for the master when configured."""
        if not self.sentinels:
            return self.host, self.port
        from redis.sentinel import Sentinel

        kwargs = {"socket_timeout": timeout, **self.sentinel_kwargs}
        sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=kwargs,
                            socket_timeout=timeout)
        if not self.master_name:
            raise ValueError("sentinel:// needs the master_name transport option")
        return sentinel.discover_master(self.master_name)

    def client(self, timeout: float):  # -> redis.Redis
        """A redis-py client for probes (not the hot path)."""
        import redis

        if self.unix_path:
            return redis.Redis(unix_socket_path=self.unix_path, db=self.db,
                               username=self.username, password=self.password,
                               socket_timeout=timeout, socket_connect_timeout=timeout)
        host, port = self.resolve(timeout)
        kwargs: dict = {}
        if self.tls:
            kwargs = {"ssl": True, **{k: v for k, v in self.tls_options.items()
                                      if k in ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile",
                                               "ssl_keyfile")}}
        return redis.Redis(host=host, port=port, db=self.db, username=self.username,
                           password=self.password, socket_timeout=timeout,
                           socket_connect_timeout=timeout, **kwargs)


def parse(url: str, options: dict | None = None) -> RedisTarget:
    options = options or {}
    first = url.split(";")[0]
    parts = urlsplit(first)
    scheme = parts.scheme.split("+", 1)[0]
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    db_text = parts.path.strip("/") or query.pop("virtual_host", "") or "0"
    common = dict(
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        global_keyprefix=str(options.get("global_keyprefix", "") or ""),
        fanout_prefix=options.get("fanout_prefix", True),
        fanout_patterns=bool(options.get("fanout_patterns", True)),
        sep=str(options.get("sep", PRIORITY_SEP)),
        priority_steps=tuple(sorted(int(s) for s in options.get("priority_steps",
                                                                  PRIORITY_STEPS))),
    )
    if scheme == "socket":
        return RedisTarget(unix_path=parts.path, db=int(query.get("virtual_host", 0)),
                           **common)
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError(f"Redis database {db_text!r} is not a number") from None
    if scheme == "sentinel":
        # Any of the sentinel URLs may carry the database number.
        paths = [urlsplit(part).path.strip("/") for part in url.split(";")]
        db = int(next((p for p in paths if p), "0"))
        sentinels = []
        for part in url.split(";"):
            p = urlsplit(part)
            sentinels.append((p.hostname or "127.0.0.1", p.port or 26379))
        return RedisTarget(db=db, sentinels=tuple(sentinels),
                           master_name=options.get("master_name"),
                           sentinel_kwargs=dict(options.get("sentinel_kwargs") or {}), **common)
    tls_options = {k: v for k, v in query.items() if k.startswith("ssl_")}
    tls_options.update({k: v for k, v in (options.get("ssl") or {}).items()})
    return RedisTarget(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db,
                       tls=scheme == "rediss", tls_options=tls_options, **common)
