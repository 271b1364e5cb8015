"""`mutator.isolation` / `runner.isolation: bwrap`: real inner sessions whose commands run under bubblewrap and
try to get out: write the workspace or their home, read the results, signal pytest, reach the network. Skipped,
with the reason, where bubblewrap cannot run; the one-line error where it is missing is tested everywhere."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from autoresearch_helpers import MUTATE_ADD, PY, records, write_task
from pytest_autoresearch import isolation

pytest_plugins = ["pytester"]

BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)
# a file the commands try to create outside the sandbox: in the real home (read before pytester moves HOME),
# which lies outside /tmp (inside, the private /tmp would hide it rather than refuse the write)
OUTSIDE = Path(os.path.expanduser("~")) / f".autoresearch-escaped-{os.getpid()}.txt"
why_not = isolation.unavailable(True) if sys.platform.startswith("linux") else "bubblewrap runs on Linux only"
needs_bwrap = pytest.mark.skipif(why_not is not None, reason=f"bwrap {why_not}")

# Tries each way out, prints what happened, one line each ("name: outcome"), then bumps value.txt in the sandbox.
ESCAPES = '''import os, signal, sys
def attempt(name, action):
    try:
        print(f"{name}: {action()}")
    except OSError as e:
        print(f"{name}: refused ({type(e).__name__}: {e.strerror})")
workspace, outside, history, pytest_pid = sys.argv[1], sys.argv[2], os.environ["AUTORESEARCH_RESULTS"], int(sys.argv[3])
attempt("workspace write", lambda: open(os.path.join(workspace, "experiments/t/value.txt"), "w").write("99\\n"))
attempt("outside write", lambda: open(outside, "w").write("x"))
attempt("results read", lambda: f"{len(open(os.path.join(workspace, 'work/results.jsonl')).read())} characters")
attempt("history read", lambda: f"{len(open(history).read().splitlines())} records")
attempt("history write", lambda: open(history, "a").write("{}"))
attempt("storage listing", lambda: sorted(os.listdir(os.path.join(workspace, "work"))))
attempt("signal pytest", lambda: os.kill(pytest_pid, 0) or "delivered")
attempt("tmp listing", lambda: sorted(os.listdir("/tmp")))
'''


def escapes_command(pytester: pytest.Pytester, then: str) -> str:
    (pytester.path / "escapes.py").write_text(ESCAPES)
    return f"{PY} escapes.py {pytester.path} {OUTSIDE} {os.getpid()} && {then}"


def log_lines(pytester: pytest.Pytester, log: str) -> dict[str, str]:
    lines = (pytester.path / log).read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith("["))


@needs_bwrap
def test_an_isolated_mutator_writes_its_sandbox_only_and_sees_no_results(pytester, research):
    command = escapes_command(pytester, f"{PY} experiments/t/mutate.py")
    write_task(pytester.path, mutate=BUMP, spec={"mutator": {"command": command, "isolation": "bwrap"}})
    research()  # scores the baseline: results.jsonl has a record the mutator could read, unisolated
    assert records(pytester.path)[-1]["status"] == "keep"
    assert (pytester.path / "experiments/t/value.txt").read_text() == "2\n"  # its sandbox edit was kept
    assert not OUTSIDE.exists()
    seen = log_lines(pytester, records(pytester.path)[-1]["log"])
    assert seen["workspace write"].startswith("refused (OSError: Read-only file system)")
    assert seen["outside write"].startswith("refused (OSError: Read-only file system)")
    assert seen["results read"] == "0 characters"  # the live results file reads as empty...
    assert seen["storage listing"] == "['results.jsonl']"  # ...and nothing else of the storage shows
    assert seen["history read"] == "1 records"  # the history is its export: the baseline's record...
    assert seen["history write"].startswith("refused (OSError: Read-only file system)")  # ...read-only
    assert seen["signal pytest"].startswith("refused (ProcessLookupError")  # its own process namespace
    # a private /tmp: only the way to its own sandbox shows, and to the repository and to the Python running
    # pytest when those lie in /tmp (read-only: a clone in /tmp with its .venv inside, as CI makes)
    tmp = ast.literal_eval(seen["tmp listing"])
    repository = {pytester.path.parts[2]} if pytester.path.parts[1] == "tmp" else set()
    interpreter = {path.parts[2] for path in isolation._interpreter()}
    assert len([name for name in tmp if name.startswith("autoresearch-")]) <= 1
    assert set(tmp) - repository - interpreter <= {name for name in tmp if name.startswith("autoresearch-")}


@needs_bwrap
def test_an_isolated_runner_is_held_the_same_and_offline_has_only_loopback(pytester, research):
    network = f"{PY} -c \"print('interfaces:', sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\""
    command = escapes_command(pytester, f"{network} && {PY} experiments/t/score.py")
    write_task(pytester.path, spec={"runner": {"command": command, "isolation": "bwrap", "network": False}})
    research()
    baseline, keep = records(pytester.path)
    assert (baseline["score"], keep["status"], keep["score"]) == (1.0, "keep", 2.0)
    seen = log_lines(pytester, keep["log"])
    assert seen["workspace write"].startswith("refused")  # read-only, or out of sight (a workspace in /tmp)
    assert seen["results read"] == "0 characters" and seen["storage listing"] == "['results.jsonl']"
    assert seen["history read"] == "1 records" and seen["history write"].startswith("refused")
    assert seen["interfaces"] == "['lo']"
    assert (pytester.path / "experiments/t/value.txt").read_text() == "2\n"


@needs_bwrap
def test_storage_outside_the_repository_is_hidden_too(pytester, research, tmp_path):
    storage, results = tmp_path / "store", tmp_path / "elsewhere" / "results.jsonl"
    probe = (f"{PY} -c \"import os; print('results read:', len(open({str(results)!r}).read())); "
             f"print('storage listing:', os.listdir({str(storage)!r}))\" && {PY} experiments/t/mutate.py")
    write_task(pytester.path, mutate=BUMP, spec={"mutator": {"command": probe, "isolation": "bwrap"}})
    research("--autoresearch-dir", str(storage), "--autoresearch-results", str(results))
    keep = records(tmp_path, str(results.relative_to(tmp_path)))[-1]
    seen = dict(line.split(": ", 1) for line in Path(keep["log"]).read_text().splitlines() if ": " in line)
    assert keep["status"] == "keep" and seen["results read"] == "0" and seen["storage listing"] == "[]"


def test_without_bwrap_the_task_fails_with_one_line_saying_so(pytester, research, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without bwrap (loading the task runs no other program)
    isolation.unavailable.cache_clear()
    try:
        write_task(pytester.path, spec={"mutator": {"isolation": "bwrap"}})
        result = research()
    finally:
        isolation.unavailable.cache_clear()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*experiments/t/task.yaml: mutator.isolation: bwrap is not installed "
                                 "(Debian/Ubuntu: apt-get install bubblewrap)"])
    assert records(pytester.path) == []


@pytest.mark.parametrize("spec, message", [
    ({"runner": {"network": False}},
     "runner.network: false needs runner.isolation: bwrap (only a sandbox takes the network away)"),
    ({"mutator": {"isolation": "docker"}}, "mutator.isolation: must be one of none, bwrap, got 'docker'"),
    ({"runner": {"isolation": "bwrap", "network": "off"}}, "runner.network: must be true or false, got 'off'"),
], ids=["network-without-isolation", "unknown-kind", "network-not-a-bool"])
def test_isolation_mistakes_are_one_line(pytester, research, spec, message):
    write_task(pytester.path, spec=spec)
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*experiments/t/task.yaml: {message}"])


# the history forgeries of test_forged_records, tried from inside the sandbox: read the records' key, append a
# fake baseline to the live file and to the export; then a worse candidate
FORGER = '''import json, os, pathlib
live, key = os.environ["LIVE_RESULTS"], os.environ["LIVE_RESULTS"] + ".key"
fake = json.dumps({"task": "t", "iteration": 0, "status": "baseline", "scores": [-1e9], "score": -1e9}) + "\\n"
def attempt(name, action):
    try:
        print(f"{name}: {action()}")
    except OSError as e:
        print(f"{name}: refused ({type(e).__name__})")
attempt("key read", lambda: len(open(key).read()))
attempt("live append", lambda: open(live, "a").write(fake))
attempt("export append", lambda: open(os.environ["AUTORESEARCH_RESULTS"], "a").write(fake))
pathlib.Path("experiments/t/value.txt").write_text("0\\n")
'''


@needs_bwrap
def test_an_isolated_mutator_can_neither_read_the_key_nor_forge_the_history(pytester, research, monkeypatch):
    live = pytester.path / "work" / "results.jsonl"
    monkeypatch.setenv("LIVE_RESULTS", str(live))
    write_task(pytester.path, mutate=FORGER, spec={"mutator": {"isolation": "bwrap"}})
    research("--autoresearch-iterations", "2")
    assert [(r["status"], r["baseline_scores"]) for r in records(pytester.path)][1:] == [("discard", [1.0])] * 2
    assert "-1000000000.0" not in live.read_text()
    seen = log_lines(pytester, records(pytester.path)[-1]["log"])
    assert seen["key read"] == "refused (FileNotFoundError)"  # the storage is an empty folder in there
    assert seen["export append"] == "refused (OSError)"  # read-only
    # the live file is /dev/null in there: the write goes nowhere
