"""`mutator.isolation` / `runner.isolation: bwrap`: real inner sessions whose commands run under bubblewrap and
try to get out: write the workspace or their home, read the results, signal pytest, reach the network, read the
paths of runner.hide. Skipped, with the reason, where bubblewrap cannot run; the one-line error where it is
missing, `auto`'s fallback and the expansion of runner.hide's paths are tested everywhere."""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------
# runner.hide and runner.writable: the validation data out of the training's reach, a cache it may write


# What the runner tries in the cache ($CACHE, outside /tmp: the private /tmp would hide a cache there anyway):
# read the hidden validation shard and packed rows, list the hidden folder, read the training shard beside them,
# write its compile cache (writable) and the cache itself (not); one line each, then the score.
CACHE_PROBE = '''import os, pathlib
cache = pathlib.Path(os.environ["CACHE"])
def attempt(name, action):
    try:
        print(f"{name}: {action()}")
    except OSError as e:
        print(f"{name}: refused ({type(e).__name__}: {e.strerror})")
attempt("val shard", lambda: repr(open(cache / "data/shard_val.parquet").read()))
for rows in sorted((cache / "tokenizer").glob("val_rows-*.pt")):
    attempt(rows.name, lambda: repr(rows.read_text()))
attempt("secret listing", lambda: sorted(os.listdir(cache / "secret")))
attempt("train shard", lambda: repr(open(cache / "data/shard_00000.parquet").read()))
attempt("compile write", lambda: (cache / "compile/inductor").mkdir(parents=True, exist_ok=True) or
        (cache / "compile/inductor/graph.bin").write_text("compiled") and "written")
attempt("compile secret", lambda: repr((cache / "compile/key.pem").read_text()))
attempt("cache write", lambda: (cache / "data/shard_val.parquet.copy").write_text("x") and "written")
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''
HIDE = ["${CACHE:-/nowhere}/data/shard_val.parquet", "$CACHE/tokenizer/val_rows-*.pt", "${CACHE}/secret",
        "${CACHE}/compile/key.pem"]


@pytest.fixture
def cache(monkeypatch):
    """A prepared cache in the real home (outside /tmp), as $CACHE: the validation shard and packed rows, a
    training shard, a secret folder and a compile cache (itself holding a hidden file)."""
    folder = Path(os.path.expanduser("~")) / f".autoresearch-cache-test-{os.getpid()}"
    for rel, text in {"data/shard_val.parquet": "validation answers", "data/shard_00000.parquet": "training text",
                      "tokenizer/val_rows-0123.pt": "packed answers", "secret/answers.txt": "more answers",
                      "compile/key.pem": "hidden inside a writable folder"}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    monkeypatch.setenv("CACHE", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@needs_bwrap
def test_a_hidden_path_is_out_of_the_isolated_runners_sight_and_a_writable_folder_takes_writes(pytester, research,
                                                                                              cache):
    # the mutator (unisolated) packs new validation rows as it goes: the glob is matched at each run
    mutate = BUMP + f'pathlib.Path({str(cache)!r}, "tokenizer/val_rows-4567.pt").write_text("new answers")\n'
    (pytester.path / "probe.py").write_text(CACHE_PROBE)
    write_task(pytester.path, mutate=mutate, spec={"runner": {
        "command": f"{PY} probe.py", "isolation": "bwrap", "hide": HIDE, "writable": ["$CACHE/compile"]}})
    research()
    baseline, keep = records(pytester.path)
    assert (baseline["score"], keep["status"], keep["score"]) == (1.0, "keep", 2.0)
    seen = log_lines(pytester, keep["log"])
    assert seen["val shard"] == "''"  # /dev/null: reads as empty
    assert seen["val_rows-0123.pt"] == seen["val_rows-4567.pt"] == "''"  # the one made after the task loaded too
    assert seen["secret listing"] == "[]"  # an empty folder
    assert seen["train shard"] == "'training text'"  # its neighbour stays readable
    assert seen["compile write"] == "written" and (cache / "compile/inductor/graph.bin").read_text() == "compiled"
    assert seen["compile secret"] == "''"  # hidden even inside a writable folder
    assert seen["cache write"].startswith("refused (OSError: Read-only file system)")
    assert (cache / "data/shard_val.parquet").read_text() == "validation answers"  # hidden, not harmed


@needs_bwrap
def test_a_writable_folder_is_created_when_missing(pytester, research, cache):
    shutil.rmtree(cache / "compile")
    (pytester.path / "probe.py").write_text(CACHE_PROBE)
    write_task(pytester.path, spec={"runner": {"command": f"{PY} probe.py", "isolation": "bwrap", "hide": HIDE,
                                               "writable": ["${CACHE}/compile"]}})
    research()
    assert log_lines(pytester, records(pytester.path)[-1]["log"])["compile write"] == "written"


@needs_bwrap
def test_auto_isolates_the_runner_where_bwrap_runs(pytester, research, cache):
    (pytester.path / "probe.py").write_text(CACHE_PROBE)
    write_task(pytester.path, spec={"runner": {"command": f"{PY} probe.py", "isolation": "auto", "hide": HIDE}})
    result = research("-W", "default")
    seen = log_lines(pytester, records(pytester.path)[-1]["log"])
    assert seen["val shard"] == "''" and seen["cache write"].startswith("refused")
    assert "IsolationWarning" not in result.stdout.str()


def test_auto_without_bwrap_runs_unisolated_and_warns_once_saying_what_is_not_hidden(pytester, research,
                                                                                      monkeypatch, tmp_path, cache):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without bwrap (the commands are absolute paths)
    isolation.unavailable.cache_clear()
    try:
        (pytester.path / "probe.py").write_text(CACHE_PROBE)
        write_task(pytester.path, spec={"runner": {"command": f"{PY} probe.py", "isolation": "auto", "hide": HIDE,
                                                   "writable": ["$CACHE/compile"], "network": False}})
        result = research("-W", "default", "--autoresearch-iterations", "2")
    finally:
        isolation.unavailable.cache_clear()
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep", "keep"]  # it runs
    warning = ("*IsolationWarning: experiments/t/task.yaml: runner.isolation: auto: the runner runs without "
               "isolation here, as bwrap is not installed (*): it sees the engine's storage (results, logs, the "
               "records' key) and runner.hide's 4 paths, has the network, and can write wherever you can")
    result.stdout.fnmatch_lines([warning])
    assert len([line for line in result.stdout.lines if "IsolationWarning" in line]) == 1
    assert log_lines(pytester, records(pytester.path)[-1]["log"])["val shard"] == "'validation answers'"


@pytest.mark.parametrize("runner, message", [
    ({"isolation": "auto", "hide": {"a": 1}}, "runner.hide: must be a list of absolute paths, got {'a': 1}"),
    ({"isolation": "auto", "hide": ["/ok", 3]}, "runner.hide: each entry must be a non-empty string, got 3"),
    ({"isolation": "auto", "hide": "data/val.pt"},
     "runner.hide: 'data/val.pt' is not an absolute path (after expanding ~ and variables: 'data/val.pt')"),
    ({"isolation": "auto", "writable": ["${AUTORESEARCH_TEST_UNSET:-relative}/x"]},
     "runner.writable: '${AUTORESEARCH_TEST_UNSET:-relative}/x' is not an absolute path (after expanding ~ and "
     "variables: 'relative/x')"),
    ({"isolation": "auto", "hide": ["$AUTORESEARCH_TEST_UNSET/val.pt"]},
     "runner.hide: '$AUTORESEARCH_TEST_UNSET/val.pt': $AUTORESEARCH_TEST_UNSET is not set (write "
     "${AUTORESEARCH_TEST_UNSET:-default} for a default)"),
    ({"isolation": "auto", "hide": ["/cache/*/val.pt"]},
     "runner.hide: '/cache/*/val.pt': a wildcard may only be in the last path component"),
    ({"isolation": "auto", "writable": ["/cache/compile-*"]},
     "runner.writable: '/cache/compile-*': a folder to create holds no wildcard"),
    ({"isolation": "auto", "hide": ["${CACHE:-/x/data"]}, "runner.hide: '${CACHE:-/x/data': a '${' that starts no ${NAME} or ${NAME:-default}"),
    ({"hide": ["/cache/val.pt"]},
     "runner.hide: needs runner.isolation: bwrap or auto (without a sandbox nothing is hidden)"),
    ({"isolation": "none", "writable": ["/cache"]},
     "runner.writable: needs runner.isolation: bwrap or auto (without a sandbox everything is writable)"),
    ({"isolation": "docker"}, "runner.isolation: must be one of none, bwrap, auto, got 'docker'"),
], ids=["hide-not-a-list", "entry-not-a-string", "relative", "relative-after-default", "unset-variable",
        "wildcard-in-a-folder", "wildcard-in-writable", "unclosed-brace", "hide-without-isolation",
        "writable-without-isolation", "unknown-runner-kind"])
def test_runner_path_mistakes_are_one_line(pytester, research, monkeypatch, runner, message):
    monkeypatch.delenv("AUTORESEARCH_TEST_UNSET", raising=False)
    write_task(pytester.path, spec={"runner": runner})
    result = research()
    assert result.ret == 1 and records(pytester.path) == []
    result.stdout.fnmatch_lines([f"experiments/t/task.yaml: {message}".replace("[", "[[]")])


def test_auto_is_the_runners_alone(pytester, research):
    write_task(pytester.path, spec={"mutator": {"isolation": "auto"}})
    research().stdout.fnmatch_lines(["experiments/t/task.yaml: mutator.isolation: must be one of none, bwrap, got "
                                     "'auto'"])


# ----------------------------------------------------------------------------
# ~, $VAR, ${VAR} and ${VAR:-default}, as a shell expands them in a path

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_characters="${}~\0", blacklist_categories=("Cs",)), max_size=12)


@given(name=NAMES, value=TEXT.filter(bool), default=TEXT, rest=TEXT)
def test_a_set_variable_is_its_value_and_an_unset_or_empty_one_its_default(name, value, default, rest):
    assert isolation.expand_path(f"/a/${{{name}:-{default}}}{rest}", {name: value}, "/home/u") == f"/a/{value}{rest}"
    assert isolation.expand_path(f"/a/${{{name}:-{default}}}{rest}", {}, "/home/u") == f"/a/{default}{rest}"
    assert isolation.expand_path(f"/a/${{{name}:-{default}}}{rest}", {name: ""}, "/home/u") == f"/a/{default}{rest}"
    assert isolation.expand_path(f"/a/${{{name}}}/{rest}", {name: value}, "/home/u") == f"/a/{value}/{rest}"
    assert isolation.expand_path(f"/a/${name}/{rest}", {name: value}, "/home/u") == f"/a/{value}/{rest}"


@given(name=NAMES, value=st.text(max_size=12), rest=TEXT)
def test_a_value_is_never_expanded_again(name, value, rest):
    # a value holding $, ${...} or ~ is taken as it is, as a shell takes it
    assert isolation.expand_path(f"${{{name}:-x}}/{rest}", {name: value}, "/home/u") == f"{value or 'x'}/{rest}"


@given(rest=TEXT, default=TEXT)
def test_a_leading_tilde_is_the_home_in_the_path_and_in_a_default(rest, default):
    assert isolation.expand_path(f"~/{rest}", {}, "/home/u") == f"/home/u/{rest}"
    assert isolation.expand_path("~", {}, "/home/u") == "/home/u"
    assert isolation.expand_path(f"${{UNSET_HERE:-~/{default}}}/x", {}, "/home/u") == f"/home/u/{default}/x"
    assert isolation.expand_path(f"/a/~/{rest}", {}, "/home/u") == f"/a/~/{rest}"  # not leading: a name


@given(text=TEXT)
def test_text_without_variables_or_a_tilde_stays_as_it_is(text):
    assert isolation.expand_path(text, {"X": "y"}, "/home/u") == text


def test_the_sample_tasks_cache_paths_expand_like_prepare_py_finds_them():
    pattern = "${AUTORESEARCH_CACHE:-~/.cache/autoresearch}/tokenizer/val_rows-*.pt"
    assert isolation.expand_path(pattern, {}, "/home/u") == "/home/u/.cache/autoresearch/tokenizer/val_rows-*.pt"
    assert isolation.expand_path(pattern, {"AUTORESEARCH_CACHE": "/data/c"}, "/home/u") == "/data/c/tokenizer/val_rows-*.pt"
    with pytest.raises(ValueError, match=r"^\$NOPE is not set \(write \$\{NOPE:-default\} for a default\)$"):
        isolation.expand_path("$NOPE/x", {}, "/home/u")
