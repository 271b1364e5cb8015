"""Stopping and resuming a research session: real signals to real inner pytest processes, crashes in a
row, resume after SIGKILL, git commits of keeps, agent-CLI mutators, the report pointer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch_helpers import PY, REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.interrupts import TerminateAsInterrupt, held_signals

pytest_plugins = ["pytester"]

WAIT_S = 60.0  # generous: the machine is shared; the waits end as soon as the condition holds

# The runner scores value.txt; for the iteration named by SLEEP_AT it first writes its pid to MARKER and sleeps.
SLEEPY_SCORE = '''import os, pathlib, time
if os.environ["AUTORESEARCH_ITERATION"] == os.environ.get("SLEEP_AT") and not os.path.exists(os.environ["MARKER"]):
    pathlib.Path(os.environ["MARKER"]).write_text(str(os.getpid()))
    time.sleep(120)
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''


def start_session(root: Path, marker: Path, sleep_at: int, *args: str) -> subprocess.Popen:
    """A real `pytest --autoresearch` process; SIGINT restored to its default so Python turns it into Ctrl-C
    even when this test runs in a background job (which starts with SIGINT ignored)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MARKER": str(marker), "SLEEP_AT": str(sleep_at)}
    return subprocess.Popen([sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-p", "no:cacheprovider",
                             *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, proc: subprocess.Popen) -> int:
    """The pid the sleeping runner wrote to path."""
    deadline = time.monotonic() + WAIT_S
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the runner never started"
        time.sleep(0.05)
    return int(path.read_text())


def gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------
# Signals


def test_held_signals_finish_the_block_then_interrupt():
    before = signal.getsignal(signal.SIGINT)
    finished = False
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
        with held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            finished = True
    assert finished and signal.getsignal(signal.SIGINT) is before


def test_terminate_as_interrupt_installs_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    handler = TerminateAsInterrupt()
    handler.install()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode
    handler.restore()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_iteration_records_interrupted_and_keeps_the_workspace(pytester, tmp_path, signum):
    pytester.makeini("[pytest]\n")
    write_task(pytester.path, step=1, score=SLEEPY_SCORE)
    marker = tmp_path / "runner.pid"
    proc = start_session(pytester.path, marker, 1, "--autoresearch-iterations", "3")
    runner = wait_for(marker, proc)
    proc.send_signal(signum)
    out = proc.communicate(timeout=WAIT_S)[0].decode()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"  # the candidate never landed
    baseline, interrupted = records(pytester.path)
    assert (interrupted["status"], interrupted["iteration"]) == ("interrupted", 1)
    assert f"{signum.name} received" in interrupted["reason"] and interrupted["candidate_hash"]
    assert f"interrupted ({signum.name} received)" in out and "Run again to resume" in out
    assert gone(runner)  # the runner's whole process group was killed
    assert not list(pytester.path.glob("experiments/t/.*tmp"))


# ----------------------------------------------------------------------------
# Resume after SIGKILL


def test_resume_after_sigkill_continues_numbering_and_reuses_the_baseline(pytester, research, tmp_path):
    write_task(pytester.path, step=1, score=SLEEPY_SCORE)
    marker = tmp_path / "runner.pid"
    proc = start_session(pytester.path, marker, 2, "--autoresearch-iterations", "3")
    runner = wait_for(marker, proc)  # iteration 1 was kept; iteration 2's runner sleeps
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    assert gone(runner)  # its reaper killed it when the lifeline from the dead pytest ended
    results = pytester.path / "work" / "results.jsonl"
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep"]
    torn = '{"task": "t", "iteration": 2, "status": "ke'  # what a kill in the middle of a write leaves
    with open(results, "a") as f:
        f.write(torn)

    with pytest.warns(UserWarning, match="not a whole JSON record"):
        research("--autoresearch-iterations", "2")
    lines = results.read_text().splitlines()
    assert lines[2] == torn  # left as it was, and the next record started on a fresh line
    recs = [json.loads(line) for i, line in enumerate(lines) if i != 2]
    assert [(r["status"], r["iteration"]) for r in recs] == [("baseline", 0), ("keep", 1), ("keep", 3), ("keep", 4)]
    assert recs[2]["baseline_score"] == 2.0 and recs[2]["baseline_hash"] == recs[1]["candidate_hash"]
    assert (pytester.path / "experiments/t/value.txt").read_text() == "4\n"


def test_resume_from_a_reset_workspace_warns_that_keeps_are_missing(pytester, research):
    write_task(pytester.path, step=1)
    value = pytester.path / "experiments/t/value.txt"
    research().stdout.no_fnmatch_line("*started from*")  # baseline 1, iteration 1 kept: value 2
    research().stdout.no_fnmatch_line("*started from*")  # an ordinary resume: iteration 2 kept, value 3
    value.write_text("1\n")  # the user resets the workspace to the first baseline
    result = research()
    result.stdout.fnmatch_lines(["t: this run started from artifacts *, not the workspace's state after the last "
                                 "keep (iteration 2, *): the workspace was reset or edited between runs, so kept "
                                 "changes may be missing from it (each keep's diff: work/logs/t/<iteration>.diff)"])
    recs = records(pytester.path)
    assert [(r["status"], r["iteration"]) for r in recs] == [("baseline", 0), ("keep", 1), ("keep", 2), ("keep", 3)]
    assert recs[3]["baseline_hash"] == recs[1]["baseline_hash"]  # judged against the reused first baseline
    research().stdout.no_fnmatch_line("*started from*")  # the next run starts from its own last keep


# A keep may return to content seen before (here: every candidate toggles value.txt and is kept)
TOGGLE = ('import os, pathlib\np = pathlib.Path("experiments/t/value.txt")\n'
          'p.write_text("2\\n" if p.read_text() == "1\\n" else "1\\n")\n')
COUNTER = ('import os, pathlib\nc = pathlib.Path(os.environ["COUNTER"])\n'
           'n = int(c.read_text()) + 1 if c.exists() else 1\nc.write_text(str(n))\nprint("score:", n)\n')


def test_no_reset_warning_when_keeps_return_to_earlier_content_or_in_workspace_mode(pytester, research, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("COUNTER", str(tmp_path / "counter"))
    write_task(pytester.path, mutate=TOGGLE, score=COUNTER)
    research("--autoresearch-iterations", "2")  # keeps: 1 -> 2, then 2 -> 1
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep", "keep"]
    research().stdout.no_fnmatch_line("*started from*")
    write_task(pytester.path, name="w", spec={"mutator": "workspace"})  # an agent's own edits
    (pytester.path / "experiments/w/value.txt").write_text("5\n")
    research("experiments/w")
    (pytester.path / "work/autoresearch").rename(tmp_path / "state")  # its last-keep snapshot is gone
    (pytester.path / "experiments/w/value.txt").write_text("6\n")
    research("experiments/w").stdout.no_fnmatch_line("*started from*")


# ----------------------------------------------------------------------------
# Crashes in a row stop the task

CRASH_ON_CANDIDATES = ('import pathlib, sys\nv = pathlib.Path("experiments/t/value.txt").read_text().strip()\n'
                       'sys.exit("boom") if v != "1" else print("score:", v)\n')


def test_max_crashes_stops_the_task_and_skips_the_rest(pytester, research):
    write_task(pytester.path, score=CRASH_ON_CANDIDATES)
    result = research("--autoresearch-iterations", "5", "--autoresearch-max-crashes", "2", "-rs")
    result.assert_outcomes(failed=2, skipped=3)
    result.stdout.fnmatch_lines(["*= autoresearch =*", "max-crashes: t stopped after 2 crashes in a row*",
                                 "SKIPPED [[]3[]] *max-crashes: t stopped after 2 crashes in a row; last (#2): "
                                 "runner exited with code 1 (log: work/logs/t/2.log)"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "crash", "crash"]


def test_max_crashes_ends_an_endless_loop(pytester, research):
    write_task(pytester.path, score=CRASH_ON_CANDIDATES)
    result = research("--autoresearch-iterations", "0")  # default --autoresearch-max-crashes 3
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*max-crashes: t stopped after 3 crashes in a row*"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "crash", "crash", "crash"]


# ----------------------------------------------------------------------------
# git


def test_commit_message_names_task_metric_scores_and_description(pytester, research, commit_all):
    write_task(pytester.path, step=2)
    commit_all("init")
    research("--autoresearch-commit")
    keep = records(pytester.path)[-1]
    git = lambda *a: subprocess.run(["git", *a], cwd=pytester.path, capture_output=True, text=True).stdout  # noqa: E731
    message = git("log", "-1", "--format=%B")
    assert "t #1" in message and "score 1 -> 3" in message and "add 2" in message
    assert keep["commit"] == git("rev-parse", "HEAD").strip()
    assert git("status", "--porcelain", "experiments") == ""


# ----------------------------------------------------------------------------
# Agent CLI as the mutator

FAKE_AGENT = '''"""Stands in for an agent CLI: takes the prompt as -p, follows it, describes its change."""
import json, os, pathlib, re, sys
prompt = sys.argv[sys.argv.index("-p") + 1]
assert prompt == pathlib.Path(os.environ["AUTORESEARCH_PROMPT_FILE"]).read_text().strip(), "not the prompt file"
target = os.environ["AUTORESEARCH_ARTIFACTS"].split(os.pathsep)[0]
value = re.search(r"Set the value to (\\d+)", prompt).group(1)
pathlib.Path(target).write_text(value + "\\n")
pathlib.Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text(f"agent: set the value to {value}\\n")
dump = {k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH_")}
pathlib.Path(os.environ["AGENT_DUMP"]).write_text(json.dumps(dump))
'''


@pytest.mark.parametrize("prompt", [None, "experiments/t/prompt.md"], ids=["program.md", "mutator.prompt"])
def test_agent_cli_mutator_gets_the_prompt_and_environment(pytester, research, monkeypatch, tmp_path, prompt):
    (pytester.path / "program.md").write_text("Set the value to 7.\n")
    (pytester.path / "tools").mkdir()
    (pytester.path / "tools" / "agent.py").write_text(FAKE_AGENT)
    mutator = {"command": f'{PY} tools/agent.py -p "$(cat "$AUTORESEARCH_PROMPT_FILE")"', "timeout": 30}
    if prompt is not None:
        mutator["prompt"] = prompt
    folder = write_task(pytester.path, spec={"mutator": mutator, "mutation": {"max_lines": 4}})
    (folder / "prompt.md").write_text("Set the value to 9.\n")
    monkeypatch.setenv("AGENT_DUMP", str(tmp_path / "env.json"))
    result = research()
    assert result.ret == 0, result.stdout.str()
    want = 7 if prompt is None else 9
    keep = records(pytester.path)[-1]
    assert (keep["status"], keep["score"], keep["description"]) == ("keep", want, f"agent: set the value to {want}")
    env = json.loads((tmp_path / "env.json").read_text())
    assert Path(env["AUTORESEARCH_PROMPT_FILE"]).name == ("program.md" if prompt is None else "prompt.md")
    assert Path(env["AUTORESEARCH_RESULTS"]).name == "history.jsonl"  # its export of the history, not the live file
    assert not env["AUTORESEARCH_RESULTS"].startswith(str(pytester.path))
    assert (env["AUTORESEARCH_TASK"], env["AUTORESEARCH_ITERATION"], env["AUTORESEARCH_SEED"]) == ("t", "1", "43")
    assert (env["AUTORESEARCH_BASELINE_SCORE"], env["AUTORESEARCH_MAX_LINES"], env["AUTORESEARCH_MAX_FILES"]) == \
        ("1.0", "4", "")
    assert env["AUTORESEARCH_ARTIFACTS"] == "experiments/t/value.txt"
    assert env["AUTORESEARCH_TASK_FILE"].endswith("experiments/t/task.yaml")
    assert not env["AUTORESEARCH_TASK_FILE"].startswith(str(pytester.path))  # the sandbox's copy, not the workspace


# ----------------------------------------------------------------------------
# The morning report


def test_terminal_summary_points_to_the_report(pytester, research):
    write_task(pytester.path, step=1)
    result = research()
    result.stdout.fnmatch_lines(["results: work/results.jsonl",
                                 "report: python -m pytest_autoresearch.report work/results.jsonl"])
    assert "report files" not in result.stdout.str()
    assert not (pytester.path / "work" / "progress.png").exists()  # pointed to, never rendered during a run
    (pytester.path / "work" / "report.md").write_text("# old report\n")
    research().stdout.fnmatch_lines(["report files (as of their last writing): work/report.md"])
