"""Cardinality controls: how node names and task names become label values.

Every mapping is cached per raw value, so the hot path pays one dict lookup; the caches
are cleared when they grow past a bound, so hostile input cannot grow them forever.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

UNKNOWN = "unknown"
_CACHE_LIMIT = 50_000


@dataclass(frozen=True)
class LabelPolicy:
    worker_mode: str = "full"  # full | host | regex | none
    worker_regex: re.Pattern[str] | None = None
    max_length: int = 128
    include_tasks: tuple[str, ...] = ()
    exclude_tasks: tuple[str, ...] = ()


class Labeler:
    def __init__(self, policy: LabelPolicy) -> None:
        self.policy = policy
        self._workers: dict[str, str] = {}
        self._tasks: dict[str, str | None] = {}
        self._include = _globs(policy.include_tasks)
        self._exclude = _globs(policy.exclude_tasks)

    def cap(self, value: str) -> str:
        limit = self.policy.max_length
        return value if len(value) <= limit else value[: limit - 3] + "..."

    def worker(self, hostname: str) -> str:
        label = self._workers.get(hostname)
        if label is None:
            if len(self._workers) >= _CACHE_LIMIT:
                self._workers.clear()
            label = self._workers[hostname] = self._worker_label(hostname)
        return label

    def _worker_label(self, hostname: str) -> str:
        mode = self.policy.worker_mode
        if mode == "none":
            return ""
        if mode == "host":
            return self.cap(hostname.partition("@")[2] or hostname)
        if mode == "regex" and self.policy.worker_regex is not None:
            m = self.policy.worker_regex.search(hostname)
            if m is None:
                return self.cap(hostname)
            return self.cap(m.group(1) if m.groups() else m.group(0))
        return self.cap(hostname)

    def task(self, name: str) -> str | None:
        """Label for a task name, or None when the filters exclude it."""
        try:
            return self._tasks[name]
        except KeyError:
            pass
        if len(self._tasks) >= _CACHE_LIMIT:
            self._tasks.clear()
        label: str | None = self.cap(name)
        include, exclude = self._include, self._exclude
        if (include is not None and not include.match(name)) or (
                exclude is not None and exclude.match(name)):
            label = None
        self._tasks[name] = label
        return label

    def queue(self, name: str) -> str:
        return self.cap(name)


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def exception_class(text: object) -> str:
    """`ValueError('x')` -> `ValueError`: the class name only, so the label stays bounded."""
    if not isinstance(text, str) or not text:
        return UNKNOWN
    head = text.partition("(")[0].strip()
    if not head or len(head) > 100 or not all(c.isalnum() or c in "_." for c in head):
        return UNKNOWN
    return head.rpartition(".")[2] or UNKNOWN
