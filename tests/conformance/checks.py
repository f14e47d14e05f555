"""Waiting on the reference consumer, and the comparison loop every conformance test ends with."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conformance.compare import disagreements
from tests.conformance.conftest import Fleet
from tests.conformance.reference import Reference, Snapshot
from tests.integration.harness import DEADLINE

DONE = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE,
             detail: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} {detail()}")
        time.sleep(0.1)


def states(ref: Reference, ids: list[str]) -> list[str | None]:
    return [ref.task_state(i) for i in ids]


def finished(ref: Reference, ids: list[str], rejected: list[str]) -> bool:
    # State keeps a rejected task STARTED (REJECTED ranks below STARTED in its precedence),
    # so Reject tasks are done once their task-rejected has arrived.
    return set(states(ref, ids)) <= DONE and \
        all("task-rejected" in ref.kinds(i) for i in rejected)


def agree(fleet: Fleet, timeout: float = DEADLINE,
          event_types: frozenset[str] | None = None) -> Snapshot:
    """Scrape until the exporter says what the reference saw; fail with the differences."""
    ref, exp = fleet.reference, fleet.exporter
    deadline = time.monotonic() + timeout
    while True:
        before = ref.snapshot()
        metrics = exp.scrape()
        after = ref.snapshot()
        problems = disagreements(metrics, before, after, event_types)
        if not problems:
            return after
        if time.monotonic() > deadline:
            raise AssertionError(
                "the exporter disagrees with Celery's State:\n  " + "\n  ".join(problems)
                + f"\nreference duplicates: {after.duplicates}\n{fleet.procs.logs()}")
        time.sleep(0.5)
