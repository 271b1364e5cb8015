"""Collection: task.yaml -> one test function item per iteration (so iterations get real fixtures),
or one failing item carrying the one-line error when the task.yaml is invalid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from .attempt import Attempt
from .engine import Engine
from .errors import StorageUnwritable
from .guard import Checked, check
from .handover import NoVerdict, await_record, send_loop_iteration
from .iteration import attempt_iteration, run_iteration
from .landing import Landing
from .results import Record
from .sandbox import scan
from .task import Task, TaskError, load_task, unmatched_globs
from .workspace import Snapshot

LOG_TAIL_LINES = 30
TASK_NAMES = pytest.StashKey[dict[str, Path]]()  # task name -> the task.yaml that has it, over the whole collection
PROTECTED_STOPS = pytest.StashKey[dict[str, str]]()  # task name -> why its protected files stopped it, this process
FAILING = ("crash", "rejected", "interrupted")
PROPERTIES = ("task", "iteration", "status", "metric", "score", "baseline_score", "reason", "log")  # JUnit XML


class TaskWarning(pytest.PytestWarning):
    """A task.yaml that loads but probably does not say what was meant (a glob that matches nothing)."""


class IsolationWarning(pytest.PytestWarning):
    """runner.isolation: auto where bubblewrap cannot run: the runner runs unisolated (said once a session)."""


class IterationFailed(Exception):
    """The iteration ran, and its outcome fails the item (crash, rejected, or a gated discard)."""


@dataclass(frozen=True)
class _Crash:
    path: str
    lineno: int | None
    message: str


class FailureText:
    """What repr_failure returns for a failure told in words: the text, and its first line as the crash message
    that pytest's short summary and JUnit XML show (every pytest we support reads it there; newer ones also
    take a plain string)."""

    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.reprcrash = _Crash(str(path), None, text.partition("\n")[0])

    def toterminal(self, tw) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def autoresearch_iteration(request: pytest.FixtureRequest, autoresearch_engine: Engine) -> None:
    """One research iteration of the item's task (the function every IterationItem calls)."""
    item: IterationItem = request.node
    checked = None
    if item.made is None:  # an attempt made elsewhere (ray_executor.py) was started before any stop: it lands
        if (stopped := crash_stop(request.config, autoresearch_engine, item.task.name, item.since)) is not None:
            pytest.skip(stopped)
        _check_patience(request, autoresearch_engine, item)
        checked = _check_protected(request, autoresearch_engine, item)
    _run_one(request, autoresearch_engine, item, checked)


def autoresearch_loop(request: pytest.FixtureRequest, autoresearch_engine: Engine) -> None:
    """Iterations of the item's task until Ctrl-C/SIGTERM, patience or --autoresearch-max-crashes ends it
    (--autoresearch-iterations 0). Each iteration is recorded as it ends; a lone crash or rejection does
    not stop the loop. Under xdist each iteration is handed to the controller in a report of its own
    (handover.send_loop_iteration), and the next starts once the controller has recorded it."""
    item: IterationItem = request.node
    ran = False
    while True:
        if (stopped := crash_stop(request.config, autoresearch_engine, item.task.name, item.since)) is not None:
            raise IterationFailed(stopped)
        _check_patience(request, autoresearch_engine, item, stop=ran)
        checked = _check_protected(request, autoresearch_engine, item)
        del item.user_properties[:]
        try:
            _run_one(request, autoresearch_engine, item, checked, in_loop=True)
        except IterationFailed:
            continue
        finally:
            ran = True


def crash_stop(config: pytest.Config, engine: Engine, task: str, since: int) -> str | None:
    """Why the task is stopped by --autoresearch-max-crashes (K crashes in a row this session), else None."""
    limit = config.getoption("autoresearch_max_crashes")
    crashes = engine.storage.results.crashes_in_a_row(task, since) if limit else []
    if len(crashes) < limit or not crashes:
        return None
    last = crashes[-1]
    return (f"max-crashes: {task} stopped after {len(crashes)} crashes in a row; last (#{last['iteration']}): "
            f"{last.get('reason', '')} (log: {last.get('log')})")


def _check_patience(request: pytest.FixtureRequest, engine: Engine, item: IterationItem, stop: bool = False) -> None:
    """Out of patience: skip the item, or with `stop` (a loop that ran an iteration) end it, passing."""
    patience = request.config.getoption("autoresearch_patience")
    if patience and engine.storage.results.misses_in_a_row(item.task.name, item.since) >= patience:
        if stop:
            raise _StopLoop()
        pytest.skip(f"patience: {patience} iterations in a row without a keep")


class _StopLoop(Exception):
    pass


def _check_protected(request: pytest.FixtureRequest, engine: Engine, item: IterationItem) -> Checked:
    """The workspace's protected files, checked against the last landing's (guard.py); a change stops the task:
    the first of its items to find it fails with the one line (a loop ends), and its later items in this process
    skip with it. Nothing has run yet, and nothing in the workspace changes."""
    stops = request.config.stash.setdefault(PROTECTED_STOPS, {})
    if item.task.name in stops:
        pytest.skip(stops[item.task.name])
    checked, stopped = check(engine, item.task)
    if stopped is not None:
        stops[item.task.name] = item.stopped = stopped
        raise IterationFailed(stopped)
    return checked


def _run_one(request: pytest.FixtureRequest, autoresearch_engine: Engine, item: IterationItem,
             checked: Checked | None, in_loop: bool = False) -> None:
    description = os.environ.get("AUTORESEARCH_DESCRIPTION", "")
    try:
        if item.hands_over:
            _hand_over(autoresearch_engine, item, description, in_loop, checked)
            return
        if item.made is not None:  # made on a Ray node: decided and landed here, as run_iteration would
            record = Landing(autoresearch_engine).land(item.task, item.made)
        else:
            record = run_iteration(autoresearch_engine, item.task, description, checked)
    except StorageUnwritable as e:  # nothing was applied; no later iteration could be recorded either
        pytest.exit(f"autoresearch: stopped: {e}; nothing was applied")
    item.record = record
    item.user_properties.extend(properties(record))
    if (failure := verdict_failure(autoresearch_engine.rootdir, record,
                                   request.config.getoption("autoresearch_fail_on_discard"))) is not None:
        raise IterationFailed(failure)


def _hand_over(engine: Engine, item: IterationItem, description: str, in_loop: bool, checked: Checked | None) -> None:
    """Make the attempt here for the xdist controller to decide and land (session.py), and go on once it has
    recorded it: a loop's iteration goes in a report of its own and is waited for at once; a finite item's goes
    in its call report (sent before teardown) and is waited for in its teardown, and its crash or rejection
    fails it here. A workspace task's lock, taken before the workspace is read, is held until then."""
    task = item.task
    with ExitStack() as held:
        if task.workspace_mode:  # the workspace is the one candidate: held from its reading to its verdict
            held.enter_context(engine.storage.lock(f"task-{task.name}"))
        attempt = attempt_iteration(engine, task, description, checked)
        if in_loop:
            send_loop_iteration(item, attempt)
            await_record(engine.storage.results, task.name, attempt.iteration)
            return
        item.attempt = attempt
        after_landing = held.pop_all()  # the lock outlives the call phase, till the teardown's wait
        after_landing.callback(await_record, engine.storage.results, task.name, attempt.iteration)
        item.addfinalizer(after_landing.close)  # the wait runs first, then the lock is released
    if attempt.status in FAILING:
        raise IterationFailed(failure_text(engine.rootdir, attempt.status, attempt.reason, attempt.log))


def properties(record: Record) -> list[tuple[str, object]]:
    """The record's fields that an item's report carries (JUnit XML's properties)."""
    return [(key, getattr(record, key)) for key in PROPERTIES]


def verdict_failure(rootdir: Path, record: Record, fail_on_discard: bool) -> str | None:
    """Why the record fails its item (crash, rejected, interrupted, or a gated discard), else None."""
    if record.status in FAILING:
        return failure_text(rootdir, record.status, record.reason, record.log)
    if record.status == "discard" and fail_on_discard:
        return f"discarded (--autoresearch-fail-on-discard): {record.reason}"
    return None


def failure_text(rootdir: Path, status: str, reason: str, log: str | None) -> str:
    text = f"{status}: {reason}"
    if status == "crash" and log:
        path = rootdir / log if not os.path.isabs(log) else Path(log)
        try:
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            tail = []
        text += f"\nlog: {log} (last {len(tail)} lines)\n" + "\n".join("    " + line for line in tail)
    return text


class TaskFile(pytest.File):
    """A task.yaml: yields `<task>[1]` ... `<task>[N]`, N from --autoresearch-iterations."""

    def collect(self) -> Iterator[pytest.Item]:
        engine = self.config.pluginmanager.get_plugin("autoresearch-session").engine
        try:
            task = load_task(self.path, engine.rootdir)
        except TaskError as error:
            yield InvalidTaskItem.from_parent(self, name="invalid", error=error)
            return
        first = self.config.stash.setdefault(TASK_NAMES, {}).setdefault(task.name, self.path)
        if first != self.path:  # one name is one history: records, logs and baselines would be shared
            error = TaskError(f"{engine.shown(self.path)}: name: {task.name!r} is already the name of "
                              f"{engine.shown(first)} (their results and logs would mix)")
            yield InvalidTaskItem.from_parent(self, name="invalid", error=error)
            return
        for unmatched in unmatched_globs(task, scan(engine.rootdir)):
            self.warn(TaskWarning(f"{engine.shown(self.path)}: {unmatched} matches no file under {engine.rootdir}"))
        if task.runner_unisolated is not None:  # under xdist each worker's is the same line: the summary shows one
            self.warn(IsolationWarning(task.runner_unisolated))
        if self.config.getoption("autoresearch_reset") and task.workspace_mode:
            # before any iteration: under xdist every worker collects before the first item is scheduled
            Snapshot(engine.storage.state_dir, task).forget()
        since = engine.storage.results.last_iteration(task.name)
        iterations = self.config.getoption("autoresearch_iterations")
        hands_over = hasattr(self.config, "workerinput")  # an xdist worker: the controller lands its attempts
        if iterations == 0:  # one endless loop per xdist worker, so -n N still runs N iterations at once
            workers = getattr(self.config, "workerinput", {}).get("workercount", 1)
            for k in range(1, workers + 1):
                yield IterationItem.from_parent(self, name=f"{task.name}[loop-{k}]", callobj=autoresearch_loop,
                                                task=task, since=since, hands_over=hands_over)
            return
        for k in range(1, iterations + 1):
            yield IterationItem.from_parent(self, name=f"{task.name}[{k}]", callobj=autoresearch_iteration,
                                            task=task, since=since, hands_over=hands_over)


class IterationItem(pytest.Function):
    def __init__(self, *, task: Task, since: int, hands_over: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.since = since  # the task's last iteration before this session: patience counts after it
        self.hands_over = hands_over  # its attempt is landed by the xdist controller, from this item's report
        self.record: Record | None = None  # landed here
        self.attempt: Attempt | None = None  # handed over
        self.made: Attempt | None = None  # made elsewhere (the Ray executor), to land here
        self.stopped: str | None = None  # why the check of the protected files stopped the task (guard.py)

    def runtest(self) -> None:
        try:
            super().runtest()
        except _StopLoop:
            pass  # out of patience: the loop ends, its last verdict stands

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance((IterationFailed, NoVerdict)):
            return FailureText(str(excinfo.value), self.path)
        return super().repr_failure(excinfo)  # pytest.Function's takes no style (pytest 9)


class InvalidTaskItem(pytest.Item):
    """Fails with the task.yaml's one-line error, while the other tasks still run."""

    def __init__(self, *, error: TaskError, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(TaskError):
            return FailureText(str(excinfo.value), self.path)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.nodeid.rpartition("::")[0]
