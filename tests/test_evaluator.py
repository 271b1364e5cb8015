"""The sealed evaluation: with `evaluator:` the runner only trains and leaves a file, and the score comes from
the task's protected evaluator, run after it in a fresh folder holding the protected files as they were before
the runner started; with `runner.budget` the runner is killed past its training budget plus a start-up
allowance. Real inner sessions, real runner and evaluator subprocesses."""

from __future__ import annotations

import time

import pytest

from autoresearch_helpers import PY, records, write_task

pytest_plugins = ["pytester"]

VALUE = "experiments/t/value.txt"
EVALUATE = "experiments/t/evaluate.py"
# the runner trains nothing: it saves the candidate's value as its "model", and prints a score of its own. No
# earlier evaluation's folder is left beside its own (the baseline's was removed once it was scored).
RUNNER = '''import pathlib
assert not list(pathlib.Path("..").glob("evaluator-*"))
value = pathlib.Path("experiments/t/value.txt").read_text()
pathlib.Path("model.export").write_text(value)
print("score: 1000")
print("steps: 7")
'''
# the protected evaluator: sure of its folder (the protected files and the received model, nothing else), it
# scores the saved model's value
EVALUATOR = '''import os, pathlib, time
assert os.environ["AUTORESEARCH_EVALUATING"] == "1"
files = sorted(p.as_posix() for p in pathlib.Path(".").rglob("*") if p.is_file())
assert files == ["experiments/t/evaluate.py", "model.export"], files
time.sleep(0.3)
print("score:", pathlib.Path("model.export").read_text().strip())
'''


def evaluated_task(pytester: pytest.Pytester, *, runner: str = RUNNER, evaluator: str = EVALUATOR, step: int = -1,
                   spec: dict | None = None) -> None:
    """Task t with a protected evaluator that receives model.export (spec merged over it)."""
    base = {"protected": [EVALUATE],
            "evaluator": {"command": f"{PY} {EVALUATE}", "receives": "model.export", "timeout": 30}}
    write_task(pytester.path, step=step, score=runner, spec={**base, **(spec or {})})
    (pytester.path / EVALUATE).write_text(evaluator)


def value(pytester: pytest.Pytester) -> str:
    return (pytester.path / VALUE).read_text()


# ----------------------------------------------------------------------------
# The score is the evaluator's


def test_the_score_is_the_evaluators_never_the_runners_own_line(pytester, research):
    evaluated_task(pytester)
    result = research("-v")
    assert result.ret == 0
    baseline, candidate = records(pytester.path)
    assert (baseline["status"], baseline["scores"]) == ("baseline", [1.0])  # baseline runs are evaluated too
    assert (candidate["status"], candidate["score"]) == ("discard", 0.0)  # its "score: 1000" counts for nothing
    assert candidate["metrics"] == {"score": 0.0, "steps": 7.0}  # the runner's other metrics stay
    assert candidate["runner_s"] >= 0.3  # the evaluator's time is the run's time
    assert value(pytester) == "1\n"
    log = (pytester.path / candidate["log"]).read_text()
    assert f"[autoresearch] evaluator: {PY} {EVALUATE}\n" in log


def test_a_runner_rewriting_the_evaluator_in_its_folder_changes_nothing(pytester, research):
    rewriting = RUNNER + 'pathlib.Path("experiments/t/evaluate.py").write_text("print(\\"score: 1000\\")\\n")\n'
    evaluated_task(pytester, runner=rewriting)
    research()
    baseline, candidate = records(pytester.path)
    assert baseline["scores"] == [1.0] and (candidate["status"], candidate["score"]) == ("discard", 0.0)
    assert value(pytester) == "1\n"


def test_a_json_file_score_is_read_from_the_evaluators_folder(pytester, research):
    runner = RUNNER + 'pathlib.Path("metrics.json").write_text(\'{"score": 1000}\')\n'
    evaluator = ('import json, pathlib\nvalue = float(pathlib.Path("model.export").read_text())\n'
                 'pathlib.Path("metrics.json").write_text(json.dumps({"score": value, "checked": 1}))\n')
    evaluated_task(pytester, runner=runner, evaluator=evaluator,
                   spec={"scorer": {"kind": "json-file", "file": "metrics.json", "metric": "score",
                                    "direction": "maximize"}})
    research()
    baseline, candidate = records(pytester.path)
    assert baseline["scores"] == [1.0] and (candidate["status"], candidate["score"]) == ("discard", 0.0)
    assert candidate["metrics"] == {"score": 0.0, "steps": 7.0, "checked": 1.0}


# ----------------------------------------------------------------------------
# What the runner leaves

MISBEHAVING = '''import os, pathlib
value = pathlib.Path("experiments/t/value.txt").read_text()
if value == "1\\n":
    pathlib.Path("model.export").write_text(value)
else:
    {misdeed}
'''


@pytest.mark.parametrize("misdeed, reason", [
    ("pass", "the runner left no model.export"),
    ("os.symlink('experiments/t/value.txt', 'model.export')", "model.export is a symbolic link"),
    ("os.mkdir('model.export')", "model.export is a folder"),
    ("open('model.export', 'wb').truncate(5 * 2**30 + 2**29)",  # sparse: no disk, and never read
     "model.export is 5.5 GiB, over evaluator.max_bytes (4 GiB)"),
], ids=["missing", "symlink", "folder", "oversize"])
def test_a_runner_leaving_no_regular_file_within_max_bytes_crashes(pytester, research, misdeed, reason):
    evaluated_task(pytester, runner=MISBEHAVING.format(misdeed=misdeed), step=1)
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*crash: {reason}*"])
    baseline, candidate = records(pytester.path)
    assert baseline["scores"] == [1.0] and (candidate["status"], candidate["reason"]) == ("crash", reason)
    assert value(pytester) == "1\n" and not (pytester.path / "model.export").exists()


def test_a_model_left_in_the_workspace_is_no_candidates_model(pytester, research):
    # a model.export from an earlier run by hand lies in the workspace (and so in every copy of it): a candidate
    # that trains nothing and leaves it there must not be scored on it
    evaluated_task(pytester, runner=MISBEHAVING.format(misdeed="pass"), step=1)
    (pytester.path / "model.export").write_text("5\n")
    research()
    baseline, candidate = records(pytester.path)
    assert baseline["scores"] == [1.0]
    assert (candidate["status"], candidate["reason"]) == ("crash", "the runner left no model.export")
    assert (pytester.path / "model.export").read_text() == "5\n"  # the workspace's own file is left alone


# ----------------------------------------------------------------------------
# The evaluator's failures

REFUSING = '''import pathlib, sys, time
if pathlib.Path("model.export").read_text() != "1\\n":
    print("loading model.export")
    {refusal}
print("score: 1")
'''


@pytest.mark.parametrize("refusal, spec, reason", [
    ('print("refused: the model is not causal (position 3 saw position 4)")\n    print()\n    sys.exit(3)', {},
     "evaluator exited with code 3: 'refused: the model is not causal (position 3 saw position 4)'"),
    ("sys.stdout.flush(); time.sleep(30)", {"timeout": 1}, "evaluator timed out after 1s: 'loading model.export'"),
], ids=["refused", "timeout"])
def test_a_failing_evaluator_is_a_crash_quoting_its_last_line(pytester, research, refusal, spec, reason):
    evaluated_task(pytester, evaluator=REFUSING.format(refusal=refusal), step=1,
                   spec={"evaluator": {"command": f"{PY} {EVALUATE}", "receives": "model.export", **spec}})
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*crash: {reason}*"])
    assert records(pytester.path)[-1]["reason"] == reason and value(pytester) == "1\n"


def test_an_evaluator_printing_no_score_is_a_crash_naming_it(pytester, research):
    evaluated_task(pytester, evaluator='print("score: 1" if open("model.export").read() == "1\\n" else "done")\n')
    research()
    assert records(pytester.path)[-1]["reason"].startswith("no metric: no line of the evaluator's stdout matches")


def test_a_baseline_the_evaluator_refuses_is_a_crash(pytester, research):
    evaluated_task(pytester, evaluator='print("refused: no model")\nraise SystemExit(2)\n')
    result = research()
    result.stdout.fnmatch_lines(["*crash: baseline: evaluator exited with code 2: 'refused: no model'*"])
    assert [r["status"] for r in records(pytester.path)] == ["crash"]


# ----------------------------------------------------------------------------
# The training budget

SLEEPING = '''import pathlib, time
value = pathlib.Path("experiments/t/value.txt").read_text()
time.sleep(10 if value != "1\\n" else 0)
print("score:", value.strip())
'''
CONFIG = "experiments/t/config.py"


@pytest.mark.parametrize("runner, reason", [
    ({"budget": f"{CONFIG}:TIME_BUDGET", "startup_allowance": 1},
     f"runner ran past its time limit of 2s (training budget 1s from {CONFIG}:TIME_BUDGET + start-up allowance 1s)"),
    ({"budget": 1, "startup_allowance": 1},
     "runner ran past its time limit of 2s (training budget 1s + start-up allowance 1s)"),
    ({"budget": 100, "startup_allowance": 10, "timeout": 2}, "runner timed out after 2s"),
], ids=["from-a-protected-constant", "seconds", "timeout-first"])
def test_a_runner_past_its_budget_is_killed_at_the_limit(pytester, research, runner, reason):
    write_task(pytester.path, score=SLEEPING, spec={"protected": [CONFIG], "runner": runner})
    (pytester.path / CONFIG).write_text("TIME_BUDGET = 0.5 * 2  # seconds of training\n")
    start = time.monotonic()
    result = research()
    assert time.monotonic() - start < 7  # killed at 2 s, not after its 10 s
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*crash: {reason}*"])
    baseline, candidate = records(pytester.path)
    assert baseline["scores"] == [1.0] and (candidate["status"], candidate["reason"]) == ("crash", reason)


def test_a_runner_within_its_budget_is_scored(pytester, research):
    honest = ('import pathlib, time\ntime.sleep(0.2)\n'
              'print("score:", pathlib.Path("experiments/t/value.txt").read_text())\n')
    write_task(pytester.path, score=honest, spec={"protected": [CONFIG], "runner": {
        "budget": f"{CONFIG}:TIME_BUDGET", "startup_allowance": 1}})
    (pytester.path / CONFIG).write_text("TIME_BUDGET = 1\n")
    research()
    assert [(r["status"], r["score"]) for r in records(pytester.path)] == [("baseline", 1.0), ("keep", 2.0)]


# ----------------------------------------------------------------------------
# task.yaml mistakes: one line each

BAD_TASKS = {
    "budget-not-protected": ({"runner": {"budget": "experiments/t/value.txt:TIME_BUDGET", "startup_allowance": 1}},
                             "runner.budget: 'experiments/t/value.txt' is not a protected file (FILE:NAME must name "
                             "a constant of one of the task's protected files)"),
    "budget-file-missing": ({"protected": [CONFIG, "experiments/t/gone.py"],
                             "runner": {"budget": "experiments/t/gone.py:TIME_BUDGET", "startup_allowance": 1}},
                            "runner.budget: experiments/t/gone.py: no such file"),
    "budget-no-constant": ({"runner": {"budget": f"{CONFIG}:BUDGET", "startup_allowance": 1}},
                           f"runner.budget: {CONFIG} has no top-level constant BUDGET"),
    "budget-not-a-number": ({"runner": {"budget": f"{CONFIG}:NAME", "startup_allowance": 1}},
                            f"runner.budget: {CONFIG}:NAME is not a number (an int or float literal, or + - * / // "
                            f"of them)"),
    "budget-computed": ({"runner": {"budget": f"{CONFIG}:COMPUTED", "startup_allowance": 1}},
                        f"runner.budget: {CONFIG}:COMPUTED is not a number (an int or float literal, or + - * / // "
                        f"of them)"),
    "budget-reassigned": ({"runner": {"budget": f"{CONFIG}:GROWN", "startup_allowance": 1}},
                          f"runner.budget: {CONFIG}:GROWN is not a number (an int or float literal, or + - * / // "
                          f"of them)"),
    "budget-negative": ({"runner": {"budget": f"{CONFIG}:NEGATIVE", "startup_allowance": 1}},
                        f"runner.budget: {CONFIG}:NEGATIVE is -60, not a number of seconds > 0"),
    "budget-zero": ({"runner": {"budget": 0, "startup_allowance": 1}},
                    "runner.budget: must be seconds > 0 or FILE:NAME (a constant of a protected file), got 0"),
    "budget-word": ({"runner": {"budget": "soon", "startup_allowance": 1}},
                    "runner.budget: must be seconds > 0 or FILE:NAME (a constant of a protected file), got 'soon'"),
    "budget-without-allowance": ({"runner": {"budget": 5}},
                                 "runner.startup_allowance: missing required key (with runner.budget: the seconds "
                                 "on top of it for start-up, compilation and saving the model)"),
    "allowance-without-budget": ({"runner": {"startup_allowance": 5}},
                                 "runner.startup_allowance: only means something with runner.budget"),
    "evaluator-not-a-mapping": ({"evaluator": "python prepare.py"}, "evaluator: must be a mapping, got str"),
    "evaluator-without-command": ({"evaluator": {"receives": "model.export"}},
                                  "evaluator.command: missing required key"),
    "evaluator-without-receives": ({"evaluator": {"command": "true"}}, "evaluator.receives: missing required key"),
    "receives-absolute": ({"evaluator": {"command": "true", "receives": "/tmp/model.export"}},
                          "evaluator.receives: '/tmp/model.export' is an absolute path; use a path relative to the "
                          "repository root"),
    "receives-escaping": ({"evaluator": {"command": "true", "receives": "../model.export"}},
                          "evaluator.receives: '../model.export' escapes the repository ('..')"),
    "receives-protected": ({"evaluator": {"command": "true", "receives": CONFIG}},
                           f"evaluator.receives: {CONFIG!r} is protected: the runner's file would replace it"),
    "receives-the-score-file": ({"evaluator": {"command": "true", "receives": "m.json"},
                                 "scorer": {"kind": "json-file", "file": "m.json"}},
                                "evaluator.receives: 'm.json' is scorer.file: the runner would write its own score"),
    "max-bytes-zero": ({"evaluator": {"command": "true", "receives": "m", "max_bytes": 0}},
                       "evaluator.max_bytes: must be an integer >= 1 (bytes), got 0"),
    "max-bytes-float": ({"evaluator": {"command": "true", "receives": "m", "max_bytes": 1.5}},
                        "evaluator.max_bytes: must be an integer >= 1 (bytes), got 1.5"),
    "evaluator-unknown-key": ({"evaluator": {"command": "true", "receives": "m", "gpus": 1}},
                              "evaluator.gpus: unknown key (expected one of: command, receives, max_bytes, timeout, "
                              "isolation, network)"),
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_a_bad_evaluator_or_budget_is_one_line(pytester, research, case):
    spec, message = BAD_TASKS[case]
    write_task(pytester.path, spec={"protected": [CONFIG], **spec})
    (pytester.path / CONFIG).write_text('NAME = "five"\nCOMPUTED = int("5")\nNEGATIVE = -1 * 60\nGROWN = 5\n'
                                        'GROWN += 1\n')
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*experiments/t/task.yaml: {message}"])
    assert records(pytester.path) == []
