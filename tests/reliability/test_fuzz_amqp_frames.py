"""The fuzz of test_fuzz.py, through the lean AMQP consumer's own path: each generated
message is written as frames by py-amqp's frame writer (what a real publisher's client
puts on the wire; RabbitMQ forwards content frames as published), cut at random points
as socket reads would cut it, read by FrameReader and handed to Pipeline.bodies, the
calls AmqpConsumer makes. Every payload is accounted for exactly as in test_fuzz.py, and
the state renders to an exposition promtool accepts.
"""

from __future__ import annotations

from amqp.basic_message import Message
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from amqp.spec import Basic
from hypothesis import example, given
from hypothesis import strategies as st

from celery_events_exporter.ingest.amqpframes import HEARTBEAT, JSON, FrameReader
from tests.reliability.test_fuzz import (
    AMQP_SEEDS,
    FUZZ_SETTINGS,
    MAX_BYTES,
    UNPICKLED,
    Outcome,
    _feed_and_account,
    _nonzero,
    _pipeline,
    _render_and_check,
    _seed_outcome,
    amqp_messages,
)

CHANNEL = 1
FRAME_MAX = 4096  # small, so that oversized bodies span several body frames


class _Sink:
    """Stands in for py-amqp's transport (a socket writer): keeps the bytes instead."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.frame_max = FRAME_MAX
        self.bytes_sent = 0

    def write(self, data) -> None:
        self.chunks.append(bytes(data))


def _wire(body: bytes | str, ctype: str | None, tag: int) -> bytes:
    sink = _Sink()
    write = frame_writer(sink, sink)
    args = dumps("sLbss", ("ctag", tag, False, "celeryev", "task.succeeded"))
    props = {} if ctype is None else {"content_type": ctype}
    write(1, CHANNEL, Basic.Deliver, args, Message(body, **props))
    return b"".join(sink.chunks)


def _on_the_wire(body: bytes | str, ctype: str | None, outcome: Outcome) -> Outcome:
    """py-amqp sends a str body as UTF-8: the size the decoder checks is the encoded one."""
    if isinstance(body, str) and ctype == JSON and len(body.encode()) > MAX_BYTES:
        return "oversized"
    return outcome


# An AMQP shortstr holds at most 255 bytes: longer content types cannot be published.
sendable = amqp_messages().filter(lambda m: m[1] is None or len(m[1].encode()) <= 255)


def test_fuzz_amqp_frames_through_the_lean_consumer(promtool: str) -> None:
    pipeline = _pipeline()
    reader = FrameReader(CHANNEL)
    seen = {"payloads": 0, "rejected": 0, "items": 0}
    clock = [1_700_000_000.0]
    tag = [0]

    def feed(wire: bytes, cuts: list[int]) -> None:
        out: list = []
        prev = 0
        for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
            reader.feed(wire[prev:cut], out)
            prev = cut
        assert reader.pending == b""
        assert len(out) == 1
        pipeline.bodies(out, clock[0])

    @FUZZ_SETTINGS
    @given(st.lists(st.tuples(sendable, st.lists(st.integers(0, 1 << 16), max_size=4),
                              st.booleans()), min_size=1, max_size=4),
           st.floats(0, 5))
    @example([((body, ctype, _seed_outcome(reason)), [3, 20], True)
              for reason, (body, ctype) in AMQP_SEEDS.items()], 1.0)
    def run(made: list, step: float) -> None:
        clock[0] += step
        for (body, ctype, outcome), cuts, beat in made:
            tag[0] += 1
            wire = _wire(body, ctype, tag[0]) + (HEARTBEAT if beat else b"")
            _feed_and_account(pipeline, seen, _on_the_wire(body, ctype, outcome),
                              lambda w=wire, c=cuts: feed(w, c))

    run()
    assert UNPICKLED == []
    _render_and_check(pipeline, promtool)
    print(f"\nfuzz amqp frames: {seen['payloads']} payloads, {seen['rejected']} made broken, "
          f"{seen['items']} items; invalid by reason {_nonzero(pipeline.state.invalid)}")
    assert set(AMQP_SEEDS) <= set(_nonzero(pipeline.state.invalid))


def test_a_delivery_without_content_type_is_counted_and_the_reader_goes_on() -> None:
    pipeline = _pipeline()
    reader = FrameReader(CHANNEL)
    out: list = []
    reader.feed(_wire(b'{"type": "task-succeeded", "uuid": "a", "hostname": "h@x", '
                      b'"timestamp": 1.7e9}', None, 1)
                + _wire(b'{"type": "task-succeeded", "uuid": "b", "hostname": "h@x", '
                        b'"timestamp": 1.7e9}', JSON, 2), out)
    pipeline.bodies(out, 1.7e9)
    assert _nonzero(pipeline.state.invalid) == {"content_type": 1}
    assert pipeline.state.event_types == {"task-succeeded": 1}
