"""The worker's side of the controller's decisions under xdist: an attempt goes to the controller with a report,
and the worker waits, when it must, until the controller's record of it is in results.jsonl (session.py lands
it). An endless loop waits after every iteration, so that patience and --autoresearch-max-crashes see it
before the next one starts; a `mutator: workspace` task holds its task lock until then, so that the next
iteration reads the workspace only once the verdict has landed in it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .attempt import Attempt
from .results import ResultsStore

# What a worker waits at most for the controller's record of its attempt. Landing takes well under a second; the
# controller lands one report at a time, so with many workers a verdict can queue behind the others' commits.
RECORD_TIMEOUT_S = 600.0
POLL_S = (0.01, 0.25)  # the first wait between two readings of results.jsonl, and the longest


class NoVerdict(Exception):
    """The controller recorded no verdict on a handed-over attempt in time (str(): the one line that says so)."""


def send_loop_iteration(item: pytest.Item, attempt: Attempt) -> None:
    """Hand one iteration of an endless loop to the controller: one extra `when="call"` report of the loop item
    (xdist forwards every logreport, and it must name the item the worker runs), marked as a loop iteration.
    It passes whatever the verdict: as without xdist, a lone crash does not fail the loop. Its duration is 0, as
    the loop item's own call report times the whole loop (JUnit XML adds up a test case's reports)."""
    now = time.time()
    report = pytest.TestReport(nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
                               outcome="passed", longrepr=None, when="call", duration=0.0, user_properties=[])
    report.start = report.stop = now
    report.autoresearch_attempt = attempt.to_data()
    report.autoresearch_loop_iteration = True
    item.ihook.pytest_runtest_logreport(report=report)


def await_record(store: ResultsStore, task: str, iteration: int, timeout_s: float = RECORD_TIMEOUT_S) -> dict[str, Any]:
    """The record of the task's iteration, once it is in the results file; NoVerdict after timeout_s without it."""
    deadline, pause = time.monotonic() + timeout_s, POLL_S[0]
    while True:
        for record in store.records(task):
            if record.get("iteration") == iteration and record.get("status") != "baseline":
                return record
        if time.monotonic() >= deadline:
            raise NoVerdict(f"crash: the xdist controller recorded no verdict on {task} #{iteration} within "
                            f"{timeout_s:g} s ({store.path})")
        time.sleep(pause)
        pause = min(pause * 2, POLL_S[1])
