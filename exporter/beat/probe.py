"""The beat probe: reads the schedule sources on the probe timer and computes each entry's
row (last run, next run, overdue) for the collector.

The event path only keeps `State.last_sent` (task name -> when last sent), as it did before
there was a schedule; joining it with the schedule costs one dict lookup per entry here,
once per probe interval, under the pipeline lock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from celery_events_exporter.beat.schedules import Entry, PeriodicFacts, evaluate
from celery_events_exporter.beat.sources import Read, Source
from celery_events_exporter.labels import Labeler, LabelPolicy
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults

log = logging.getLogger(__name__)


class ScheduleReadError(RuntimeError):
    """A schedule source failed; its last good read was used instead."""


class BeatProbe(Probe):
    name = "beat"

    def __init__(self, sources: Sequence[Source], pipeline: Pipeline, policy: LabelPolicy,
                 interval: float, timeout: float, grace: float, max_entries: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.sources = sorted(sources, key=lambda s: s.precedence)
        self.pipeline = pipeline
        self.labels = Labeler(policy)
        self.interval = interval
        self.timeout = timeout
        self.grace = grace
        self.max_entries = max_entries
        self.clock = clock
        self._last_good: dict[int, Read] = {}
        # Entry name -> when this exporter first saw it: the reference of an entry that has
        # not run yet, so one added to the database later is not overdue from our start.
        self._first_seen: dict[str, float] = {}

    def run(self, results: ProbeResults) -> None:
        entries: dict[str, Entry] = {}
        skipped: Counter[str] = Counter()
        failures = []
        for i, source in enumerate(self.sources):
            try:
                read = self._last_good[i] = source.read(self.max_entries, self.timeout)
            except Exception as exc:  # counted by the runner (probe errors), never fatal
                failures.append(f"{source.describe()}: {type(exc).__name__}: {exc}")
                read = self._last_good.get(i, ([], {}))
            got, skip = read
            skipped.update(skip)
            for entry in got:
                entries.setdefault(entry.name, entry)
        kept = sorted(entries.values(), key=lambda e: e.name)
        if len(kept) > self.max_entries:
            skipped["over_cap"] += len(kept) - self.max_entries
            kept = kept[: self.max_entries]
        labelled = []
        for entry in kept:
            label = self.labels.task(entry.task)
            if label is None:
                skipped["excluded"] += 1
            else:
                labelled.append((entry, label))
        with self.pipeline.lock:
            last_sent = self.pipeline.state.last_sent
            sent = [last_sent.get(label) for _, label in labelled]
        now = self.clock()
        seen = self._first_seen
        self._first_seen = {e.name: seen.get(e.name, now) for e, _ in labelled}  # bounded
        rows = []
        for (entry, label), at in zip(labelled, sent, strict=True):
            try:
                row = evaluate(entry, label, at, self._first_seen[entry.name], now, self.grace)
            except Exception as exc:  # Celery's arithmetic on an odd crontab: skip that one
                log.debug("beat entry %s: %s", entry.name, exc)
                skipped["invalid"] += 1
                continue
            rows.append(replace(row, entry=self.labels.cap(row.entry)))
        facts = PeriodicFacts(rows, {k: v for k, v in skipped.items() if v})
        with results.lock:
            results.periodic = facts
        if failures:
            raise ScheduleReadError("; ".join(failures))
