"""`mutator.isolation` / `runner.isolation: bwrap`: the command runs in a Linux sandbox made by bubblewrap.
(`runner.isolation: auto` is bwrap where it can run here, else none, with a warning once a session.)

Inside it the whole file system is read-only except the sandbox copy (and the few paths the engine hands
the command to write, like the mutator's description file); /tmp and /dev/shm are private and empty (other
runs' sandboxes are out of sight; the repository and the Python running pytest stay in sight, read-only,
even when they lie in /tmp); the engine's storage (results, logs, state, the records' key) and the results file are hidden
behind empty mounts (the command reads the history from its read-only export); the command has its own process namespace, so it cannot see or signal pytest, its
reaper or anything else outside;
with `network: false` it has its own network namespace too (loopback only). The runner's `hide` paths are
hidden the same way (the validation data the training must not see), its `writable` folders bound writable
(a compile cache).

Why bubblewrap: it is one small program (Debian `bubblewrap`), unprivileged where the kernel allows user
namespaces, and needs no daemon. Where it is missing or cannot make its namespaces, loading the task fails
with one line saying so: an isolation the task asked for is never silently dropped.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .storage import Storage

KINDS = ("none", "bwrap")
AUTO = "auto"  # runner.isolation only: bwrap where it can run here, else none (the session warns, saying why)
PROBE_TIMEOUT_S = 10.0
WILDCARD = re.compile(r"[*?\[]")
# $NAME, ${NAME}, ${NAME:-default}, as a shell expands them; a ${ of any other form is an error
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|"
                      r"(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<open>\{))")


@dataclass(frozen=True)
class Isolation:
    network: bool = True  # False: a network namespace of its own, loopback only

    def argv(self, cwd: Path, readable: Iterable[Path] = (), writable: Iterable[Path] = (),
             hidden: Iterable[Path] = ()) -> list[str]:
        """bwrap's argv up to its `--`, for a command run in cwd: cwd and each of `writable` writable (a file
        not there yet through its folder, since bubblewrap binds only what exists), each of `readable` in sight
        even under the private /tmp, and read-only even inside a writable folder, each of `hidden` that exists covered up: a folder by an empty tmpfs, a
        file by /dev/null (it reads as empty, and takes writes nowhere), even inside a writable folder."""
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc",
                "--tmpfs", "/tmp", "--setenv", "TMPDIR", "/tmp"]
        if not self.network:
            args.append("--unshare-net")
        mounts = [(path, ["--ro-bind", str(path), str(path)]) for path in readable]
        for path in hidden:
            if path.is_dir():
                mounts.append((path, ["--tmpfs", str(path)]))
            elif path.exists():  # a device node needs a mount that allows devices
                mounts.append((path, ["--dev-bind", "/dev/null", str(path)]))
        for path in (cwd, *writable):
            path = path if path.exists() else path.parent
            if path.is_dir() or path.is_file():
                mounts.append((path, ["--bind", str(path), str(path)]))
        # a mount covers what was mounted below its path before it: outer paths first, so that each inner one
        # shows (a sandbox inside a hidden folder, the read-only history inside the writable scratch folder, a
        # hidden file inside a writable cache); at one depth, in the order above
        for _, mount in sorted(mounts, key=lambda m: len(m[0].parts)):
            args += mount
        return args + ["--chdir", str(cwd), "--"]


class Choice(NamedTuple):
    isolation: Isolation | None  # None: the command runs unisolated, as the user
    problem: str | None = None  # "<key>: message": what the task asks for is no valid isolation
    unisolated: str | None = None  # `auto` where bubblewrap cannot run here: why not


def parse(value: object, network: object, role: str) -> Choice:
    """The isolation task.yaml's `<role>.isolation` and `<role>.network` ask for, or the problem with them, the
    key it is about as the message's start ("<key>: message"). `auto` (the runner's only) is bwrap where it can
    run here, else none, saying why."""
    kinds = KINDS + ((AUTO,) if role == "runner" else ())
    if value is None or value == "none":
        if network not in (None, True):
            return Choice(None, f"{role}.network: false needs {role}.isolation: bwrap (only a sandbox takes the "
                                f"network away)")
        return Choice(None)
    if value not in kinds:
        return Choice(None, f"{role}.isolation: must be one of {', '.join(kinds)}, got {value!r}")
    if network is not None and not isinstance(network, bool):
        return Choice(None, f"{role}.network: must be true or false, got {network!r}")
    isolation = Isolation(network=network is not False)
    problem = unavailable(isolation.network)
    if problem is not None:
        return Choice(None, unisolated=f"bwrap {problem}") if value == AUTO else \
            Choice(None, f"{role}.isolation: bwrap {problem}")
    return Choice(isolation)


def expand_path(text: str, environ: Mapping[str, str], home: str) -> str:
    """A path of task.yaml as a shell would expand it: a leading `~` (of the path, or of a default) is home;
    `$NAME` and `${NAME}` are the variable's value, `${NAME:-default}` the value unless it is unset or empty. A
    value is taken as it is (never expanded again). ValueError (why) on an unset variable with no default, or
    a `${` of any other form."""
    def tilde(word: str) -> tuple[str, str]:
        return (home, word[1:]) if word == "~" or word.startswith("~/") else ("", word)

    def value(match: re.Match[str]) -> str:
        if match["open"] is not None:
            raise ValueError("a '${' that starts no ${NAME} or ${NAME:-default}")
        name = match["braced"] or match["plain"]
        if environ.get(name):
            return environ[name]
        if match["default"] is not None:
            return "".join(tilde(match["default"]))
        if name in environ:
            return ""
        raise ValueError(f"${name} is not set (write ${{{name}:-default}} for a default)")

    prefix, rest = tilde(text)
    return prefix + VARIABLE.sub(value, rest)


def matching(patterns: Iterable[str]) -> list[Path]:
    """The paths that absolute patterns (runner.hide's) name now: a wildcard of the last component matched
    against what exists at this moment (a file made since the task loaded counts), a plain path as it is."""
    found: list[Path] = []
    for pattern in patterns:
        folder, name = os.path.split(pattern)
        found += sorted(Path(folder).glob(name)) if WILDCARD.search(name) else [Path(pattern)]
    return found


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
