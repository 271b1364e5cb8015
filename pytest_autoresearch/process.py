"""Subprocesses for mutators and runners: own process group, timeout kill, output teed into a log.

Why a process group: a runner is often a shell running python running workers; killing only the
shell on timeout would leave the workers holding the GPU (and the log pipe) open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 65536
DRAIN_TIMEOUT_S = 5.0  # how long to wait for pipes after the group is gone


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None  # None when it timed out
    timed_out: bool
    seconds: float
    stdout: str  # stdout only (stderr goes to the log alone), so metrics never come from stderr

    def failure(self, role: str, timeout: float) -> str | None:
        if self.timed_out:
            return f"{role} timed out after {timeout:g}s"
        if self.returncode != 0:
            return f"{role} exited with code {self.returncode}"
        return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_logged(command: str, cwd: Path, env: Mapping[str, str], timeout: float, log: BinaryIO) -> ProcessResult:
    """Run `command` through the shell in cwd; stdout and stderr are both appended to log as they come."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, shell=True, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    write_lock = threading.Lock()
    stdout_chunks: list[bytes] = []
    log_errors: list[OSError] = []  # a log that cannot be written (full disk): told once the process is done

    def pump(stream, keep: list[bytes] | None) -> None:
        while chunk := stream.read1(READ_CHUNK):
            with write_lock:
                if not log_errors:
                    try:
                        log.write(chunk)
                        log.flush()
                    except OSError as error:  # keep draining: a blocked pipe would hang the process
                        log_errors.append(error)
            if keep is not None:
                keep.append(chunk)

    pumps = [threading.Thread(target=pump, args=(proc.stdout, stdout_chunks), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, None), daemon=True)]
    for thread in pumps:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # on timeout, Ctrl-C or normal exit alike: nothing of the group survives
        _kill_group(proc.pid)
        proc.wait()
        for thread in pumps:
            thread.join(DRAIN_TIMEOUT_S)
        proc.stdout.close()
        proc.stderr.close()
    seconds = time.perf_counter() - start
    if log_errors:
        raise OSError(log_errors[0].errno, log_errors[0].strerror, getattr(log, "name", None)) from log_errors[0]
    if timed_out:
        with write_lock:
            log.write(f"\n[autoresearch] killed after {timeout:g}s timeout\n".encode())
            log.flush()
    stdout = b"".join(stdout_chunks).decode("utf-8", errors="replace")
    return ProcessResult(None if timed_out else proc.returncode, timed_out, seconds, stdout)
