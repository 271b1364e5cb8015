"""The autoresearch session: registered only when --autoresearch is on, so a plain test run never
sees these hooks. Collects task.yaml files, labels outcomes (KEPT / DISCARDED), sums up per task."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .attempt import Attempt
from .engine import Engine
from .errors import StorageUnwritable
from .interrupts import TerminateAsInterrupt, interrupt_reason
from .items import FailureText, IterationItem, TaskFile, crash_stop, properties, verdict_failure
from .landing import Landing
from .results import Record
from .storage import DEFAULT_DIR, RESULTS_NAME, Storage
from .task import Task, load_task

TASK_FILE = "task.yaml"
TASK_DIR = "experiments"  # where tasks live, below the folder they run in
SESSION_PLUGIN_NAME = "autoresearch-session"
REPORT_FILES = ("report.md", "progress.png", "results.tsv")  # what `python -m pytest_autoresearch.report` writes
# an xdist loop iteration's failing verdict, which passes its report: (the summary's category, the letter); an
# interrupted iteration sends no report (its worker lands it and stops)
LOOP_LABELS = {"crash": ("crashed", "C"), "rejected": ("rejected", "R")}


@dataclass(frozen=True)
class Options:
    """The --autoresearch option group, read once."""
    enabled: bool
    iterations: int  # 0: until interrupted
    patience: int  # 0: off
    max_crashes: int  # 0: off
    rootdir: Path  # the folder tasks run in: artifact globs, commands, sandboxes and work/ are relative to it
    rootdir_why: str
    storage: Path  # the folder of every file the engine writes
    results: Path
    commit: bool
    fail_on_discard: bool

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        iterations = config.getoption("autoresearch_iterations")
        patience = config.getoption("autoresearch_patience")
        max_crashes = config.getoption("autoresearch_max_crashes")
        if config.getoption("autoresearch") and min(iterations, patience, max_crashes) < 0:
            raise pytest.UsageError(f"--autoresearch-iterations, --autoresearch-patience and "
                                    f"--autoresearch-max-crashes must be >= 0, got {iterations}, {patience} "
                                    f"and {max_crashes}")
        rootdir, why = research_root(config)
        here = config.invocation_params.dir
        results, folder = config.getoption("autoresearch_results"), config.getoption("autoresearch_dir")
        # the storage is --autoresearch-dir, else the results file's folder, else work/ where tasks run
        storage = (here / folder) if folder else (here / results).parent if results else rootdir / DEFAULT_DIR
        path = (here / results) if results else storage / RESULTS_NAME
        return cls(enabled=config.getoption("autoresearch"), iterations=iterations, patience=patience,
                   max_crashes=max_crashes, rootdir=rootdir, rootdir_why=why, storage=storage.resolve(),
                   results=path.resolve(),
                   commit=config.getoption("autoresearch_commit"),
                   fail_on_discard=config.getoption("autoresearch_fail_on_discard"))


def research_root(config: pytest.Config) -> tuple[Path, str]:
    """(the folder tasks run in, why it): the folder holding the experiments/ folder that the first task path
    lies in, else pytest's rootdir (where its config file is, or the invocation folder). So running from a
    parent folder neither runs commands there nor copies its unrelated trees into sandboxes."""
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        for folder in (path, *path.parents):
            if folder.name == TASK_DIR:
                return folder.parent, f"the folder holding {TASK_DIR}/"
    if config.inipath is not None:
        return config.rootpath.resolve(), f"where {config.inipath.name} is"
    return config.rootpath.resolve(), "pytest's rootdir"


@dataclass
class TaskSummary:
    """One task's line in the terminal summary, from the records this session appended."""
    direction: str = "maximize"
    counts: dict[str, int] = field(default_factory=dict)
    baseline: float | None = None  # what the session's first iteration was judged against
    start_hash: str | None = None  # the artifacts the session started from (its first judged baseline)
    best: float | None = None  # best kept score
    baseline_from: str | None = None  # a new git HEAD this session took as the workspace baseline

    def add(self, record: dict[str, Any]) -> None:
        self.direction = record["direction"]
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        if self.baseline is None:
            self.baseline = record.get("baseline_score")
        if self.start_hash is None:
            self.start_hash = record.get("baseline_hash")
        self.baseline_from = record.get("baseline_from") or self.baseline_from
        score = record.get("score")
        if record["status"] == "keep" and score is not None:
            better = self.best is None or (score > self.best if self.direction == "maximize" else score < self.best)
            self.best = score if better else self.best


class AutoresearchSession:
    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        # one id for the run, the controller's, stamped on every record: the summary counts this run's only
        self.session_id = getattr(config, "workerinput", {}).get("autoresearch_session") or uuid.uuid4().hex[:12]
        self.engine = Engine(rootdir=options.rootdir, storage=Storage(options.storage, options.results,
                                                                      self.session_id),
                             worker=worker, commit=options.commit)
        try:  # before anything runs: an iteration that cannot be recorded must not start
            self.engine.storage.results.check_writable()
        except StorageUnwritable as e:
            raise pytest.UsageError(f"autoresearch: {e}") from None
        # each task's last iteration before this session: the summary covers the ones after
        self.since: dict[str, int] = {}
        for record in self.engine.storage.results.records():
            task, iteration = record.get("task"), int(record.get("iteration", 0))
            self.since[task] = max(self.since.get(task, 0), iteration)
        self.heads_at_start = self.engine.storage.results.heads()  # read before any worker can keep
        self.terminate = TerminateAsInterrupt()
        self.interrupted: str | None = None
        self.tasks: dict[str, Task] = {}  # the controller's own reading of the tasks whose attempts it lands
        self.landed: dict[str, list[tuple[str, object]]] = {}  # nodeid -> its record's properties, until teardown
        self.stops: dict[str, str] = {}  # task -> why the check of its protected files stopped it (guard.py)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:  # xdist, on the controller: its workers share its session id
        node.workerinput["autoresearch_session"] = self.session_id

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"autoresearch: tasks run in {self.options.rootdir} ({self.options.rootdir_why})"

    # ------------------------------------------------------------------------
    # Stopping: SIGTERM is a Ctrl-C while the session runs

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.terminate.install()
        # restored after every pytest_unconfigure hook, not in ours: a signal during the others' must not raise
        self.config.add_cleanup(self.terminate.restore)
        self.engine.storage.remove_dead_temp_files()

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = interrupt_reason(excinfo.value)
        self.terminate.wind_down()  # the iteration is recorded: a second signal must not cut the summary short

    # ------------------------------------------------------------------------
    # Collection: task.yaml files only (explicitly named files aside)

    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path.is_file() and collection_path.name != TASK_FILE:
            return True
        return None

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.name == TASK_FILE:
            return TaskFile.from_parent(parent, path=file_path)
        return None

    # ------------------------------------------------------------------------
    # Reporting (on the xdist controller: labels from the workers' reports, the table from results.jsonl)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        report = yield
        if isinstance(item, IterationItem) and report.when == "call":
            if item.stopped is not None:  # for the summary (pytest_runtest_logreport), from any xdist worker
                report.autoresearch_stop = {"task": item.task.name, "reason": item.stopped}
            if item.record is not None:
                report.autoresearch = _outcome(item.record)
            elif item.attempt is not None:  # for the controller to land (pytest_runtest_logreport)
                report.autoresearch_attempt = item.attempt.to_data()
        return report

    # ------------------------------------------------------------------------
    # Deciding (on the xdist controller): a worker's attempt is decided, applied, committed and recorded here,
    # before any other plugin sees its report, so labels, failures and JUnit XML show the verdict. A finite
    # item's attempt comes in its call report, which the verdict may fail. An endless loop's iterations come
    # in extra call reports of the loop item, one each (xdist forwards a report only under the nodeid of the
    # item the worker runs): each is labelled with its verdict (K, D, or its status: a crash is C and counted
    # as "crashed") and passes, as a lone crash does not fail a loop; the loop item's own call report passes
    # or fails as the loop ended, and its JUnit XML test case has the properties of its last iteration.

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown" and report.nodeid in self.landed:  # JUnit XML reads the teardown report's
            report.user_properties = [*report.user_properties, *self.landed.pop(report.nodeid)]
        if (stop := getattr(report, "autoresearch_stop", None)) is not None:
            self.stops[stop["task"]] = stop["reason"]
        data = getattr(report, "autoresearch_attempt", None)
        if data is None or self.engine.worker != "main":
            return
        del report.autoresearch_attempt  # landed now; its file contents go no further
        attempt = Attempt.from_data(data)
        if attempt.task_file not in self.tasks:
            self.tasks[attempt.task_file] = load_task(Path(attempt.task_file), self.options.rootdir)
        try:
            record = Landing(self.engine).land(self.tasks[attempt.task_file], attempt)
        except StorageUnwritable as e:  # nothing was applied; no later iteration could be recorded either
            pytest.exit(f"autoresearch: stopped: {e}; nothing was applied")
        report.autoresearch = _outcome(record)
        report.user_properties = [*report.user_properties, *properties(record)]
        self.landed[report.nodeid] = properties(record)  # a loop's: its latest iteration's
        if getattr(report, "autoresearch_loop_iteration", False):
            return
        failure = verdict_failure(self.options.rootdir, record, self.options.fail_on_discard)
        if report.passed and failure is not None:
            report.outcome = "failed"
            report.longrepr = FailureText(failure, Path(attempt.task_file))

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, Any] | None:
        outcome = getattr(report, "autoresearch", None)
        if outcome is None or report.when != "call":
            return None
        status, score, base = outcome["status"], outcome["score"], outcome["baseline_score"]
        shown = "" if score is None else f" {score:.6g}"
        if score is not None and base is not None:
            shown += f" ({score - base:+.4g} vs {base:.6g})"
        if report.failed:
            return "failed", "F", (f"{status.upper()}{shown}", {"red": True})
        if getattr(report, "autoresearch_loop_iteration", False) and status in LOOP_LABELS:
            category, letter = LOOP_LABELS[status]
            return category, letter, (f"{status.upper()}{shown}", {"red": True})
        if status == "keep":
            return "kept", "K", (f"KEPT{shown}", {"green": True})
        return "discarded", "D", (f"DISCARDED{shown}", {"yellow": True})

    def summaries(self) -> dict[str, TaskSummary]:
        summaries: dict[str, TaskSummary] = {}
        records = [r for r in self.engine.storage.results.records()
                   if r.get("status") != "baseline" and r.get("session") == self.session_id]
        for record in sorted(records, key=lambda r: (r["task"], r["iteration"])):
            summaries.setdefault(record["task"], TaskSummary()).add(record)
        return summaries

    def reverted(self, task: str, start_hash: str | None) -> str | None:
        """A warning when this session began from artifacts other than the workspace's state after the task's
        last keep (mutator mode records it): the workspace was reset or edited between runs (`git checkout`,
        a fresh copy), so keeps may be missing from it."""
        head = self.heads_at_start.get(task)
        if not head or start_hash is None or start_hash == head.get("hash"):
            return None
        return (f"{task}: this run started from artifacts {start_hash[:12]}, not the workspace's state after the "
                f"last keep (iteration {head.get('iteration')}, {str(head.get('hash'))[:12]}): the workspace was "
                f"reset or edited between runs, so kept changes may be missing from it (each keep's diff: "
                f"{self.engine.shown(self.engine.storage.logs_dir / task)}/<iteration>.diff)")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        summaries = self.summaries()
        if getattr(self.config, "workerinput", None) is not None or not (summaries or self.stops):
            return
        tr = terminalreporter
        tr.write_sep("=", "autoresearch")
        header = f"{'task':<24} {'iters':>5} {'kept':>5} {'disc':>5} {'crash':>5} {'rej':>5} " \
                 f"{'baseline':>12} {'best':>12} {'delta':>10}"
        if summaries:
            tr.write_line(header)
        for name, s in sorted(summaries.items()):
            base = s.baseline
            best = s.best if s.best is not None else base
            delta = f"{best - base:+.4g}" if best is not None and base is not None else "-"
            cells = [s.counts.get(k, 0) for k in ("keep", "discard", "crash", "rejected")]
            tr.write_line(f"{name:<24} {sum(s.counts.values()):>5} " + " ".join(f"{c:>5}" for c in cells) +
                          f" {_num(base):>12} {_num(best):>12} {delta:>10}")
        for name in sorted(summaries):
            if summaries[name].baseline_from:
                tr.write_line(f"{name}: new baseline from {summaries[name].baseline_from}, committed since the "
                              f"last run (the stored baseline after earlier keeps was replaced)", yellow=True)
            if (warning := self.reverted(name, summaries[name].start_hash)) is not None:
                tr.write_line(warning, yellow=True)
            if (stopped := crash_stop(self.config, self.engine, name, self.since.get(name, 0))) is not None:
                tr.write_line(stopped, red=True)
        for name, reason in sorted(self.stops.items()):
            tr.write_line(f"{name}: {reason}", red=True)
        if self.interrupted is not None:
            tr.write_line(f"interrupted ({self.interrupted}): the iteration in progress is recorded as "
                          f"'interrupted'; the workspace holds the last keep. Run again to resume.", yellow=True)
        results = self.engine.shown(self.options.results)
        tr.write_line(f"results: {results}")
        tr.write_line(f"report: python -m pytest_autoresearch.report {results}")
        existing = [self.engine.shown(path) for name in REPORT_FILES
                    if (path := self.options.results.parent / name).is_file()]
        if existing:
            tr.write_line(f"report files (as of their last writing): {', '.join(existing)}")


def _outcome(record: Record) -> dict[str, Any]:
    """What a report carries of its record for the verdict labels (pytest_report_teststatus)."""
    return {"task": record.task, "iteration": record.iteration, "status": record.status, "score": record.score,
            "baseline_score": record.baseline_score, "direction": record.direction}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
