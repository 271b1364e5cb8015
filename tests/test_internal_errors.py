"""Internal errors are reported, not fatal: a step that the file system fails (permissions, a full disk, a file
that cannot be replaced, a file name that is not UTF-8) becomes a `crash` record whose reason names the file
and the OS error, told in one line, and the session goes on; a results store that cannot be written stops the
session with one line, and nothing is applied. Each case is a real inner session."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import pytest

from autoresearch_helpers import PY, records, write_task
from pytest_autoresearch.process import run_logged

AS_ROOT = os.geteuid() == 0  # root ignores permission bits: an immutable file (chattr +i) stands in for them

# run by a mutator: the results file can no longer be written (as LOCK_WAY says), then value.txt is bumped
LOCKING_MUTATE = '''import os, pathlib, subprocess
results = os.environ["LIVE_RESULTS"]  # the live file, not the export in $AUTORESEARCH_RESULTS
if os.environ["LOCK_WAY"] == "chattr":
    subprocess.run(["chattr", "+i", results], check=True)
else:
    os.chmod(results, 0o444)
p = pathlib.Path("experiments/t/value.txt")
p.write_text(f"{int(p.read_text()) + 1}\\n")
'''


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """path (a file, or a folder's entries) cannot be written or replaced for the block."""
    if AS_ROOT:
        if not _chattr("+i", path):
            pytest.skip("running as root on a file system without chattr +i")
        try:
            yield
        finally:
            _chattr("-i", path)
        return
    mode = path.stat().st_mode
    os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        os.chmod(path, mode)


def one_line(result: pytest.RunResult, pattern: str) -> None:
    """The failure is told in one line matching pattern; no INTERNALERROR, no traceback of the engine."""
    output = result.stdout.str() + result.stderr.str()
    assert any(fnmatch(line, pattern) for line in output.splitlines()), output[-3000:]
    assert "INTERNALERROR" not in output and "Traceback" not in output, output[-3000:]


def value(root: Path, name: str = "t") -> str:
    return (root / "experiments" / name / "value.txt").read_text()


def test_a_read_only_results_file_stops_the_session_at_once_with_one_line(pytester, research):
    write_task(pytester.path)
    research()
    results = pytester.path / "work" / "results.jsonl"
    before = results.read_text()
    with unwritable(results):
        result = research()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    one_line(result, "ERROR: autoresearch: cannot write the results store: */work/results.jsonl: * (PermissionError)")
    assert results.read_text() == before and value(pytester.path) == "2\n"  # the second run changed nothing


def test_a_read_only_work_folder_stops_the_session_at_once_with_one_line(pytester, research):
    write_task(pytester.path)
    research()
    with unwritable(pytester.path / "work"):
        result = research()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    one_line(result, "ERROR: autoresearch: cannot write the results store: */work: * (PermissionError)")
    assert value(pytester.path) == "2\n"


def test_results_unwritable_mid_session_stop_it_before_the_keep_lands(pytester, research, monkeypatch):
    monkeypatch.setenv("LOCK_WAY", "chattr" if AS_ROOT else "chmod")
    if AS_ROOT and not _chattr("+i", pytester.path) or AS_ROOT and not _chattr("-i", pytester.path):
        pytest.skip("running as root on a file system without chattr +i")
    write_task(pytester.path, mutate=LOCKING_MUTATE)
    results = pytester.path / "work" / "results.jsonl"
    monkeypatch.setenv("LIVE_RESULTS", str(results))
    try:
        result = research("--autoresearch-iterations", "2")
    finally:
        _chattr("-i", results) if AS_ROOT else os.chmod(results, 0o644)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    one_line(result, "*autoresearch: stopped: cannot write the results store: */work/results.jsonl: * "
                     "(PermissionError); nothing was applied*")
    assert value(pytester.path) == "1\n"  # the keep did not land: it could not have been recorded
    assert [r["status"] for r in records(pytester.path)] == ["baseline"]
    assert not list((pytester.path / "experiments" / "t").glob(".*.tmp"))


def test_a_workspace_file_that_cannot_be_replaced_is_a_crash_naming_it_and_the_session_goes_on(pytester, research):
    write_task(pytester.path, "a")
    write_task(pytester.path, "b")
    target = pytester.path / "experiments" / "a" / "value.txt"
    with unwritable(target if AS_ROOT else target.parent):
        result = research("-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    one_line(result, "crash: internal error: experiments/a/value.txt: * (PermissionError)")
    result.stdout.fnmatch_lines(["*b[[]1[]] KEPT*"])
    crash = [r for r in records(pytester.path) if r["task"] == "a"][-1]
    assert crash["status"] == "crash" and "experiments/a/value.txt" in crash["reason"]
    assert value(pytester.path, "a") == "1\n" and value(pytester.path, "b") == "2\n"
    assert not list(target.parent.glob(".*.tmp"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to stand for a full disk")
def test_a_full_disk_is_a_crash_naming_the_file_and_the_session_goes_on(pytester, research):
    write_task(pytester.path, "a")
    write_task(pytester.path, "b")
    logs = pytester.path / "work" / "logs" / "a"
    logs.mkdir(parents=True)
    (logs / "1.diff").symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    result = research("-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    one_line(result, "crash: internal error: work/logs/a/1.diff: No space left on device (OSError)")
    result.stdout.fnmatch_lines(["*b[[]1[]] KEPT*"])
    crash = [r for r in records(pytester.path) if r["task"] == "a"][-1]
    assert crash["status"] == "crash" and "No space left on device" in crash["reason"]
    assert value(pytester.path, "a") == "1\n"


def test_a_file_name_that_is_not_utf8_is_a_crash_naming_it_and_the_session_goes_on(pytester, research):
    write_task(pytester.path, "a", spec={"artifacts": ["experiments/a/*.txt"]})
    write_task(pytester.path, "b")
    os.close(os.open(os.path.join(os.fsencode(pytester.path), b"experiments/a/\xff.txt"), os.O_CREAT | os.O_WRONLY))
    result = research("-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    one_line(result, r"crash: internal error: experiments/a/\xff.txt: file name or link target is not valid UTF-8 "
                     "(UnicodeEncodeError)")
    result.stdout.fnmatch_lines(["*b[[]1[]] KEPT*"])
    assert records(pytester.path)[0]["status"] == "crash"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to stand for a full disk")
def test_a_log_that_cannot_be_written_is_an_error_naming_it_and_the_runner_still_finishes(tmp_path):
    # more output than a pipe holds: unless it is drained after the log fails, the runner blocks until killed
    command = f"{PY} -c \"import sys; sys.stdout.write('x' * 1000000)\""
    start = time.perf_counter()
    with open("/dev/full", "wb") as log, pytest.raises(OSError) as caught:
        run_logged(command, tmp_path, dict(os.environ), timeout=60, log=log)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/dev/full"
    assert time.perf_counter() - start < 30
