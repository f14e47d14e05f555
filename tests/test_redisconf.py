"""kombu's Redis naming rules, pinned against kombu's own transport."""

from __future__ import annotations

import pytest
from kombu import Connection

from celery_events_exporter.redisconf import parse


@pytest.mark.parametrize(("url", "options", "expected"), [
    ("redis://h:6379/0", {}, ("PSUBSCRIBE", "/0.celeryev/*")),
    ("redis://h:6379/3", {}, ("PSUBSCRIBE", "/3.celeryev/*")),
    ("redis://h:6379/3", {"fanout_prefix": False}, ("PSUBSCRIBE", "celeryev/*")),
    ("redis://h:6379/3", {"fanout_prefix": "app."}, ("PSUBSCRIBE", "app.celeryev/*")),
    ("redis://h:6379/0", {"fanout_patterns": False}, ("SUBSCRIBE", "/0.celeryev")),
    ("redis://h:6379/0", {"global_keyprefix": "p:"}, ("PSUBSCRIBE", "p:/0.celeryev/*")),
])
def test_event_channel(url: str, options: dict, expected: tuple[str, str]) -> None:
    assert parse(url, options).event_subscription("celeryev") == expected


@pytest.mark.parametrize("options", [{}, {"fanout_prefix": False}, {"fanout_prefix": "x."},
                                     {"fanout_patterns": False}, {"global_keyprefix": "p:"}])
def test_channel_matches_what_kombu_publishes(options: dict) -> None:
    """Ask kombu's transport itself which channel a task.succeeded event is published on."""
    with Connection("redis://127.0.0.1:1/2", transport_options=options) as conn:
        chan_cls = conn.transport.Channel
        # A bare channel object: enough to call kombu's own topic builder without a server.
        chan = chan_cls.__new__(chan_cls)
        chan.fanout_patterns = options.get("fanout_patterns", chan_cls.fanout_patterns)
        prefix = options.get("fanout_prefix", True)
        chan.keyprefix_fanout = (prefix if isinstance(prefix, str) else
                                 chan_cls.keyprefix_fanout.format(db=2) if prefix else "")
        topic = options.get("global_keyprefix", "") + chan._get_publish_topic(
            "celeryev", "task.succeeded")
    command, pattern = parse("redis://127.0.0.1:1/2", options).event_subscription("celeryev")
    if command == "SUBSCRIBE":
        assert topic == pattern
    else:
        import fnmatch

        assert fnmatch.fnmatchcase(topic, pattern), (topic, pattern)


def test_priority_queue_keys_follow_kombu() -> None:
    target = parse("redis://h/0", {"global_keyprefix": "p:"})
    assert target.queue_keys("q") == ["p:q", "p:q\x06\x163", "p:q\x06\x166", "p:q\x06\x169"]
    custom = parse("redis://h/0", {"priority_steps": list(range(10)), "sep": ":"})
    assert custom.queue_keys("q")[:3] == ["q", "q:1", "q:2"]


def test_url_parts() -> None:
    t = parse("rediss://user:p%40ss@cache.example:6380/4?ssl_cert_reqs=none")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == (
        "cache.example", 6380, 4, "user", "p@ss", True)
    assert t.tls_options == {"ssl_cert_reqs": "none"}
    s = parse("sentinel://:pw@s1:26379;sentinel://s2:26380/1", {"master_name": "mymaster"})
    assert s.sentinels == (("s1", 26379), ("s2", 26380))
    assert (s.master_name, s.password, s.db) == ("mymaster", "pw", 1)
    with pytest.raises(ValueError, match="not a number"):
        parse("redis://h/notadb")
