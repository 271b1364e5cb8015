"""Collection: task.yaml -> one test function item per iteration (so iterations get real fixtures),
or one failing item carrying the one-line error when the task.yaml is invalid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .engine import Engine
from .iteration import run_iteration
from .results import Record
from .task import Task, TaskError, load_task

LOG_TAIL_LINES = 30
FAILING = ("crash", "rejected", "interrupted")


class IterationFailed(Exception):
    """The iteration ran, and its outcome fails the item (crash, rejected, or a gated discard)."""


def autoresearch_iteration(request: pytest.FixtureRequest, autoresearch_engine: Engine) -> None:
    """One research iteration of the item's task (the function every IterationItem calls)."""
    item: IterationItem = request.node
    record = run_iteration(autoresearch_engine, item.task, os.environ.get("AUTORESEARCH_DESCRIPTION", ""))
    item.record = record
    for key in ("task", "iteration", "status", "metric", "score", "baseline_score", "reason", "log"):
        item.user_properties.append((key, getattr(record, key)))
    if record.status in FAILING:
        raise IterationFailed(_failure_text(autoresearch_engine.rootdir, record))
    if record.status == "discard" and request.config.getoption("autoresearch_fail_on_discard"):
        raise IterationFailed(f"discarded (--autoresearch-fail-on-discard): {record.reason}")


def _failure_text(rootdir: Path, record: Record) -> str:
    text = f"{record.status}: {record.reason}"
    if record.status == "crash" and record.log:
        path = rootdir / record.log if not os.path.isabs(record.log) else Path(record.log)
        try:
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            tail = []
        text += f"\nlog: {record.log} (last {len(tail)} lines)\n" + "\n".join("    " + line for line in tail)
    return text


class TaskFile(pytest.File):
    """A task.yaml: yields `<task>[1]` ... `<task>[N]`, N from --autoresearch-iterations."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            task = load_task(self.path, self.config.rootpath)
        except TaskError as error:
            yield InvalidTaskItem.from_parent(self, name="invalid", error=error)
            return
        for k in range(1, self.config.getoption("autoresearch_iterations") + 1):
            yield IterationItem.from_parent(self, name=f"{task.name}[{k}]", callobj=autoresearch_iteration, task=task)


class IterationItem(pytest.Function):
    def __init__(self, *, task: Task, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.record: Record | None = None

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(IterationFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class InvalidTaskItem(pytest.Item):
    """Fails with the task.yaml's one-line error, while the other tasks still run."""

    def __init__(self, *, error: TaskError, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(TaskError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.nodeid.rpartition("::")[0]
