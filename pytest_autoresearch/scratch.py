"""Scratch folders for an iteration's sandbox copies, removed even when pytest is killed outright.

Every scratch folder of a pytest process lies in one root folder, `$TMPDIR/autoresearch-<pid>-*`, and a
keeper process (reaper.py keep) started with the first one removes that root once the process is gone: it
waits for the end of a pipe that only this process holds, and the kernel closes that pipe even after a
SIGKILL. An iteration still removes its own folder as it ends; the keeper is for what a killed one leaves.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .process import REAPER


@dataclass(frozen=True)
class _Root:
    pid: int  # the process it belongs to: a forked child gets a root (and keeper) of its own
    path: Path
    lifeline: int  # write end of the keeper's pipe; never written, only held open


_root: _Root | None = None


def new_scratch(name: str) -> Path:
    """A new empty folder `<name>-*` for one iteration's copies, inside this process's scratch root."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_process_root()))


def _process_root() -> Path:
    global _root
    if _root is None or _root.pid != os.getpid() or not _root.path.is_dir():
        if _root is not None and _root.pid == os.getpid():  # the root was removed under us: its keeper can go
            os.close(_root.lifeline)
        path = Path(tempfile.mkdtemp(prefix=f"autoresearch-{os.getpid()}-"))
        read, lifeline = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:  # not subprocess.Popen: it would warn, at exit, of a child still running, which the keeper must be
            os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", str(REAPER), "keep", str(path)], os.environ,
                           setsid=True, file_actions=[(os.POSIX_SPAWN_DUP2, read, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                                                      (os.POSIX_SPAWN_DUP2, devnull, 2)])
        finally:
            os.close(read)
            os.close(devnull)
        _root = _Root(os.getpid(), path, lifeline)
    return _root.path
