"""The helper processes that clean up after pytest when pytest itself cannot: run as a script
(`python -I -S reaper.py ...`), standard library only, so that one starts in milliseconds and nothing of the
package (or of the environment's site-packages) is imported into it.

Both read a *lifeline* on their stdin: a pipe whose write end only the pytest process holds. End of file on
it means pytest closed it on purpose (a timeout, Ctrl-C) or died (even by SIGKILL: the kernel closes a dead
process's descriptors), so neither needs to be signalled, and neither depends on which pytest thread
started it (as PR_SET_PDEATHSIG would).

`run STATUS_FD ARGV...` supervises one mutator or runner command. It is the session leader of the session
pytest started it in, and a child subreaper (Linux PR_SET_CHILD_SUBREAPER): a descendant whose parent dies
is re-parented to it rather than to init, so a descendant that calls setsid() or setpgid(), or forks twice,
still stays in its process tree. The whole tree is killed when the command exits (what it left running
dies with it), and at once on end of file of the lifeline. The command's status is then written to
STATUS_FD as `exit N` or `signal N`; its output pipes are the command's, never written here.

`keep FOLDER` removes FOLDER (the pytest process's scratch copies) once the lifeline ends.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
KILL_ROUNDS_S = 5.0  # a tree that forks as fast as it is killed is given up on after this
REMOVE_TRIES = 25  # the keeper retries while the killed commands' last writes land in the folder
REMOVE_PAUSE_S = 0.2
# signals that Python itself ignores at start-up: a command must start with the default action
DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGCHLD", "SIGTERM", "SIGINT")
                        if hasattr(signal, name))


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def original_environment() -> dict[str, str]:
    """The environment pytest gave this process. Python rewrites its os.environ at start-up (C locale
    coercion adds LC_CTYPE, and -I cannot turn that off), but the kernel keeps the exec-time copy."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    pairs = (entry.partition(b"=") for entry in entries if b"=" in entry)
    return {os.fsdecode(key): os.fsdecode(value) for key, _, value in pairs}


def children_of(root: int) -> list[int]:
    """Every living process below root, from /proc (zombies are left out: they are dead, only unreaped)."""
    parent_of: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()  # the command name may hold spaces and ')'
        except OSError:  # gone meanwhile
            continue
        if fields and fields[0] != b"Z":
            parent_of[int(name)] = int(fields[1])
    below, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier}
        below.extend(frontier)
    return below


def reap(command: int, status: list[int]) -> None:
    """Collect every exited child (the subreaper inherits orphans); the command's status goes into `status`."""
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == command:
            status.append(code)


def kill_tree(command: int, status: list[int]) -> None:
    """SIGKILL everything below this process, round after round (a process forking while its parent is
    killed leaves orphans, re-parented here, for the next round), until nothing is left."""
    if not os.path.isdir("/proc"):  # no way to see the tree: its process group is what can be reached
        try:
            os.killpg(command, signal.SIGKILL)
        except OSError:
            pass
        return
    give_up = time.monotonic() + KILL_ROUNDS_S
    while time.monotonic() < give_up:
        reap(command, status)
        living = children_of(os.getpid())
        if not living:
            return
        for pid in living:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def run(status_fd: int, argv: list[str]) -> int:
    os.set_inheritable(status_fd, False)
    become_subreaper()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)  # SIGCHLD wakes the select below
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # treated like the lifeline's end (below)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        command = os.posix_spawnp(argv[0], argv, original_environment(), setpgroup=0,
                                  setsigdef=DEFAULT_SIGNALS, setsigmask=(),
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0)])
    except OSError as error:
        os.write(2, f"[autoresearch] cannot start {argv[0]}: {error}\n".encode())
        os.write(status_fd, b"exit 127")
        return 0
    status: list[int] = []
    while not status:
        ready = select.select([0, wake_read], [], [])[0]
        if wake_read in ready:
            signals = os.read(wake_read, 512)
            if bytes([signal.SIGTERM]) in signals:
                break
        reap(command, status)
        if 0 in ready and not os.read(0, 512):  # the lifeline ended: pytest gave up on the command, or died
            break
    kill_tree(command, status)
    reap(command, status)
    if status:
        code = status[0]
        os.write(status_fd, f"signal {os.WTERMSIG(code)}".encode() if os.WIFSIGNALED(code)
                 else f"exit {os.WEXITSTATUS(code)}".encode())
    return 0


def keep(folder: str) -> int:
    while os.read(0, 512):  # nothing is ever sent: this only waits for the end of the lifeline
        pass
    for _ in range(REMOVE_TRIES):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            break
        time.sleep(REMOVE_PAUSE_S)
    return 0


def main(args: list[str]) -> int:
    if args[:1] == ["run"] and len(args) >= 3:
        return run(int(args[1]), args[2:])
    if args[:1] == ["keep"] and len(args) == 2:
        return keep(args[1])
    os.write(2, b"usage: reaper.py run STATUS_FD ARGV... | keep FOLDER\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
