"""Mutators and runners that leave their process group or session, outlive pytest, or flood their output: a
run still ends within its timeout + 5 s, leaves no process behind, and its log keeps the head and tail of the
output in bounded memory. Real inner sessions, real processes, real signals. Survivors are looked for by the
session and process-group ids that the test's own commands created and wrote down, read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch_helpers import MUTATE_ADD, PY, REPO_ROOT, SCORE, records, write_task
from pytest_autoresearch.process import HEAD_BYTES, TAIL_BYTES, run_logged

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process ids from /proc")

SLACK_S = 5.0  # a run returns within its timeout + this, whatever it started
GONE_WITHIN_S = 5.0  # after pytest is SIGKILLed, what it started is gone within this
RSS_CAP_MB = 150  # the inner pytest's peak RSS while its mutator prints 300 MB (it was ~1 GB when all was kept)
BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)


def living(field: str, ident: int) -> list[int]:
    """Living processes (zombies are dead) whose session ("sid") or process group ("pgid") is ident."""
    column = {"pgid": 2, "sid": 3}[field]
    found = []
    for name in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{name}/stat").read_bytes().rpartition(b")")[2].split()
        except (OSError, ValueError):
            continue
        if fields and fields[0] != b"Z" and int(fields[column]) == ident:
            found.append(int(name))
    return found


def gone(field: str, ident: int, within: float = GONE_WITHIN_S) -> bool:
    deadline = time.monotonic() + within
    while living(field, ident):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def ids(tmp_path: Path):
    """A folder where the commands write the ids they create (`sid-*`, `pgid-*` files); any process still in
    one of them at teardown is killed, so that a failing test leaves nothing running."""
    folder = tmp_path / "ids"
    folder.mkdir()
    yield folder
    for path in folder.iterdir():
        field = path.name.partition("-")[0]
        text = path.read_text().strip()
        if field in ("sid", "pgid") and text.isdigit():
            for pid in living(field, int(text)):
                os.kill(pid, signal.SIGKILL)


def written(ids: Path) -> dict[str, int]:
    return {path.name: int(path.read_text()) for path in ids.iterdir() if path.read_text().strip().isdigit()}


def escapee(ids: Path, name: str) -> str:
    """Shell lines starting `sleep 30` in a session of its own (setsid) and waiting until it wrote its id."""
    return (f"setsid sh -c 'echo $$ > {ids}/sid-{name}; exec sleep 30' &\n"
            f"while [ ! -s {ids}/sid-{name} ]; do sleep 0.01; done\n")


# A python snippet: a grandchild that moves to a process group of its own (setpgid) and sleeps, holding the
# output pipes; the parent waits for it to write its group id
SETPGID = '''import os, sys, time
if os.fork() == 0:
    os.setpgid(0, 0)
    open(sys.argv[1] + ".tmp", "w").write(str(os.getpgid(0)))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(30)
    os._exit(0)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
'''
# ...and one that forks twice and calls setsid, the way a daemon detaches (its parent exits at once)
DAEMON = '''import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".tmp", "w").write(str(os.getsid(0)))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(30)
    os._exit(0)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
'''


def helper(pytester: pytest.Pytester, name: str, code: str) -> str:
    (pytester.path / f"{name}.py").write_text(code)
    return f"{PY} {name}.py"


# ----------------------------------------------------------------------------
# Timeouts hold, whatever the command started


def test_a_mutator_that_leaves_a_process_in_its_own_session_ends_with_it(pytester, research, ids):
    (pytester.path / "mutate.sh").write_text(escapee(ids, "bg") + f"{PY} experiments/t/mutate.py\n")
    write_task(pytester.path, mutate=BUMP, spec={"mutator": {"command": "sh mutate.sh", "timeout": 2}})
    start = time.monotonic()
    result = research()
    assert time.monotonic() - start < 2 + SLACK_S  # it was 31.7 s: the sleep held the pipes open
    assert result.ret == 0 and records(pytester.path)[-1]["status"] == "keep"
    assert gone("sid", written(ids)["sid-bg"], within=0)


def test_a_mutator_timing_out_with_a_setpgid_grandchild_ends_within_its_timeout(pytester, research, ids):
    grandchild = helper(pytester, "grandchild", SETPGID)
    write_task(pytester.path, mutate=BUMP,
               spec={"mutator": {"command": f"{grandchild} {ids}/pgid-grandchild && sleep 30", "timeout": 2}})
    start = time.monotonic()
    result = research()
    assert time.monotonic() - start < 2 + SLACK_S  # it hung the session for > 300 s
    result.stdout.fnmatch_lines(["*crash: mutator timed out after 2s*"])
    assert records(pytester.path)[-1]["status"] == "crash"
    assert gone("pgid", written(ids)["pgid-grandchild"], within=0)


def test_a_runner_that_leaves_processes_behind_ends_with_them(pytester, research, ids):
    daemon = helper(pytester, "daemon", DAEMON)
    (pytester.path / "run.sh").write_text(escapee(ids, "bg") + f"{daemon} {ids}/sid-daemon\n"
                                          f"{PY} experiments/t/score.py\n")
    write_task(pytester.path, spec={"runner": {"command": "sh run.sh", "timeout": 20}})
    start = time.monotonic()
    result = research()
    assert time.monotonic() - start < 2 * SLACK_S  # two runs (baseline, candidate); it was 15 s for each
    assert result.ret == 0 and [r["status"] for r in records(pytester.path)] == ["baseline", "keep"]
    assert all(gone("sid", ident, within=0) for ident in written(ids).values())


def test_a_runner_timing_out_with_an_escaped_daemon_is_a_crash_within_its_timeout(pytester, research, ids):
    daemon = helper(pytester, "daemon", DAEMON)
    runner = (f'if [ "$AUTORESEARCH_ITERATION" = 0 ]; then {PY} experiments/t/score.py; '
              f'else {daemon} {ids}/sid-daemon && sleep 30; fi')
    write_task(pytester.path, spec={"runner": {"command": runner, "timeout": 2}})
    start = time.monotonic()
    result = research()
    assert time.monotonic() - start < 2 + SLACK_S
    result.stdout.fnmatch_lines(["*crash: runner timed out after 2s*"])
    assert gone("sid", written(ids)["sid-daemon"], within=0)


def test_a_run_returns_its_exit_code_or_signal(tmp_path):
    with open(tmp_path / "log", "wb") as log:
        assert run_logged("exit 3", tmp_path, dict(os.environ), 10, log).returncode == 3
        assert run_logged("kill -TERM $$", tmp_path, dict(os.environ), 10, log).returncode == -signal.SIGTERM
        missing = run_logged("exec /no/such/program", tmp_path, dict(os.environ), 10, log)
    assert missing.returncode == 127 and not missing.timed_out


# ----------------------------------------------------------------------------
# pytest killed outright: what it started dies with it, its scratch copies are removed


# The command: a setsid escapee, a setpgid grandchild, its own session id, then "ready", then a long sleep.
HANGING = '''import os, subprocess, sys, time
ids = sys.argv[1]
if os.environ["AUTORESEARCH_ITERATION"] != "0":
    open(f"{ids}/sid-own", "w").write(str(os.getsid(0)))
    subprocess.run(["sh", "bg.sh"])
    subprocess.run([sys.executable, "grandchild.py", f"{ids}/pgid-grandchild"])
    open(f"{ids}/ready", "w").write("ready")
    time.sleep(60)
'''


@pytest.mark.parametrize("role", ["mutator", "runner"])
def test_killing_pytest_outright_leaves_no_process_and_no_scratch_copy(pytester, ids, tmp_path, role):
    pytester.makeini("[pytest]\n")
    helper(pytester, "grandchild", SETPGID)
    (pytester.path / "bg.sh").write_text(escapee(ids, "bg"))
    hanging = helper(pytester, "hanging", HANGING) + f" {ids}"
    spec = ({"mutator": {"command": f"{hanging} && {PY} experiments/t/mutate.py"}} if role == "mutator" else
            {"runner": {"command": f"{hanging} && {PY} experiments/t/score.py"}})
    write_task(pytester.path, spec=spec)
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(scratch_root)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "pytest_autoresearch.plugin", "--autoresearch",
                             "-p", "no:cacheprovider"], cwd=pytester.path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    deadline = time.monotonic() + 60
    while not (ids / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the command never got ready"
        time.sleep(0.05)
    assert list(scratch_root.iterdir())  # the sandbox copy the command runs in
    proc.kill()
    proc.wait()
    made = written(ids)
    assert set(made) == {"sid-own", "sid-bg", "pgid-grandchild"}
    survivors = {name: living(name.partition("-")[0], ident) for name, ident in made.items()
                 if not gone(name.partition("-")[0], ident)}
    assert not survivors
    deadline = time.monotonic() + GONE_WITHIN_S
    while list(scratch_root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(scratch_root.iterdir())


# ----------------------------------------------------------------------------
# Huge output: bounded memory, the log keeps its head and tail and says how much was cut


def test_300_mb_of_mutator_output_keeps_pytest_small_and_the_log_says_what_was_cut(pytester):
    pytester.makeini("[pytest]\n")
    flood = ("import sys\nline = b'x' * 1023 + b'\\n'\nsys.stdout.buffer.write(b'first line\\n')\n"
             "for _ in range(300):\n    sys.stdout.buffer.write(line * 1024)\n"
             "sys.stdout.buffer.write(b'last line\\n')\nsys.stdout.flush()\n")
    write_task(pytester.path, mutate=flood + BUMP)
    # VmHWM, not getrusage's ru_maxrss: that one also counts the pages of the (big) test process it was forked from
    measured = ("import re, sys, pytest\ncode = pytest.main(sys.argv[1:])\n"
                "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"
                "print(f'peak rss: {int(peak) // 1024} MB')\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", measured, "-p", "pytest_autoresearch.plugin", "--autoresearch",
                           "-p", "no:cacheprovider"], cwd=pytester.path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    peak_mb = int(done.stdout.rpartition("peak rss: ")[2].split()[0])
    assert peak_mb < RSS_CAP_MB
    log = pytester.path / records(pytester.path)[-1]["log"]
    assert log.stat().st_size < HEAD_BYTES + TAIL_BYTES + 4096
    text = log.read_text()
    assert "first line" in text and "last line" in text
    cut = 300 * 1024 * 1024 + len("first line\nlast line\n") - HEAD_BYTES - TAIL_BYTES
    assert f"bytes of output cut here (kept: the first {HEAD_BYTES:,} and the last" in text
    reported = int(text.partition("[autoresearch] ... ")[2].partition(" bytes")[0].replace(",", ""))
    assert cut <= reported < cut + 1024  # the tail starts at a whole line: at most one line more is cut


def test_the_score_after_a_huge_output_is_still_read(tmp_path):
    command = (f"{PY} -c \"import sys; sys.stdout.write('noise\\n' * 2000000); print('score: 7')\"")
    with open(tmp_path / "log", "wb") as log:
        result = run_logged(command, tmp_path, dict(os.environ), 60, log)
    assert result.returncode == 0 and result.stdout.endswith("score: 7\n")
    assert len(result.stdout) < HEAD_BYTES + TAIL_BYTES + 200 and "bytes of output cut here" in result.stdout
