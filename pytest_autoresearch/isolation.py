"""`mutator.isolation` / `runner.isolation: bwrap`: the command runs in a Linux sandbox made by bubblewrap.

Inside it the whole file system is read-only except the sandbox copy (and the few paths the engine hands
the command to write, like the mutator's description file); /tmp and /dev/shm are private and empty (other
runs' sandboxes are out of sight; the repository and the Python running pytest stay in sight, read-only,
even when they lie in /tmp); the engine's storage (results, logs, state, the records' key) and the results file are hidden
behind empty mounts (the command reads the history from its read-only export); the command has its own process namespace, so it cannot see or signal pytest, its
reaper or anything else outside;
with `network: false` it has its own network namespace too (loopback only).

Why bubblewrap: it is one small program (Debian `bubblewrap`), unprivileged where the kernel allows user
namespaces, and needs no daemon. Where it is missing or cannot make its namespaces, loading the task fails
with one line saying so: an isolation the task asked for is never silently dropped.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .storage import Storage

KINDS = ("none", "bwrap")
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Isolation:
    network: bool = True  # False: a network namespace of its own, loopback only

    def argv(self, cwd: Path, readable: Iterable[Path] = (), writable: Iterable[Path] = (),
             hidden: Iterable[Path] = ()) -> list[str]:
        """bwrap's argv up to its `--`, for a command run in cwd: cwd and each of `writable` writable (a file
        not there yet through its folder, since bubblewrap binds only what exists), each of `readable` in sight
        even under the private /tmp, and read-only even inside a writable folder, each of `hidden` that exists covered up: a folder by an empty tmpfs, a
        file by /dev/null (it reads as empty, and takes writes nowhere)."""
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc",
                "--tmpfs", "/tmp", "--setenv", "TMPDIR", "/tmp"]
        if not self.network:
            args.append("--unshare-net")
        for path in readable:
            args += ["--ro-bind", str(path), str(path)]
        for path in hidden:  # before the writable binds: a sandbox inside a hidden folder still shows
            if path.is_dir():
                args += ["--tmpfs", str(path)]
            elif path.exists():
                args += ["--dev-bind", "/dev/null", str(path)]  # a device node needs a mount that allows devices
        bound = []
        for path in (cwd, *writable):
            path = path if path.exists() else path.parent
            if path.is_dir() or path.is_file():
                args += ["--bind", str(path), str(path)]
                bound.append(path)
        for path in readable:  # read-only still where it lies in a folder bound writable (the history export)
            if any(path.is_relative_to(folder) for folder in bound):
                args += ["--ro-bind", str(path), str(path)]
        return args + ["--chdir", str(cwd), "--"]


def parse(value: object, network: object, role: str) -> tuple[Isolation | None, str | None]:
    """(the isolation, None) for task.yaml's `<role>.isolation` and `<role>.network`, else (None, why not)
    with the key it is about as the message's start ("<key>: message")."""
    if value is None or value == "none":
        if network not in (None, True):
            return None, f"{role}.network: false needs {role}.isolation: bwrap (only a sandbox takes the network away)"
        return None, None
    if value not in KINDS:
        return None, f"{role}.isolation: must be one of {', '.join(KINDS)}, got {value!r}"
    if network is not None and not isinstance(network, bool):
        return None, f"{role}.network: must be true or false, got {network!r}"
    isolation = Isolation(network=network is not False)
    problem = unavailable(isolation.network)
    if problem is not None:
        return None, f"{role}.isolation: bwrap {problem}"
    return isolation, None


@functools.cache
def unavailable(network: bool) -> str | None:
    """Why bubblewrap cannot run a sandbox like ours on this machine, else None (tried once per process)."""
    if shutil.which("bwrap") is None:
        return "is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = Isolation(network=network).argv(Path(tempfile.gettempdir())) + ["true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run here: {e}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"cannot create its sandbox here: {lines[0] if lines else f'exit code {done.returncode}'}"
    return None


def command_wrapper(chosen: Isolation | None, repository: Path, cwd: Path, hidden: Iterable[Path],
                    writable: Iterable[Path] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """The argv to put before a command run in cwd (see Isolation.argv), with the repository and the export of
    the history that `env` names (AUTORESEARCH_RESULTS, in the scratch folder under the private /tmp) in
    sight, read-only, and `hidden` out of it; none when the task asked for no isolation."""
    if chosen is None:
        return []
    history = [Path(env["AUTORESEARCH_RESULTS"])] if env and env.get("AUTORESEARCH_RESULTS") else []
    return chosen.argv(cwd, [repository, *_interpreter(), *(path for path in history if path.exists())], writable,
                       hidden)


@functools.cache
def _interpreter() -> tuple[Path, ...]:
    """The Python that runs pytest (its virtual environment and the installation under it), where it lies in
    /tmp: the private /tmp would hide it, and commands such as `python -m ...` or `$VIRTUAL_ENV/bin/python`
    need it. (A clone in /tmp with its .venv inside, as CI makes, is the usual case.)"""
    tmp = Path("/tmp")
    found = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found.add(Path(sys.executable).resolve().parent.parent)
    return tuple(sorted(p for p in found if p.is_relative_to(tmp) and p != tmp and p.is_dir()))


def storage_paths(storage: Storage) -> list[Path]:
    """What an isolated command must not see of the engine: its storage folder; the results file, which reads
    as empty (the command reads the history from its export, $AUTORESEARCH_RESULTS); the state files beside
    it, the records' key among them, when they lie elsewhere (--autoresearch-results outside --autoresearch-dir)."""
    results = storage.results
    beside = [Path(results.lock.lock_file), results.counters, results.heads_path, results.baseline_runs,
              results.signer.path]
    return [storage.root, results.path, *(path for path in beside if not path.is_relative_to(storage.root))]
