"""The event state's rooms (exporter/state/*), line by line: what scripts/mutation found
unprotected once it measured the package module by module.

Where a room's behaviour reaches the output only through State, events go in through
`State.ingest`/`tick` and the numbers are read where the collector reads them; where a
room's rule is finer than the events can show at once (the clock offset estimator's
windows), the room is driven directly, with the same calls State makes.
"""

from __future__ import annotations

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.labels import Labeler, LabelPolicy
from celery_events_exporter.state import State
from celery_events_exporter.state.clocks import OFFSET_WINDOW_SECONDS, Clocks
from tests.test_state import T0, ev, hist

# -- clocks -------------------------------------------------------------------------------


def clocks(max_hosts: int = 100) -> Clocks:
    return Clocks(Labeler(LabelPolicy()), max_hosts)


def delays(c: Clocks, host: str, *values: float, now: float = T0) -> list[float]:
    """Feed samples received at `now` delayed by each value; the offsets returned."""
    return [c.observe(host, now - d, now) for d in values]


def test_one_sample_alone_is_the_hosts_estimate() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", T0 - 7.0, freq=2.0)], T0)
    assert s.clocks.estimates() == {"w1": 7.0}


def test_the_estimate_is_the_second_smallest_delay_and_follows_new_lows() -> None:
    c = clocks()
    # 5 alone; 2 is a new low (5 becomes second); 3 beats 5 as second; 9 changes nothing.
    assert delays(c, "celery@h", 5.0, 2.0, 3.0, 9.0) == [5.0, 5.0, 3.0, 3.0]
    assert c.estimates() == {"h": 3.0}


def test_the_host_is_what_follows_the_first_at_sign() -> None:
    """Celery's nodesplit: `name@host` splits at the first @, the host keeps any other."""
    c = clocks()
    delays(c, "worker@host@x", 1.0)
    assert c.estimates() == {"host@x": 1.0}


def test_a_sample_exactly_at_the_future_tolerance_is_used() -> None:
    c = clocks()
    assert delays(c, "celery@h", -1.0) == [-1.0]
    assert c.estimates() == {"h": -1.0}
    assert delays(c, "celery@g", -1.5) == [0.0], "beyond the tolerance: not a transit"
    assert c.estimates() == {"h": -1.0}


def test_a_sample_from_the_future_uses_the_offset_known_so_far() -> None:
    """A producer's clock reads 5 s behind ours; then it is stepped 7 s forward and its
    next task-sent is stamped 2 s in the future. That sample is not used, but the offset
    known so far still dates the publish (T0 + 12 + 5); the worker's clock is ours."""
    s = State()
    for i in range(3):
        s.ingest([ev("task-sent", T0 + i - 5.0, uuid=f"x{i}", name="n", queue="q",
                     retries=0, eta=None)], T0 + i)
    s.ingest([ev("task-sent", T0 + 12.0, uuid="a", name="n", queue="q", retries=0,
                 eta=None)], T0 + 10)
    s.ingest([ev("task-started", T0 + 19.0, uuid="a")], T0 + 19)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(2.0))


def test_a_first_sample_from_the_future_means_no_offset() -> None:
    """Nothing known of a host whose first event is stamped 10 s ahead: its times are
    taken as they are (offset 0), neither dropped nor shifted."""
    s = State()
    s.ingest([ev("task-sent", T0 + 10.0, uuid="a", name="n", queue="q", retries=0,
                 eta=None)], T0)
    s.ingest([ev("task-started", T0 + 12.0, uuid="a")], T0 + 12)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(2.0))
    assert not any(s.invalid.values())


def test_hosts_beyond_the_cap_get_no_memory() -> None:
    """At the cap a new host's offset is its latest sample alone: nothing is stored."""
    c = clocks(max_hosts=1)
    delays(c, "celery@a", 1.0)
    assert delays(c, "celery@b", 2.0, 3.0, 10.0) == [2.0, 3.0, 10.0]
    assert c.estimates() == {"a": 1.0}


def test_the_previous_window_counts_with_its_second_smallest() -> None:
    c = clocks()
    delays(c, "celery@h", 2.0, 5.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    assert delays(c, "celery@h", 10.0) == [5.0]
    assert delays(c, "celery@h", 4.0) == [5.0], "10 and 4: the current window's is 10"


def test_windows_roll_every_window_seconds_from_the_start() -> None:
    c = clocks()
    delays(c, "celery@h", 2.0)
    c.roll(OFFSET_WINDOW_SECONDS - 1)
    assert c.offsets, "not a window yet"
    c.roll(OFFSET_WINDOW_SECONDS)
    assert not c.offsets and c.offsets_prev
    assert c.estimates() == {"h": 2.0}
    c.roll(2 * OFFSET_WINDOW_SECONDS)
    assert c.estimates() == {}, "not heard from for two windows: forgotten"


def test_estimates_take_the_lower_of_both_windows() -> None:
    c = clocks()
    delays(c, "celery@low-before", 5.0)
    delays(c, "celery@low-now", 2.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    delays(c, "celery@low-before", 9.0)
    delays(c, "celery@low-now", 1.0)
    assert c.estimates() == {"low-before": 5.0, "low-now": 1.0}


def test_at_the_cap_known_hosts_still_take_their_lower_estimate() -> None:
    """The current window fills the cap (b, y); the previous one has x (no room) before b,
    whose lower estimate there must still win."""
    c = clocks(max_hosts=2)
    delays(c, "celery@x", 5.0)
    delays(c, "celery@b", 1.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    delays(c, "celery@b", 4.0)
    delays(c, "celery@y", 6.0)
    assert c.estimates() == {"b": 1.0, "y": 6.0}
