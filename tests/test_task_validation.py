"""task.yaml's smaller mistakes get the one-line "file: key: message" (and lose nothing); scores that are no
finite number are the policy's discard, never copied whole into a reason; a second Ctrl-C while pytest winds
down gives no traceback. Real inner sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from autoresearch_helpers import PY, REPO_ROOT, records, write_task
from pytest_autoresearch.policies.noise_aware import MAX_REPEATS
from pytest_autoresearch.task import MAX_TIMEOUT_S

pytest_plugins = ["pytester"]

SIMPLE = """artifacts: [experiments/t/value.txt]
mutator: {{command: {py} experiments/t/mutate.py}}
runner: {{command: {py} experiments/t/score.py}}
scorer: {{metric: score, direction: maximize}}
"""


@pytest.mark.parametrize("text, message", [
    (SIMPLE + "runner: {{command: echo}}\n",
     "experiments/t/task.yaml: runner: duplicate key (lines 3 and 5; YAML alone would keep the last)"),
    ("artifacts: [experiments/t/value.txt]\nmutator:\n  command: {py} experiments/t/mutate.py\n  timeout: 5\n"
     "  timeout: 50\nrunner: {{command: {py} experiments/t/score.py}}\nscorer: {{metric: score, direction: maximize}}\n",
     "experiments/t/task.yaml: mutator.timeout: duplicate key (lines 4 and 5; YAML alone would keep the last)"),
], ids=["top-level", "nested"])
def test_a_duplicate_key_is_an_error_naming_both_lines(pytester, research, text, message):
    write_task(pytester.path, raw=text.format(py=PY))
    result = research()
    result.stdout.fnmatch_lines([f"*{message}*"])
    assert result.ret == 1 and records(pytester.path) == []


@pytest.mark.parametrize("spec, message", [
    ({"protected": ["experiments/t/value.txt"]},
     "protected: 'experiments/t/value.txt' is also in artifacts: a path is either an artifact or protected"),
    ({"mutator": {"timeout": float("inf")}}, "mutator.timeout: must be a finite number of seconds, got inf"),
    ({"runner": {"timeout": float("nan")}}, "runner.timeout: must be a finite number of seconds, got nan"),
    ({"runner": {"timeout": MAX_TIMEOUT_S * 2}},
     f"runner.timeout: must be at most {MAX_TIMEOUT_S:g} seconds (7 days), got {MAX_TIMEOUT_S * 2:g}"),
    ({"policy": {"kind": "noise-aware", "repeats": 10000}},
     f"policy.repeats: must be at most {MAX_REPEATS} (runs per side), got 10000"),
    ({"policy": {"kind": "noise-aware", "repeats": 5, "max_repeats": 10000}},
     f"policy.max_repeats: must be at most {2 * MAX_REPEATS}, got 10000"),
], ids=["artifact-and-protected", "timeout-inf", "timeout-nan", "timeout-huge", "repeats-huge", "max-repeats-huge"])
def test_smaller_mistakes_are_one_line(pytester, research, spec, message):
    write_task(pytester.path, spec=spec)
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*experiments/t/task.yaml: {message}"])
    assert records(pytester.path) == []


def test_two_tasks_with_one_name_are_an_error_and_the_first_still_runs(pytester, research):
    write_task(pytester.path, "a", spec={"name": "same"})
    write_task(pytester.path, "b", spec={"name": "same"})
    result = research("-v")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*experiments/a/task.yaml::same[[]1[]] KEPT*"])
    result.stdout.fnmatch_lines(["*experiments/b/task.yaml: name: 'same' is already the name of experiments/a/task.yaml"
                                 " (their results and logs would mix)"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep"]


# ----------------------------------------------------------------------------
# Scores that are no finite number


# 400 digits overflow a float; a line longer than 1,024 characters is read by no pattern (test_hostile_output)
@pytest.mark.parametrize("printed", ["nan", "inf", "-inf", "1" * 400], ids=["nan", "inf", "-inf", "400-digits"])
def test_a_non_finite_candidate_score_is_the_policys_discard(pytester, research, printed):
    score = (f'import pathlib\nv = pathlib.Path("experiments/t/value.txt").read_text().strip()\n'
             f'print("score:", v if v == "1" else "{printed}")\n')
    write_task(pytester.path, score=score)
    result = research("--autoresearch-max-crashes", "1")
    assert result.ret == 0
    last = records(pytester.path)[-1]
    assert last["status"] == "discard" and last["score"] is None and last["scores"] == [None]
    assert len(last["reason"]) < 200 and "not a finite number" in last["reason"]
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"


def test_a_non_finite_baseline_score_is_a_crash(pytester, research):
    write_task(pytester.path, score='print("score: nan")\n')
    result = research()
    result.stdout.fnmatch_lines(["*crash: baseline: no metric: score is nan*"])
    assert [r["status"] for r in records(pytester.path)] == ["crash"]


def test_a_long_unreadable_score_is_clipped_in_the_reason(pytester, research):
    write_task(pytester.path, score='print("score:", "x" * 1000)\n')
    research()
    reason = records(pytester.path)[-1]["reason"]
    assert reason.startswith("baseline: no metric: score 'xxxx") and "(1,000 characters)" in reason
    assert len(reason) < 200


# ----------------------------------------------------------------------------
# A second Ctrl-C while pytest winds down

SLOW_TEARDOWN = '''import os, pathlib, time
def pytest_unconfigure(config):
    pathlib.Path(os.environ["TEARDOWN_MARKER"]).write_text("tearing down")
    time.sleep(1.5)  # long enough for the second signal to land in it
'''
SLEEPY = ('import os, pathlib, time\npathlib.Path(os.environ["RUNNER_MARKER"]).write_text("running")\ntime.sleep(60)\n')


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_while_pytest_winds_down_gives_no_traceback(pytester, tmp_path, signum):
    pytester.makeini("[pytest]\n")
    (pytester.path / "conftest.py").write_text(SLOW_TEARDOWN)
    write_task(pytester.path, score=SLEEPY)
    running, tearing = tmp_path / "running", tmp_path / "tearing"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "RUNNER_MARKER": str(running), "TEARDOWN_MARKER": str(tearing)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "pytest_autoresearch.plugin", "--autoresearch",
                             "-p", "no:cacheprovider"], cwd=pytester.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for marker in (running, tearing):
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        proc.send_signal(signum)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "Traceback" not in out and "already stopping" in out
    assert records(pytester.path)[-1]["status"] == "interrupted"
