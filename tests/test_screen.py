"""policy.screen: a shorter run first; only a promising candidate buys full runs. The screen never keeps, the
baseline's screen run is paid once and a keep's screen run is the next baseline's, a screen run is told its
budget (AUTORESEARCH_TIME_BUDGET) and killed past it, and the promise the threshold makes is checked by
simulation of its own rule."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoresearch_helpers import REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.policies import make_policy
from pytest_autoresearch.screen import Screen
from pytest_autoresearch.task import TaskError, load_task

pytest_plugins = ["pytester"]

SCREEN = {"seconds": 5, "noise_sd": 0.1}


def sequential_with_screen(**screen) -> dict:
    return {"kind": "sequential", "noise_sd": 0.1, "pool_noise": False, "screen": {**SCREEN, **screen}}


@pytest.mark.parametrize("screen, message", [
    ("100", "policy.screen: must be a mapping with seconds and noise_sd"),
    ({"noise_sd": 0.1}, "policy.screen.seconds: missing"),
    ({"seconds": 100}, "policy.screen.noise_sd: missing"),
    ({"seconds": 0, "noise_sd": 0.1}, "policy.screen.seconds: must be a finite number > 0"),
    ({"seconds": 100, "noise_sd": -1}, "policy.screen.noise_sd: must be a finite number > 0"),
    ({"seconds": 100, "noise_sd": 0.1, "promote_z": "x"}, "policy.screen.promote_z: must be a finite number"),
    ({"seconds": 100, "noise_sd": 0.1, "budget": 3}, "policy.screen.budget: unknown key"),
])
def test_bad_screen_settings_are_one_line_errors_naming_the_file_and_key(tmp_path, screen, message):
    write_task(tmp_path, spec={"policy": {"kind": "sequential", "noise_sd": 0.1, "screen": screen}})
    with pytest.raises(TaskError) as caught:
        load_task(tmp_path / "experiments/t/task.yaml", tmp_path)
    assert str(caught.value).startswith(f"experiments/t/task.yaml: {message}") and "\n" not in str(caught.value)


def test_the_screen_promotes_a_gain_of_promote_z_standard_errors_in_either_direction():
    screen = Screen(seconds=100, noise_sd=0.1, promote_z=0.5)
    edge = 0.5 * 0.1 * math.sqrt(2)
    assert screen.judge(1.0, 1.0 - edge * 1.01, "minimize")["promoted"]
    assert not screen.judge(1.0, 1.0 - edge * 0.99, "minimize")["promoted"]
    assert screen.judge(1.0, 1.0 + edge * 1.01, "maximize")["promoted"]
    assert not screen.judge(1.0, math.nan, "minimize")["promoted"]


@settings(max_examples=12, deadline=None)
@given(promote_z=st.sampled_from([0.0, 0.5, 1.0]), gain_se=st.sampled_from([0.0, 1.0, 2.0]))
def test_the_screen_drops_what_its_module_states(promote_z, gain_se):
    """screen.py: a candidate gaining g screen standard errors is screened out with probability
    Phi(promote_z - g), checked on 4,000 simulated screens (3.5 binomial sds of slack)."""
    sd, rng, n = 0.01, random.Random(f"{promote_z}/{gain_se}"), 4000
    screen = Screen(seconds=100, noise_sd=sd, promote_z=promote_z)
    gain = gain_se * sd * math.sqrt(2)
    dropped = sum(not screen.judge(rng.gauss(1.0, sd), rng.gauss(1.0 - gain, sd), "minimize")["promoted"]
                  for _ in range(n))
    expected = 0.5 * math.erfc(-(promote_z - gain_se) / math.sqrt(2))
    assert abs(dropped / n - expected) <= 3.5 * math.sqrt(expected * (1 - expected) / n) + 1e-9


# ----------------------------------------------------------------------------
# Through the engine (an inner pytest session, real subprocesses)

# The runner notes every run in runs.jsonl beside the workspace (its budget, iteration and value) and prints the
# value as its score, a tenth lower at the screen's budget. SLOW_SCREEN: the candidate's screen run sleeps.
RUNNER = '''import json, os, pathlib, time
budget = os.environ.get("AUTORESEARCH_TIME_BUDGET")
value = int(pathlib.Path("experiments/t/value.txt").read_text())
with open(os.environ["RUNS_LOG"], "a") as f:
    f.write(json.dumps({"budget": budget, "iteration": os.environ["AUTORESEARCH_ITERATION"], "value": value}) + "\\n")
if budget and os.environ.get("SLOW_SCREEN") and value != 1:
    time.sleep(30)
print("score:", value - (0.1 if budget else 0.0))
'''


def screened_session(pytester, monkeypatch, step: int, iterations: int, **spec) -> tuple[list[dict], list[dict]]:
    write_task(pytester.path, step=step, score=RUNNER, spec={"policy": sequential_with_screen(), **spec})
    runs_log = pytester.path / "runs.jsonl"
    monkeypatch.setenv("RUNS_LOG", str(runs_log))
    pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "--autoresearch-iterations", str(iterations),
                                  "-p", "no:cacheprovider", "experiments")
    runs = [json.loads(line) for line in runs_log.read_text().splitlines()] if runs_log.exists() else []
    return records(pytester.path), runs


def test_a_candidate_the_screen_does_not_promote_is_discarded_without_a_full_run(pytester, monkeypatch):
    recs, runs = screened_session(pytester, monkeypatch, step=-1, iterations=2)
    judged = [r for r in recs if r["status"] != "baseline"]
    assert [r["status"] for r in judged] == ["discard", "discard"]
    assert all(r["reason"].startswith("screened out at 5s") and r["statistic"]["test"] == "screen" for r in judged)
    assert all(r["scores"] == [] for r in judged)
    candidate_runs = [run for run in runs if run["iteration"] != "0"]
    assert [run["budget"] for run in candidate_runs] == ["5", "5"]  # one screen run each, no full run
    baseline_screens = [run for run in runs if run["iteration"] == "0" and run["budget"] == "5"]
    assert len(baseline_screens) == 1  # the baseline's screen run is paid once
    assert all(r["runner_s"] > 0 for r in judged)


def test_a_promoted_candidate_is_judged_on_full_runs_and_its_screen_run_is_the_next_baselines(pytester,
                                                                                          monkeypatch):
    recs, runs = screened_session(pytester, monkeypatch, step=1, iterations=2)
    judged = [r for r in recs if r["status"] != "baseline"]
    assert [r["status"] for r in judged] == ["keep", "keep"]
    assert all(r["statistic"]["screen"]["promoted"] and r["scores"] for r in judged)
    assert judged[1]["statistic"]["screen"]["baseline"] == judged[0]["statistic"]["screen"]["candidate"]
    budgets = [(run["iteration"], run["budget"]) for run in runs]
    # baseline: one full run and one screen run; each candidate: a screen run, then a full run
    assert budgets == [("0", None), ("0", "5"), ("1", "5"), ("1", None), ("2", "5"), ("2", None)]


def test_a_screen_run_past_its_budget_is_killed_and_recorded_as_a_crash(pytester, monkeypatch):
    monkeypatch.setenv("SLOW_SCREEN", "1")
    recs, _ = screened_session(pytester, monkeypatch, step=1, iterations=1,
                               runner={"budget": 100, "startup_allowance": 1})
    [crash] = [r for r in recs if r["status"] != "baseline"]
    assert crash["status"] == "crash"
    assert crash["reason"].startswith("screen run: runner ran past its time limit of 6s (training budget 5s of "
                                      "the screen")


def test_prepare_trains_for_a_screen_runs_budget_and_the_harness_still_reads_the_full_one(tmp_path):
    from pytest_autoresearch.budget import constant

    script = "import prepare; print(prepare.TIME_BUDGET)"
    env = {"PATH": "/usr/bin:/bin", "AUTORESEARCH_TIME_BUDGET": "100", "AUTORESEARCH_CACHE": str(tmp_path)}
    told = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert told.stdout.strip() == "100.0", told.stderr
    assert constant((REPO_ROOT / "prepare.py").read_bytes(), "prepare.py", "TIME_BUDGET") == 300
