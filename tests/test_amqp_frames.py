"""The lean AMQP consumer's frame reader against frames written by py-amqp's own writer.

py-amqp's `frame_writer` is the encoder a real publisher uses; it writes into a list here
(not a socket) so that the exact byte stream can be cut at every possible point.
"""

from __future__ import annotations

import struct

import pytest
from amqp.basic_message import Message
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from amqp.spec import Basic, Channel, Connection

from celery_events_exporter.ingest.amqpframes import HEARTBEAT, JSON, FrameError, FrameReader

CHANNEL = 1


class _Sink:
    """Stands in for py-amqp's transport (a socket writer): keeps the bytes instead."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> None:
        self.chunks.append(bytes(data))


class _Conn:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0


def written(frame_max: int, *frames: tuple) -> bytes:
    """The bytes py-amqp's writer sends for (type, channel, method, args, content) tuples."""
    sink = _Sink()
    write = frame_writer(_Conn(frame_max), sink)
    for frame in frames:
        if frame == "heartbeat":
            sink.chunks.append(HEARTBEAT)
        else:
            write(*frame)
    return b"".join(sink.chunks)


def deliver(body: bytes, channel: int = CHANNEL, tag: int = 1, **props: object) -> tuple:
    args = dumps("sLbss", ("ctag", tag, False, "celeryev", "task.succeeded"))
    return (1, channel, Basic.Deliver, args, Message(body, **props))


def method(channel: int, sig: tuple, fmt: str = "", args: tuple = ()) -> tuple:
    return (1, channel, sig, dumps(fmt, args) if fmt else b"", None)


def read(data: bytes, cuts: list[int], channel: int = CHANNEL) -> list:
    reader = FrameReader(channel)
    out: list = []
    prev = 0
    for cut in [*cuts, len(data)]:
        reader.feed(data[prev:cut], out)
        prev = cut
    assert reader.pending == b""
    return out


BIG = b'{"type": "task-succeeded", "pad": "' + b"x" * 9000 + b'"}'
STREAM = [
    deliver(b'{"type": "task-sent"}', content_type=JSON),
    "heartbeat",
    deliver(BIG, tag=2, content_type=JSON, content_encoding="utf-8"),  # 3 body frames
    deliver(b"", tag=3, content_type=JSON),  # no body frame at all
    deliver(b"\x80\x04pickle", tag=4, content_type="application/x-python-serialize"),
    deliver(b'{"type": "task-started"}', tag=5),  # a publisher that set no content type
    method(0, Connection.Blocked, "s", ("low on memory",)),  # changes nothing for us
    deliver(b"[1]", tag=6, content_type=JSON, headers={"a": 1}, delivery_mode=2),
]
EXPECTED = [
    (b'{"type": "task-sent"}', JSON),
    (BIG, JSON),
    (b"", JSON),
    (b"\x80\x04pickle", "application/x-python-serialize"),
    (b'{"type": "task-started"}', None),
    (b"[1]", JSON),
]


def test_a_stream_read_whole_gives_every_body_with_its_content_type() -> None:
    data = written(4096, *STREAM)
    assert read(data, []) == EXPECTED


def test_every_cut_point_gives_the_same_deliveries() -> None:
    data = written(4096, *STREAM)
    for cut in range(1, len(data)):
        assert read(data, [cut]) == EXPECTED, cut
    # and byte by byte
    assert read(data, list(range(1, len(data)))) == EXPECTED


@pytest.mark.parametrize(("frame", "says"), [
    (method(0, Connection.Close, "BsBB", (320, "CONNECTION_FORCED - shutdown", 0, 0)),
     "connection closed by the broker: 320 CONNECTION_FORCED - shutdown"),
    (method(CHANNEL, Channel.Close, "BsBB", (404, "NOT_FOUND - no queue", 50, 10)),
     "channel closed by the broker: 404 NOT_FOUND - no queue"),
    (method(CHANNEL, Basic.Cancel, "sb", ("ctag", False)), "consumer cancelled"),
])
def test_the_broker_ending_the_consumer_raises_with_its_reason(frame: tuple, says: str) -> None:
    data = written(4096, deliver(b"[]", content_type=JSON), frame)
    reader = FrameReader(CHANNEL)
    out: list = []
    with pytest.raises(FrameError, match=says):
        reader.feed(data, out)
    assert out == [(b"[]", JSON)]


def test_a_close_for_another_channel_is_not_ours() -> None:
    data = written(4096, method(2, Channel.Close, "BsBB", (406, "x", 0, 0)),
                   deliver(b"[]", content_type=JSON))
    assert read(data, []) == [(b"[]", JSON)]


def test_lost_framing_raises() -> None:
    data = bytearray(written(4096, deliver(b"[]", content_type=JSON)))
    data[-1] = 0
    with pytest.raises(FrameError, match="frame-end"):
        FrameReader(CHANNEL).feed(bytes(data), [])


def test_a_header_without_its_method_raises() -> None:
    data = written(4096, deliver(b"[]", content_type=JSON))
    method_len = 8 + struct.unpack_from(">I", data, 3)[0]
    with pytest.raises(FrameError, match="content header out of place"):
        FrameReader(CHANNEL).feed(data[method_len:], [])


def test_a_body_longer_than_its_header_said_raises() -> None:
    data = written(4096, deliver(b"[]", content_type=JSON))
    extra = struct.pack(">BHI", 3, CHANNEL, 2) + b"[]\xce"
    reader = FrameReader(CHANNEL)
    # the header announced 2 bytes: a second body frame belongs to no delivery
    with pytest.raises(FrameError, match="body frame out of place"):
        reader.feed(data + extra, [])


def test_an_unknown_frame_type_raises() -> None:
    with pytest.raises(FrameError, match="unknown type 9"):
        FrameReader(CHANNEL).feed(struct.pack(">BHI", 9, 0, 0) + b"\xce", [])
