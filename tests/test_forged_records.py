"""Nothing in the history is the mutator's to write (issue 11): it reads a read-only export of the records, not
the live results file; and what it appends to the live file anyway (a fake baseline, a fake iteration number)
the engine ignores, since it reads only records it signed. A session's summary counts its own records only,
not those of another session running beside it on the same storage. Real inner sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_helpers import MUTATE_ADD, REPO_ROOT, plugin_args, records, write_task

pytest_plugins = ["pytester"]

BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)
# makes a worse candidate (value 0, against 1)
WORSE = 'import pathlib\npathlib.Path("experiments/t/value.txt").write_text("0\\n")\n'
# appends a record to the live results file, which it found (here: LIVE_RESULTS; in life: $PWD/work/...)
FORGE = '''import json, os
live = os.environ["LIVE_RESULTS"]
baseline = next(r for r in map(json.loads, open(live)) if r["status"] == "baseline")
forged = {{**baseline, **{fields}}}
with open(live, "a") as f:
    f.write(json.dumps(forged) + "\\n")
'''


@pytest.fixture
def live(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = pytester.path / "work" / "results.jsonl"
    monkeypatch.setenv("LIVE_RESULTS", str(path))
    return path


def engine_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if '"forged": true' not in line]


def test_a_fake_baseline_in_the_live_file_moves_nothing(pytester, research, live):
    """Before: iteration 2 was judged against the fake baseline (-1e9) and its worse candidate kept."""
    write_task(pytester.path, mutate=WORSE + FORGE.format(fields='{"scores": [-1e9], "score": -1e9, "forged": True}'))
    research("--autoresearch-iterations", "2")
    mine = engine_lines(live)
    assert [(r["status"], r["iteration"]) for r in mine] == [("baseline", 0), ("discard", 1), ("discard", 2)]
    assert mine[2]["baseline_scores"] == [1.0]
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"


def test_a_fake_iteration_number_in_the_live_file_moves_nothing(pytester, research, live):
    """Before: the next iteration was numbered 10000."""
    write_task(pytester.path, mutate=WORSE + FORGE.format(
        fields='{"iteration": 9999, "status": "discard", "forged": True}'))
    research("--autoresearch-iterations", "2")
    assert [r["iteration"] for r in engine_lines(live)] == [0, 1, 2]


EXPORT = '''import json, os, pathlib
given, live = os.environ["AUTORESEARCH_RESULTS"], os.environ["LIVE_RESULTS"]
seen = {"given is live": os.path.realpath(given) == os.path.realpath(live), "mode": oct(os.stat(given).st_mode & 0o777),
        "statuses": [r["status"] for r in map(json.loads, open(given))]}
pathlib.Path(os.environ["SEEN"]).write_text(json.dumps(seen))
os.chmod(given, 0o644)  # it is the mutator's to write after all: nothing the engine reads
with open(given, "a") as f:
    f.write(json.dumps({"task": "t", "iteration": 0, "status": "baseline", "scores": [-1e9], "forged": True}) + "\\n")
'''


def test_the_mutator_reads_a_read_only_export_of_the_history(pytester, research, live, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEN", str(tmp_path / "seen.json"))
    write_task(pytester.path, mutate=WORSE + EXPORT)
    research("--autoresearch-iterations", "2")
    seen = json.loads((tmp_path / "seen.json").read_text())  # iteration 2's look
    assert seen == {"given is live": False, "mode": "0o444", "statuses": ["baseline", "discard"]}
    assert '"forged": true' not in live.read_text()
    assert [(r["status"], r["baseline_scores"]) for r in records(pytester.path)][1:] == [("discard", [1.0])] * 2


def test_a_line_written_by_hand_is_ignored_with_a_warning_naming_it(pytester, research, live):
    write_task(pytester.path)
    research()
    with open(live, "a") as f:
        f.write(json.dumps({"task": "t", "iteration": 50, "status": "keep"}) + "\n")
    with pytest.warns(UserWarning, match=r"results.jsonl:3: ignoring a record the engine did not write"):
        research()
    assert [r["iteration"] for r in records(pytester.path)] == [0, 1, 50, 2]


# ----------------------------------------------------------------------------
# Two sessions on one storage at once

SLOW_SCORE = 'import pathlib, time\ntime.sleep(1.5)\nprint("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())\n'


def test_a_sessions_summary_counts_its_own_records_only(pytester):
    """Two sessions started together, each running 1 iteration: before, each summary counted both."""
    pytester.makeini("[pytest]\n")
    write_task(pytester.path, score=SLOW_SCORE, mutate=WORSE)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-p", "no:cacheprovider"]
    sessions = [subprocess.Popen(command, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for _ in range(2)]
    outputs = [session.communicate(timeout=120)[0] for session in sessions]
    assert sorted(r["iteration"] for r in records(pytester.path) if r["status"] != "baseline") == [1, 2]
    for output in outputs:
        line = next(line for line in output.splitlines() if line.startswith("t "))
        assert line.split()[1:6] == ["1", "0", "1", "0", "0"], output  # iters kept disc crash rej
