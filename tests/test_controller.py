"""Under xdist the decisions are the controller's: workers make candidates and score them; the main process,
fed by their reports, decides, applies, commits and appends the record, for finite iterations and endless loops,
in mutator and in workspace mode, and appends a new baseline's record too. Without xdist the same landing runs
in the one process."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from autoresearch_helpers import RENDEZVOUS_SCORE, REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.attempt import Attempt
from pytest_autoresearch.handover import NoVerdict, await_record
from pytest_autoresearch.results import ResultsStore
from pytest_autoresearch.sandbox import Link

# The inner session's conftest (loaded by the controller and by every worker): notes which process replaces a
# file in the workspace (a keep landing, a journal) and which appends to results.jsonl (`append <status>#<n>`).
WITNESS = '''
import os, pathlib
import pytest_autoresearch.results
_log = os.environ["WITNESS"]
def _note(what, path):
    with open(_log, "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'controller')} {what} {path}\\n")
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    _note("replace", dst)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
_append = pytest_autoresearch.results.ResultsStore.append
def append(self, record):
    _note("append", f"{record.status}#{record.iteration}")
    return _append(self, record)
pytest_autoresearch.results.ResultsStore.append = append
'''


def witnessed(pytester, monkeypatch, tmp_path) -> Path:
    """The WITNESS conftest in the inner session's folder; returns the file it writes."""
    witness = tmp_path / "witness.txt"
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("WITNESS", str(witness))
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # this run's own, under an outer -n: the inner controller is no worker
    pytester.makeini("[pytest]\n")
    (pytester.path / "conftest.py").write_text(WITNESS)
    return witness


def appenders(witness: Path) -> dict[str, str]:
    """`<status>#<iteration>` -> the process that appended that record."""
    notes = [line.split() for line in witness.read_text().splitlines()]
    return {what: who for who, kind, what in notes if kind == "append"}


def workspace_writers(witness: Path, path: Path) -> list[str]:
    """The processes that replaced `path` in the workspace or wrote a journal."""
    return [line.split()[0] for line in witness.read_text().splitlines()
            if line.split()[2] == str(path) or "/journal/" in line]


def xdist(pytester, *args):
    return pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "2",
                                         *args, timeout=240)


def test_under_xdist_the_controller_lands_every_keep(pytester, monkeypatch, tmp_path):
    witness = witnessed(pytester, monkeypatch, tmp_path)
    write_task(pytester.path, step=1, spec={"protected": ["conftest.py"]})
    result = xdist(pytester, "--autoresearch-iterations", "4", "-v")
    assert result.ret == 0, result.stdout.str()
    judged = [r for r in records(pytester.path) if r["status"] != "baseline"]
    assert sorted(r["iteration"] for r in judged) == [1, 2, 3, 4] and {r["worker"] for r in judged} <= {"gw0", "gw1"}
    assert any(r["status"] == "keep" for r in judged)
    landed = workspace_writers(witness, pytester.path / "experiments/t/value.txt")
    assert landed and set(landed) == {"controller"}, landed  # workers never write the workspace
    appended = appenders(witness)
    assert len(appended) == 5 and set(appended.values()) == {"controller"}, appended  # the baseline's record too
    result.stdout.fnmatch_lines(["*KEPT*"])  # the controller's verdict labels the workers' reports


def test_under_xdist_a_discard_fails_with_fail_on_discard_and_junitxml_has_the_verdict(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini("[pytest]\n")
    write_task(pytester.path, step=-1)
    result = xdist(pytester, "--autoresearch-iterations", "2", "--autoresearch-fail-on-discard",
                   "--junitxml=report.xml")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*discarded (--autoresearch-fail-on-discard): *"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "discard", "discard"]
    props = [{p.get("name"): p.get("value") for p in case.iter("property")}
             for case in ET.parse(pytester.path / "report.xml").iter("testcase")]
    assert sorted(p["status"] for p in props) == ["discard", "discard"] and all(p["score"] == "0.0" for p in props)


def test_an_attempt_crosses_processes_as_json_unchanged():
    attempt = Attempt(task_file="/r/experiments/t/task.yaml", task="t", iteration=3, started_at="2026-12-02T00:00:00+00:00",
                      worker="gw1", log="work/logs/t/3.log", baseline_hash="b", baseline_scores=(1.0, 2.0),
                      candidate_hash="c", files_changed=3, lines_changed=4,
                      changes={"a.txt": b"\xff\x00new", "l": Link("../x"), "gone.txt": None},
                      before={"a.txt": b"old", "l": None, "gone.txt": b"was"}, scores=(3.0,), metrics={"m": 1.5},
                      workspace=True, snapshot=({"a.txt": b"\xff\x00new"}, {"p": "sha"}, None))
    assert Attempt.from_data(json.loads(json.dumps(attempt.to_data()))) == attempt


def test_under_xdist_the_controller_appends_a_new_baseline_once_before_the_iterations_it_judged(pytester, monkeypatch,
                                                                                           tmp_path):
    witness = witnessed(pytester, monkeypatch, tmp_path)
    (tmp_path / "markers").mkdir()
    monkeypatch.setenv("RENDEZVOUS", str(tmp_path / "markers"))
    write_task(pytester.path, score=RENDEZVOUS_SCORE, spec={"protected": ["conftest.py"],  # 2 runs, one per worker
               "policy": {"kind": "noise-aware", "repeats": 2, "confidence": 0.95, "max_repeats": 2}})
    result = xdist(pytester, "--autoresearch-iterations", "2")
    assert result.ret == 0, result.stdout.str()
    recs = records(pytester.path)
    assert [r["status"] for r in recs][0] == "baseline" and [r["status"] for r in recs].count("baseline") == 1
    baseline, judged = recs[0], recs[1:]
    assert baseline["scores"] == [1.0, 1.0] and baseline["reason"] == "baseline scored; runs by gw0, gw1"
    assert sorted(r["iteration"] for r in judged) == [1, 2]
    assert all(r["baseline_hash"] == baseline["baseline_hash"] and r["baseline_scores"] == [1.0, 1.0] for r in judged)
    assert appenders(witness) == {"baseline#0": "controller", **{f"{r['status']}#{r['iteration']}": "controller"
                                                                for r in judged}}


# A loop's mutator: iterations 1 and 2 add 1, iteration 3 fails (a crash), the rest subtract 1.
LOOP_MUTATE = '''import os, pathlib, sys
n = int(os.environ["AUTORESEARCH_ITERATION"])
if n == 3:
    sys.exit("the mutator fails on iteration 3")
p = pathlib.Path("experiments/t/value.txt")
p.write_text(f"{int(p.read_text()) + (1 if n <= 2 else -1)}\\n")
'''
LABELLED = re.compile(r"^\[gw\d\] \[ *\d+%\] (KEPT|DISCARDED|CRASH)\b.* experiments/t/task.yaml::t\[loop-\d\]$")


def test_under_xdist_an_endless_loop_hands_each_iteration_to_the_controller(pytester, monkeypatch, tmp_path):
    witness = witnessed(pytester, monkeypatch, tmp_path)
    write_task(pytester.path, mutate=LOOP_MUTATE, spec={"protected": ["conftest.py"]})
    result = xdist(pytester, "--autoresearch-iterations", "0", "--autoresearch-patience", "3", "-v",
                   "--junitxml=report.xml")
    assert result.ret == 0, result.stdout.str()  # a lone crash does not fail the loop; patience ends it
    recs = records(pytester.path)
    judged = sorted((r for r in recs if r["status"] != "baseline"), key=lambda r: r["iteration"])
    statuses = [r["status"] for r in judged]
    assert [r["iteration"] for r in judged] == list(range(1, len(judged) + 1)) and {"keep", "crash"} <= set(statuses)
    misses = len(statuses) - 1 - max(i for i, s in enumerate(statuses) if s == "keep")
    assert 3 <= misses <= 4, statuses  # each loop saw every record it made before its next patience check
    appended = appenders(witness)
    assert len(appended) == len(recs) and set(appended.values()) == {"controller"}, appended
    assert set(workspace_writers(witness, pytester.path / "experiments/t/value.txt")) == {"controller"}
    # one labelled line per iteration (its own report of the loop item), then each loop item's own pass
    labels = [m.group(1) for line in result.stdout.lines if (m := LABELLED.match(line.rstrip()))]
    assert sorted(labels) == sorted({"keep": "KEPT", "discard": "DISCARDED", "crash": "CRASH"}[s] for s in statuses)
    counts = {"kept": statuses.count("keep"), "discarded": statuses.count("discard"), "crashed": 1, "passed": 2}
    summary = result.stdout.lines[-1]
    assert all(f"{n} {word}" in summary for word, n in counts.items()) and "failed" not in summary, summary
    cases = list(ET.parse(pytester.path / "report.xml").iter("testcase"))
    assert sorted(c.get("name") for c in cases) == ["t[loop-1]", "t[loop-2]"]
    for case in cases:  # one testcase per loop item, passed, with its last iteration's properties
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert not list(case.iter("failure")) and int(props["iteration"]) in {r["iteration"] for r in judged}


def test_under_xdist_max_crashes_ends_each_endless_loop(pytester, monkeypatch, tmp_path):
    witness = witnessed(pytester, monkeypatch, tmp_path)
    write_task(pytester.path, mutate="import sys\nsys.exit('no idea')\n", spec={"protected": ["conftest.py"]})
    result = xdist(pytester, "--autoresearch-iterations", "0", "--autoresearch-max-crashes", "2")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*max-crashes: t stopped after * crashes in a row*"])
    crashes = [r for r in records(pytester.path) if r["status"] == "crash"]
    assert 2 <= len(crashes) <= 3 and set(appenders(witness).values()) == {"controller"}
    assert "2 failed" in result.stdout.lines[-1]  # the two loop items, stopped


@pytest.mark.parametrize("iterations", ["3", "0"])
def test_under_xdist_the_controller_lands_a_workspace_tasks_verdicts_while_the_worker_holds_its_lock(
        pytester, monkeypatch, tmp_path, commit_all, iterations):
    witness = witnessed(pytester, monkeypatch, tmp_path)
    write_task(pytester.path, spec={"mutator": "workspace", "protected": ["conftest.py"]})
    commit_all("init")
    (pytester.path / "experiments/t/value.txt").write_text("5\n")  # the agent's edit against HEAD's 1
    result = xdist(pytester, "--autoresearch-iterations", iterations, "--autoresearch-patience", "2", "-v")
    assert result.ret == 0, result.stdout.str()
    judged = sorted((r for r in records(pytester.path) if r["status"] != "baseline"), key=lambda r: r["iteration"])
    assert [r["status"] for r in judged][:3] == ["keep", "discard", "discard"]  # the edit, then nothing new
    assert (pytester.path / "experiments/t/value.txt").read_text() == "5\n"
    # the task lock is held from the workspace's reading until the controller recorded the verdict: no iteration
    # takes its number (a replace of the counters file, under the lock) before the one before it is recorded
    events = [line.split() for line in witness.read_text().splitlines()]
    order = [kind for _, kind, what in events if what.endswith(".next.json") or
             (kind == "append" and not what.startswith("baseline"))]
    assert order == ["replace", "append"] * len(judged), order
    appended = appenders(witness)
    assert len(appended) == len(judged) + 1 and set(appended.values()) == {"controller"}, appended
    assert set(workspace_writers(witness, pytester.path / "experiments/t/value.txt")) == {"controller"}
    result.stdout.fnmatch_lines(["*KEPT 5 (+4 vs 1)*"])


def test_a_worker_waits_for_its_record_a_bounded_time_then_says_so(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    store.path.write_text(json.dumps({"task": "t", "iteration": 0, "status": "baseline"}) + "\n" +
                          json.dumps({"task": "t", "iteration": 4, "status": "keep"}) + "\n")
    assert await_record(store, "t", 4, timeout_s=1)["status"] == "keep"
    with pytest.raises(NoVerdict, match=r"crash: the xdist controller recorded no verdict on t #5 within 0.2 s "
                                        r"\(.*results.jsonl\)"):
        await_record(store, "t", 5, timeout_s=0.2)
