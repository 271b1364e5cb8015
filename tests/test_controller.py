"""Under xdist the decisions are the controller's: workers make candidates and score them; the main process,
fed by their reports, decides, applies, commits and appends the record. Without xdist the same landing runs in
the one process."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from autoresearch_helpers import REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.attempt import Attempt
from pytest_autoresearch.sandbox import Link

# The inner session's conftest (loaded by the controller and by every worker): notes which process replaces a
# file in the workspace (a keep landing, a journal) and which appends to results.jsonl.
WITNESS = '''
import os, pathlib
_log = os.environ["WITNESS"]
def _note(what, path):
    with open(_log, "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'controller')} {what} {path}\\n")
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    _note("replace", dst)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
'''


def xdist(pytester, *args):
    return pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "2",
                                         *args, timeout=240)


def test_under_xdist_the_controller_lands_every_keep(pytester, monkeypatch, tmp_path):
    witness = tmp_path / "witness.txt"
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("WITNESS", str(witness))
    pytester.makeini("[pytest]\n")
    (pytester.path / "conftest.py").write_text(WITNESS)
    write_task(pytester.path, step=1, spec={"protected": ["conftest.py"]})
    result = xdist(pytester, "--autoresearch-iterations", "4", "-v")
    assert result.ret == 0, result.stdout.str()
    judged = [r for r in records(pytester.path) if r["status"] != "baseline"]
    assert sorted(r["iteration"] for r in judged) == [1, 2, 3, 4] and {r["worker"] for r in judged} <= {"gw0", "gw1"}
    assert any(r["status"] == "keep" for r in judged)
    workspace_file = str(pytester.path / "experiments/t/value.txt")
    landed = [line.split()[0] for line in witness.read_text().splitlines()
              if line.split()[2] == workspace_file or "/journal/" in line]
    assert landed and set(landed) == {"controller"}, landed  # workers never write the workspace
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
