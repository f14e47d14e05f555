"""Label values from node, task and exception names: the cardinality controls, directly."""

from __future__ import annotations

import pytest

from celery_events_exporter.labels import UNKNOWN, Labeler, LabelPolicy, exception_class


@pytest.mark.parametrize(("text", "label"), [
    ("ValueError('x')", "ValueError"),
    ("billiard.exceptions.WorkerLostError('Worker exited')", "WorkerLostError"),
    ("KeyError('a(b')", "KeyError"),  # the first parenthesis ends the class name
    ("  TimeoutError  ", "TimeoutError"),
    ("", UNKNOWN),
    (None, UNKNOWN),
    (5, UNKNOWN),  # not text at all: no partition on it
    (["ValueError"], UNKNOWN),
    ("Not a class('x')", UNKNOWN),
    ("pkg.", UNKNOWN),
    ("(no name)", UNKNOWN),
])
def test_exception_class(text: object, label: str) -> None:
    assert exception_class(text) == label


def test_exception_class_names_up_to_100_characters_are_kept() -> None:
    assert exception_class("E" * 100 + "('x')") == "E" * 100
    assert exception_class("E" * 101 + "('x')") == UNKNOWN


def test_task_filters_with_several_patterns_each_count() -> None:
    labeler = Labeler(LabelPolicy(include_tasks=("app.*", "billing.charge"),
                                  exclude_tasks=("app.secret*", "app.debug")))
    assert labeler.task("app.add") == "app.add"
    assert labeler.task("billing.charge") == "billing.charge"
    assert labeler.task("billing.refund") is None, "not included"
    assert labeler.task("app.secret_sauce") is None, "excluded by the first pattern"
    assert labeler.task("app.debug") is None, "excluded by the second pattern"
    assert labeler.task("app.add") == "app.add", "the cached answer is the same"


def test_task_labels_are_capped() -> None:
    labeler = Labeler(LabelPolicy(max_length=8))
    assert labeler.task("app.long_name") == "app.l..."
    assert labeler.task("app.add") == "app.add"


def test_worker_label_modes() -> None:
    assert Labeler(LabelPolicy(worker_mode="none")).worker("celery@a") == ""
    assert Labeler(LabelPolicy(worker_mode="full")).worker("celery@a") == "celery@a"
    assert Labeler(LabelPolicy(worker_mode="host")).worker("celery@a") == "a"
    # Everything after the first "@", as Celery splits node names (name@host).
    assert Labeler(LabelPolicy(worker_mode="host")).worker("celery@a@b") == "a@b"
    assert Labeler(LabelPolicy(worker_mode="regex")).worker("celery@a") == "celery@a", (
        "regex mode without a regex: the full name")


def test_queue_labels_are_capped() -> None:
    assert Labeler(LabelPolicy(max_length=5)).queue("default") == "de..."
