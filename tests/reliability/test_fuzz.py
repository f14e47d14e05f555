"""Hostile and broken payloads through the real decoder, pipeline, state and collector.

Hypothesis generates random, truncated, oversized, wrongly typed and non-JSON payloads,
pickle payloads and unknown event types, as Redis envelopes and as AMQP messages; AMQP
messages go through the consumer's own on-message callbacks (py-amqp's and kombu's
message objects, with and without a content-type property). Each generator records what
it made: the reason a payload must be dropped for, or how many items it carries. For every
payload: no exception escapes, nothing is unpickled, a payload made broken adds exactly one
to `invalid[reason]`, and one carrying k items adds k to `events_total` +
`invalid{not_an_object|missing_type}`. At the end the accumulated state renders to an
exposition that `promtool check metrics` accepts.
"""

from __future__ import annotations

import base64
import pickle
import string
from collections.abc import Callable

import orjson
from amqp.basic_message import Message as AmqpMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kombu import Message as KombuMessage
from prometheus_client import CollectorRegistry, generate_latest

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.ingest.kombu import amqp_on_message, kombu_on_message
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State, StateConfig
from tests.reliability.conftest import promtool_check

MAX_BYTES = 4096  # small, so "oversized" payloads are cheap to generate
EXAMPLES = 800  # per test; each example carries several payloads

DECODE_REASONS = {"oversized", "malformed_envelope", "content_type", "malformed_body",
                  "body_encoding", "malformed_json", "not_an_object"}
STATE_REASONS = {"not_an_object", "missing_type", "bad_timestamp", "bad_field"}

UNPICKLED: list[str] = []


def _mark_unpickled(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Trap:
    """Unpickling this calls _mark_unpickled: any entry in UNPICKLED is a failure."""

    def __reduce__(self):
        return (_mark_unpickled, ("trap",))


PICKLE = pickle.dumps({"type": "task-succeeded", "uuid": "p", "hostname": "h@x",
                       "timestamp": 1.0, "trap": Trap()})
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])

KNOWN_TYPES = ["task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
               "task-retried", "task-rejected", "task-revoked", "task-cancelled",
               "worker-online", "worker-heartbeat", "worker-offline"]

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['a"b', "new\nline", "back\\slash", "}{", "x" * 600, "\x00\x06\x16",
                     "tasks.évènement", "😀", 'name="x",evil="1"', "\u2028"]),
)
json_scalar = st.one_of(st.none(), st.booleans(),
                        st.integers(min_value=-(2**63), max_value=2**64 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), hostile_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=6)
timestamp = st.one_of(st.floats(min_value=0, max_value=4e9), st.integers(-10, 2**40),
                      st.sampled_from([1e300, -1e300, 0.0]), json_value)

_optional = {
    "name": st.one_of(st.sampled_from(["tests.add", "tests.fail"]), hostile_text, json_value),
    "queue": st.one_of(st.sampled_from(["default", "other"]), hostile_text, json_value),
    "routing_key": hostile_text,
    "eta": st.one_of(st.sampled_from(["2024-01-01T00:00:00", "9999-12-31T23:59:59+14:00",
                                      "0001-01-01T00:00:00-23:59", "nope"]), json_value),
    "retries": st.one_of(st.integers(0, 3), json_value),
    "runtime": st.one_of(st.floats(-1, 1e6), json_value),
    "exception": st.one_of(st.sampled_from(["ValueError('x')", "a.b.C()", "(", ""]), json_value),
    "active": json_value, "processed": json_value, "freq": st.one_of(st.floats(), json_value),
    "expired": json_value, "terminated": json_value, "requeue": json_value,
    "sw_ident": json_value, "sw_ver": json_value, "sw_sys": json_value,
}
# Plausible events (known type, valid timestamp, hostile fields) reach the handlers ...
plausible_event = st.fixed_dictionaries(
    {"type": st.sampled_from(KNOWN_TYPES),
     "uuid": st.one_of(st.sampled_from(["u1", "u2", "u3"]), hostile_text, json_value),
     "hostname": st.one_of(st.sampled_from(["w1@h", "w2@h", "celery@x"]), hostile_text,
                           json_value),
     # Mostly valid; sometimes a string, list or null, which must count as bad_timestamp.
     "timestamp": st.one_of(*[st.floats(min_value=1.6e9, max_value=1.8e9)] * 4,
                            st.sampled_from(["1700000000", None, [1.7e9], {"t": 1}]))},
    optional=_optional)
# ... wild ones exercise the checks in front of them.
wild_event = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(KNOWN_TYPES), hostile_text, json_value),
        "uuid": st.one_of(st.sampled_from(["u1", "u2", "u3"]), hostile_text, json_value),
        "hostname": st.one_of(st.sampled_from(["w1@h", "w2@h"]), hostile_text, json_value),
        "timestamp": timestamp, **_optional,
    })
event = st.one_of(plausible_event, plausible_event, wild_event)
body_value = st.one_of(event, st.lists(st.one_of(event, json_value), max_size=4), json_value)


# What a generator made, as it knows it: the reason the payload must be dropped for, or the
# number of items it carries (each item then counts as an event or a state-level drop).
Outcome = str | int
JSON = "application/json"
B64_ALPHABET = string.ascii_letters + string.digits + "+/"


def _items(value: object) -> Outcome:
    if isinstance(value, dict):
        return 1
    if isinstance(value, list):
        return len(value)
    return "not_an_object"


@st.composite
def json_bytes(draw) -> tuple[bytes, Outcome]:
    """A body and what parsing it must give (its size is judged by the caller)."""
    value = draw(body_value)
    data = orjson.dumps(value)
    outcome = _items(value)
    how = draw(st.sampled_from(["whole"] * 5 + ["truncate", "pad", "garbage", "pickle"]))
    if how == "truncate" and data[:1] in (b"{", b"["):
        # A proper prefix of an array or object is never complete JSON.
        data = data[: draw(st.integers(0, len(data) - 1))]
        outcome = "malformed_json"
    elif how == "pad":  # oversized, or close to the limit
        data = data + b" " * draw(st.integers(MAX_BYTES - len(data) - 8, MAX_BYTES + 64))
    elif how == "garbage":  # 0xff is never valid UTF-8, so never JSON
        data = b"\xff" + draw(st.binary(max_size=200))
        outcome = "malformed_json"
    elif how == "pickle":
        data = PICKLE
        outcome = "malformed_json"
    return data, outcome


def _sized(raw: bytes | str, outcome: Outcome) -> Outcome:
    return "oversized" if len(raw) > MAX_BYTES else outcome


@st.composite
def envelopes(draw) -> tuple[bytes, Outcome]:
    body, outcome = draw(json_bytes())
    shape = draw(st.sampled_from(["base64"] * 6 + [
        "plain", "other_encoding", "bad_base64", "pickle_type", "random_type", "not_dict", "raw",
        "fields"]))
    ctype: object = JSON
    props: object = {"body_encoding": "base64", "delivery_info": {"routing_key": "task.x"}}
    text: object = base64.b64encode(body).decode()
    if shape == "plain":
        props = {}
        # Valid JSON stays valid; invalid bytes stay invalid (U+FFFD starts no JSON value).
        text = body.decode(errors="replace")
    elif shape == "other_encoding":
        props = {"body_encoding": draw(st.one_of(hostile_text, json_value).filter(
            lambda v: v is not None and v != "base64"))}
        outcome = "body_encoding"
    elif shape == "bad_base64":
        # 4n+1 base64 characters can never decode, whatever junk is around them.
        chars = draw(st.text(alphabet=B64_ALPHABET, max_size=28))
        text = chars[: len(chars) // 4 * 4] + "A" + "!*"
        outcome = "malformed_body"
    elif shape == "pickle_type":
        ctype = "application/x-python-serialize"
        text = base64.b64encode(PICKLE).decode()
        outcome = "content_type"
    elif shape == "random_type":
        ctype = draw(st.one_of(hostile_text, json_value).filter(lambda v: v != JSON))
        outcome = "content_type"
    elif shape == "not_dict":
        raw = orjson.dumps(draw(st.lists(json_value, max_size=3)))
        return raw, _sized(raw, "malformed_envelope")
    elif shape == "raw":
        # A bare body as the envelope: an object lacks "content-type" (generated keys are
        # shorter), anything else is no envelope at all.
        is_object = isinstance(outcome, int) and body.lstrip()[:1] == b"{"
        return body, _sized(body, "content_type" if is_object else "malformed_envelope")
    elif shape == "fields":
        props = draw(json_value)  # never has a "body_encoding" key: generated keys are shorter
        text = draw(st.one_of(st.just(text), json_value.filter(lambda v: not isinstance(v, str))))
        # Without an encoding the base64 text itself is parsed, and base64 of these bodies
        # starts with a letter or "/" (or is empty): never JSON.
        outcome = "malformed_json" if isinstance(text, str) else "malformed_envelope"
    env = {"body": text, "content-type": ctype, "content-encoding": "utf-8",
           "headers": {}, "properties": props}
    raw = orjson.dumps(env)
    if draw(st.integers(0, 9)) == 0 and len(raw) > 1:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]  # a proper prefix of an object
        outcome = "malformed_envelope"
    return raw, _sized(raw, outcome)


def _envelope(body: bytes, ctype: object = "application/json",
              props: object = None) -> bytes:
    props = {"body_encoding": "base64"} if props is None else props
    return orjson.dumps({"body": base64.b64encode(body).decode(), "content-type": ctype,
                         "content-encoding": "utf-8", "headers": {}, "properties": props})


def _event(**fields: object) -> bytes:
    return orjson.dumps({"type": "task-succeeded", "uuid": "s1", "hostname": "w1@h",
                         "timestamp": 1.7e9, **fields})


# One hand-made payload per drop reason, fed first in every fuzz run: the claim "every way a
# payload can be wrong is counted" must not depend on what the random generator happens to
# draw (a Hypothesis upgrade changed the draws once and a reason went missing).
REDIS_SEEDS = {
    "oversized": _envelope(b" " * MAX_BYTES),
    "malformed_envelope": b'{"body": ',
    "content_type": _envelope(PICKLE, "application/x-python-serialize"),
    "malformed_body": orjson.dumps({"body": "!!not base64*", "content-type": "application/json",
                                    "properties": {"body_encoding": "base64"}}),
    "body_encoding": _envelope(_event(), props={"body_encoding": "rot13"}),
    "malformed_json": _envelope(b'{"type": "task-'),
    "not_an_object": _envelope(b'"task-succeeded"'),
    "missing_type": _envelope(b'[{"uuid": "s1", "timestamp": 1.7e9}]'),
    "bad_timestamp": _envelope(_event(timestamp="yesterday")),
    "bad_field": _envelope(_event(runtime="fast")),
}
AMQP_SEEDS = {
    "oversized": (b" " * (MAX_BYTES + 1), "application/json"),
    "content_type": (PICKLE, "application/x-python-serialize"),
    "malformed_json": (b'{"type": "task-', "application/json"),
    "not_an_object": (b"42", "application/json"),
    "missing_type": (b'[{"type": null}]', "application/json"),
    "bad_timestamp": (_event(timestamp=[1]), "application/json"),
    "bad_field": (_event(runtime={"s": 1}), "application/json"),
}


@st.composite
def amqp_messages(draw) -> tuple[bytes | str, str | None, Outcome]:
    body, outcome = draw(json_bytes())
    if draw(st.booleans()):
        body = body.decode(errors="replace")
    ctype = draw(st.one_of(st.just(JSON), st.just(JSON), st.just(JSON),
                           st.just("application/x-python-serialize"),
                           st.just("application/x-yaml"), st.none(),
                           hostile_text.filter(lambda v: v != JSON)))
    if ctype != JSON:
        return body, ctype, "content_type"
    return body, ctype, _sized(body, outcome)


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(counts.items()) if v}


def _totals(state: State) -> tuple[int, dict[str, int]]:
    return sum(state.event_types.values()), dict(state.invalid)


def _check_accounting(state: State, before: tuple[int, dict[str, int]],
                      outcome: Outcome) -> None:
    events_before, invalid_before = before
    events_after, invalid_after = _totals(state)
    delta = {k: v - invalid_before.get(k, 0) for k, v in invalid_after.items()
             if v != invalid_before.get(k, 0)}
    assert set(invalid_after) <= DECODE_REASONS | STATE_REASONS, invalid_after
    if isinstance(outcome, str):
        assert delta == {outcome: 1}
        assert events_after == events_before
    else:
        accounted = (events_after - events_before + delta.get("not_an_object", 0)
                     + delta.get("missing_type", 0))
        assert accounted == outcome, (outcome, delta)


def _amqp_message(body: bytes | str, ctype: str | None, kind: str) -> object:
    """The message object the broker client hands the consumer's callback."""
    if kind == "kombu":
        return KombuMessage(body=body, content_type=ctype)
    # py-amqp sets only the properties the publisher sent: no content type, no attribute.
    return AmqpMessage(body, **({} if ctype is None else {"content_type": ctype}))


def _render_and_check(pipeline: Pipeline, promtool: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline))
    text = generate_latest(registry)
    promtool_check(promtool, text)
    return text


def _pipeline() -> Pipeline:
    # Small caps so that the fuzz also runs into series and task-table limits.
    return Pipeline(State(StateConfig(max_tasks=50, max_series=40, task_ttl=30.0,
                                      worker_down_retention=5.0)), MAX_BYTES)


def _feed_and_account(pipeline: Pipeline, seen: dict, outcome: Outcome,
                      feed: Callable[[], None]) -> None:
    """Feed one payload through the real pipeline and check every drop was counted once."""
    before = _totals(pipeline.state)
    feed()
    _check_accounting(pipeline.state, before, outcome)
    seen["payloads"] += 1
    if isinstance(outcome, str):
        seen["rejected"] += 1
    else:
        seen["items"] += outcome


def _seed_outcome(reason: str) -> Outcome:
    """A seed for a decoder reason is dropped whole; one for a state reason is one item."""
    return reason if reason in DECODE_REASONS else 1


def test_fuzz_redis_envelopes(promtool: str) -> None:
    pipeline = _pipeline()
    seen = {"payloads": 0, "rejected": 0, "items": 0}
    clock = [1_700_000_000.0]

    @FUZZ_SETTINGS
    @given(st.lists(envelopes(), min_size=1, max_size=4), st.floats(0, 5))
    @example([(raw, _seed_outcome(reason)) for reason, raw in REDIS_SEEDS.items()], 1.0)
    def run(made: list[tuple[bytes, Outcome]], step: float) -> None:
        clock[0] += step
        for raw, outcome in made:
            _feed_and_account(pipeline, seen, outcome,
                              lambda raw=raw: pipeline.envelopes([raw], clock[0]))

    run()
    assert UNPICKLED == []
    _render_and_check(pipeline, promtool)
    print(f"\nfuzz redis envelopes: {seen['payloads']} payloads, {seen['rejected']} made "
          f"broken, {seen['items']} items; invalid by reason "
          f"{_nonzero(pipeline.state.invalid)}")
    # Every way a Redis envelope can be wrong was generated and counted.
    assert set(REDIS_SEEDS) <= set(_nonzero(pipeline.state.invalid))


def test_fuzz_amqp_messages_through_the_consumer_callbacks(promtool: str) -> None:
    pipeline = _pipeline()
    seen = {"payloads": 0, "rejected": 0, "items": 0}
    clock = [1_700_000_000.0]
    callbacks = {"amqp": amqp_on_message(pipeline, lambda: clock[0]),
                 "kombu": kombu_on_message(pipeline, lambda: clock[0])}

    @FUZZ_SETTINGS
    @given(st.lists(st.tuples(amqp_messages(), st.sampled_from(sorted(callbacks))),
                    min_size=1, max_size=4), st.floats(0, 5))
    @example([((body, ctype, _seed_outcome(reason)), kind)
              for reason, (body, ctype) in AMQP_SEEDS.items() for kind in sorted(callbacks)],
             1.0)
    def run(made: list[tuple[tuple[bytes | str, str | None, Outcome], str]],
            step: float) -> None:
        clock[0] += step
        for (body, ctype, outcome), kind in made:
            message = _amqp_message(body, ctype, kind)
            _feed_and_account(pipeline, seen, outcome,
                              lambda m=message, kind=kind: callbacks[kind](m))

    run()
    assert UNPICKLED == []
    _render_and_check(pipeline, promtool)
    print(f"\nfuzz amqp messages: {seen['payloads']} payloads, {seen['rejected']} made broken, "
          f"{seen['items']} items; invalid by reason {_nonzero(pipeline.state.invalid)}")
    assert set(AMQP_SEEDS) <= set(_nonzero(pipeline.state.invalid))


def test_amqp_message_without_content_type_is_counted_and_dropped() -> None:
    """A foreign publisher that sets no content type: counted, and the callback returns
    (an exception here would tear the broker connection down)."""
    pipeline = _pipeline()
    on_message = amqp_on_message(pipeline, lambda: 1.7e9)
    on_message(AmqpMessage(_event()))
    on_message(AmqpMessage(_event(), content_type=JSON))
    assert _nonzero(pipeline.state.invalid) == {"content_type": 1}
    assert pipeline.state.event_types == {"task-succeeded": 1}


def test_seeds_are_counted_under_their_own_reason() -> None:
    assert set(REDIS_SEEDS) == DECODE_REASONS | STATE_REASONS
    for reason, raw in REDIS_SEEDS.items():
        pipeline = _pipeline()
        pipeline.envelopes([raw], 1.7e9)
        assert _nonzero(pipeline.state.invalid) == {reason: 1}, reason
    for reason, (body, ctype) in AMQP_SEEDS.items():
        pipeline = _pipeline()
        pipeline.body(body, ctype, 1.7e9)
        assert _nonzero(pipeline.state.invalid) == {reason: 1}, reason


def test_pickle_is_never_loaded() -> None:
    """The exact payloads a pickle-configured Celery would send, on both transports."""
    pipeline = Pipeline(State())
    env = orjson.dumps({"body": base64.b64encode(PICKLE).decode(),
                        "content-type": "application/x-python-serialize",
                        "content-encoding": "binary",
                        "properties": {"body_encoding": "base64"}})
    pipeline.envelopes([env], 1.0)
    pipeline.body(PICKLE, "application/x-python-serialize", 1.0)
    # Pickle bytes labelled as JSON are malformed JSON, not a pickle to try.
    pipeline.body(PICKLE, "application/json", 1.0)
    assert UNPICKLED == []
    assert _nonzero(pipeline.state.invalid) == {"content_type": 2, "malformed_json": 1}
    assert pipeline.state.event_types == {}
