"""A minimal AMQP 0-9-1 frame reader for one consuming channel: basic.deliver, its content
header and body frames, heartbeats, and the few methods that end a consumer.

py-amqp turns each delivery into three frame reads, a method-argument parse, a property
table decode and a Message object before our callback sees it; the exporter needs only
the body and the content type. This reader takes whatever bytes the socket gave, cuts
complete frames out of them, and returns the (body, content type) pairs they complete;
a partial frame waits for the next read. Anything that breaks the framing raises
FrameError: the consumer then drops the connection and reconnects, as it would if
py-amqp had raised.
"""

from __future__ import annotations

from struct import Struct

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

BASIC_DELIVER = (60 << 16) | 60
BASIC_CANCEL = (60 << 16) | 30
CHANNEL_CLOSE = (20 << 16) | 40
CONNECTION_CLOSE = (10 << 16) | 50
CONTENT_TYPE_FLAG = 0x8000  # the first basic property: present when the top bit is set
JSON = "application/json"
_JSON_BYTES = JSON.encode()

_FRAME = Struct(">BHI")  # type, channel, payload size
_METHOD = Struct(">I")  # class id << 16 | method id
_HEADER = Struct(">HHQH")  # class id, weight, body size, property flags
_CLOSE = Struct(">HB")  # reply code, reply text length


class FrameError(ConnectionError):
    """The broker sent something that ends this connection (or broke the framing)."""


def _closing(payload: bytes, what: str) -> FrameError:
    """connection.close / channel.close: the broker says why; say it in the log line."""
    try:
        code, size = _CLOSE.unpack_from(payload, 4)
        text = payload[7:7 + size].decode("utf-8", "replace")
    except Exception:  # a malformed close is still a close
        code, text = 0, "?"
    return FrameError(f"{what} by the broker: {code} {text}")


class FrameReader:
    """Frames in, (body, content type) pairs out. One instance per connection."""

    __slots__ = ("channel", "ctype", "parts", "pending", "size", "want")

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self.pending = b""
        self.ctype: str | None = None
        self.size = 0  # body bytes still expected for the current delivery
        self.parts: list[bytes] | None = None
        self.want = FRAME_METHOD  # what the channel expects next

    def feed(self, data: bytes, out: list) -> None:
        """Append (body, content type) of every delivery `data` completes to `out`."""
        if self.pending:
            data = self.pending + data
        end = len(data)
        pos = 0
        unpack_frame = _FRAME.unpack_from
        channel = self.channel
        append = out.append
        while end - pos >= 8:
            kind, chan, size = unpack_frame(data, pos)
            stop = pos + 7 + size
            if stop >= end:
                break
            if data[stop] != FRAME_END:
                raise FrameError("AMQP framing lost (no frame-end octet)")
            start = pos + 7
            pos = stop + 1
            if kind == FRAME_BODY:
                if chan != channel or self.want != FRAME_BODY:
                    raise FrameError("AMQP body frame out of place")
                self.size -= size
                if self.size < 0:
                    raise FrameError("AMQP body longer than its header said")
                parts = self.parts
                if parts is None:
                    if self.size == 0:  # the whole body in one frame: the usual case
                        self.want = FRAME_METHOD
                        append((data[start:stop], self.ctype))
                        continue
                    self.parts = parts = []
                # A body over several frames (larger than the negotiated frame_max) is
                # kept whole, as py-amqp does; RabbitMQ's max_message_size bounds it.
                parts.append(data[start:stop])
                if self.size == 0:
                    self.want = FRAME_METHOD
                    self.parts = None
                    append((b"".join(parts), self.ctype))
            elif kind == FRAME_METHOD:
                if self.want != FRAME_METHOD:
                    raise FrameError("AMQP method frame inside a delivery")
                if size < 4:
                    raise FrameError("AMQP method frame too short")
                method = _METHOD.unpack_from(data, start)[0]
                if method == BASIC_DELIVER and chan == channel:
                    self.want = FRAME_HEADER
                else:
                    self._method(method, chan, data[start:stop])
            elif kind == FRAME_HEADER:
                if chan != channel or self.want != FRAME_HEADER or size < 14:
                    raise FrameError("AMQP content header out of place")
                _cls, _weight, body_size, flags = _HEADER.unpack_from(data, start)
                ctype = None
                if flags & CONTENT_TYPE_FLAG:
                    n = data[start + 14]
                    raw = data[start + 15:start + 15 + n]
                    # The common case costs a comparison, not a decode.
                    ctype = JSON if raw == _JSON_BYTES else raw.decode("utf-8", "replace")
                self.ctype = ctype
                if body_size == 0:
                    self.want = FRAME_METHOD
                    append((b"", ctype))
                    continue
                self.size = body_size
                self.want = FRAME_BODY
                self.parts = None
            elif kind == FRAME_HEARTBEAT:
                continue
            else:
                raise FrameError(f"AMQP frame of unknown type {kind}")
        self.pending = data[pos:] if pos < end else b""

    def _method(self, method: int, chan: int, payload: bytes) -> None:
        if method == CONNECTION_CLOSE and chan == 0:
            raise _closing(payload, "connection closed")
        if chan == self.channel:
            if method == CHANNEL_CLOSE:
                raise _closing(payload, "channel closed")
            if method == BASIC_CANCEL:
                raise FrameError("consumer cancelled by the broker (queue deleted?)")
        # Anything else (connection.blocked/unblocked, a late qos-ok...) changes nothing
        # for a no-ack consumer.

