"""Subprocesses for mutators and runners: each in its own session under a reaper (reaper.py) that kills all
of its descendants at the timeout, at Ctrl-C, when it ends, and when pytest dies; output teed into the log,
which keeps the head and tail of a huge output.

Why a reaper process rather than a process-group kill: a runner is often a shell running python running
workers, and any of them may leave the group (setsid, setpgid, a daemonizing double fork) and keep the
log pipes open; only a subreaper sees that whole tree. Why output is read with a selector against a
deadline: a pipe that an escaped process still holds would otherwise block the read past the timeout.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 65536
KILL_GRACE_S = 2.0  # how long the reaper may take to kill the tree before it is killed itself
DRAIN_GRACE_S = 1.0  # how long to keep reading once the reaper is gone (a pipe passed to a foreign process)
HEAD_BYTES = 2 << 20  # of a huge output, the log (and the stdout the scorer reads) keep this much at the start
TAIL_BYTES = 2 << 20  # ...and this much at the end
REAPER = Path(__file__).with_name("reaper.py")
# of a stdout line longer than this, the watcher sees only the end: still longer than lines.MATCHED_LINE_CHARS
# (it decodes to at least a quarter as many characters), so no pattern is applied to it
WATCHED_LINE_BYTES = 65536


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None  # None when it timed out
    timed_out: bool
    seconds: float
    stdout: str  # stdout only (stderr goes to the log alone), so metrics never come from stderr; head and tail
    stopped: bool = False  # ended by its watcher (policy.early_stop), not by itself or the timeout

    def failure(self, role: str, timeout: float) -> str | None:
        if self.stopped:
            return None  # stopped on purpose: the caller judges it by what the watcher saw
        if self.timed_out:
            return f"{role} timed out after {timeout:g}s"
        if self.returncode != 0:
            return f"{role} exited with code {self.returncode}"
        return None


class HeadAndTail:
    """The first `head` and last `tail` bytes of a stream of any length, in memory bounded by their sum."""

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.head_limit, self.tail_limit = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> bytes:
        """Take chunk; returns the part of it that belongs to the head (what a log can write at once)."""
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        to_head, rest = chunk[:max(room, 0)], chunk[max(room, 0):]
        self.head += to_head
        if rest:
            self.tail += rest
            if len(self.tail) > 2 * self.tail_limit:  # trimmed in batches: each trim copies the tail
                del self.tail[:-self.tail_limit]
        return to_head

    @property
    def cut(self) -> int:
        """Bytes between the head and the tail that are not kept."""
        return max(0, self.total - len(self.head) - self.tail_limit)

    def rest(self) -> bytes:
        """What follows the head: the tail, or, when output was cut, a line saying how much, and the tail from
        its first whole line."""
        if not self.cut:
            return bytes(self.tail)
        tail = self.tail[-self.tail_limit:]
        newline = tail.find(b"\n")
        tail = tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail
        skipped = self.total - len(self.head) - len(tail)
        return (f"\n[autoresearch] ... {skipped:,} bytes of output cut here (kept: the first {len(self.head):,} "
                f"and the last {len(tail):,} of {self.total:,}) ...\n").encode() + bytes(tail)

    def text(self) -> str:
        return (bytes(self.head) + self.rest()).decode("utf-8", errors="replace")


class _Log:
    """The log file, written as output comes until the head is full; the tail is written at the end. A log
    that cannot be written (a full disk) is remembered, not raised: the pipes must still be drained."""

    def __init__(self, log: BinaryIO) -> None:
        self.file = log
        self.kept = HeadAndTail()
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if data and self.error is None:
            try:
                self.file.write(data)
                self.file.flush()
            except OSError as error:
                self.error = error

    def add(self, chunk: bytes) -> None:
        self.write(self.kept.add(chunk))

    def finish(self, note: bytes = b"") -> None:
        """Write the tail (and a note after it); then raise the write error, if there was one."""
        self.write(self.kept.rest() + note)
        if self.error is not None:
            error = self.error
            raise OSError(error.errno, error.strerror, getattr(self.file, "name", None)) from error


def run_logged(command: str, cwd: Path, env: Mapping[str, str], timeout: float, log: BinaryIO,
               wrapper: Sequence[str] = (), watch: Callable[[str], bool] | None = None) -> ProcessResult:
    """Run `command` through /bin/sh in cwd (after `wrapper`, e.g. a sandbox's argv, when given); stdout and
    stderr are both appended to log as they come. `watch`, if given, sees each stdout line as it comes; when it
    returns True the run is stopped like a timed-out one (its whole tree killed) and the result says stopped.
    Returns within timeout + KILL_GRACE_S + DRAIN_GRACE_S whatever the command started."""
    start = time.monotonic()
    lifeline_read, lifeline = os.pipe()
    status_read, status_write = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(REAPER), "run", str(status_write), *wrapper,
                                 "/bin/sh", "-c", command], cwd=cwd, env=dict(env), stdin=lifeline_read,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_write,),
                                start_new_session=True)
    except BaseException:
        os.close(lifeline)
        os.close(status_read)
        raise
    finally:
        os.close(lifeline_read)
        os.close(status_write)
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    logged, stdout, status = _Log(log), HeadAndTail(), bytearray()
    waiting = selectors.DefaultSelector()  # not select(): a busy pytest may hold descriptors past FD_SETSIZE
    for fd in (out, err, status_read):
        waiting.register(fd, selectors.EVENT_READ)
    deadline, timed_out, give_up = start + timeout, False, float("inf")
    reaper_gone = stopped = False
    partial = b""  # the stdout line still being written, for the watcher
    try:
        while waiting.get_map():
            now = time.monotonic()
            if now >= give_up:
                break  # the reaper would not go, or something foreign still holds a pipe: stop reading
            if now >= deadline and not reaper_gone and not timed_out:
                timed_out = True
                os.close(lifeline)  # end of the lifeline: the reaper kills the whole tree
                lifeline = -1
                give_up = now + KILL_GRACE_S
            until = give_up if timed_out or reaper_gone or stopped else deadline
            for key, _ in waiting.select(max(until - now, 0.0)):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    waiting.unregister(key.fd)
                    if key.fd == status_read:  # the reaper has exited: every writer it knew of is dead
                        reaper_gone = True
                        give_up = min(give_up, time.monotonic() + DRAIN_GRACE_S)
                elif key.fd == status_read:
                    status += chunk
                else:
                    logged.add(chunk)
                    if key.fd == out:
                        stdout.add(chunk)
                        if watch is not None and not stopped:
                            *lines, partial = (partial + chunk).split(b"\n")
                            partial = partial[-WATCHED_LINE_BYTES:]
                            if any(watch(line.decode("utf-8", errors="replace")) for line in lines):
                                stopped = True
                                if lifeline >= 0:
                                    os.close(lifeline)  # as at the timeout: the reaper kills the whole tree
                                    lifeline = -1
                                give_up = time.monotonic() + KILL_GRACE_S
    finally:  # on timeout, Ctrl-C or normal exit alike: nothing of the tree survives
        waiting.close()
        if lifeline >= 0:
            os.close(lifeline)
            give_up = time.monotonic() + KILL_GRACE_S
        _stop_reaper(proc, give_up)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        os.close(status_read)
    seconds = time.monotonic() - start
    note = (b"\n[autoresearch] stopped early (policy.early_stop)\n" if stopped else
            f"\n[autoresearch] killed after {timeout:g}s timeout\n".encode() if timed_out else b"")
    logged.finish(note)
    return ProcessResult(None if timed_out else _returncode(bytes(status), proc.returncode), timed_out, seconds,
                         stdout.text(), stopped)


def _stop_reaper(proc: subprocess.Popen[bytes], until: float) -> None:
    """Wait for the reaper until `until` at most; past it, it and what is left of its session are killed."""
    try:
        proc.wait(max(until - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:  # stopped (SIGSTOP) or stuck
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def _returncode(status: bytes, reaper_code: int) -> int:
    """The command's exit code as subprocess gives it (-N for signal N); the reaper's own when it never said
    (it was killed)."""
    kind, _, number = status.decode("ascii", errors="replace").partition(" ")
    if number.isdigit():
        return -int(number) if kind == "signal" else int(number)
    return reaper_code
