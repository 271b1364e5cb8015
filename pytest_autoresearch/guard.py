"""The workspace's protected files between iterations: hashed by content as each iteration begins and compared
with the hashes recorded when the task's last iteration landed (before its first landing, as its first
iteration began); a protected file changed, added or removed since then stops the task, before anything runs.
Each copy the iteration makes of the workspace is held to the hashes checked, so a forgery made while it runs
is never scored either.

Why: the candidate's checks compare a sandbox with the workspace it was copied from. Without isolation a mutator
can find the real workspace (a parent's working folder, /proc/<ppid>/cwd) and rewrite prepare.py there; those
checks would not see it, and every later sandbox would copy the forgery.

A new git HEAD is the user's decision: the hashes are recorded afresh. The engine's own commits of keeps are no
such decision (a keep changes artifacts only). The landing records the hashes its iteration checked, never the
workspace as it is then: a forgery made during the iteration would otherwise become the reference."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .attempt import Attempt
from .engine import Engine
from .errors import Rejected
from .files import write_atomic
from .results import Record
from .sandbox import Digests, Link, Manifest, file_digest
from .task import Task
from .workspace import content_sha, git_head


@dataclass(frozen=True)
class Checked:
    """The workspace's protected files as an iteration began, found unchanged: what its copies must hold."""
    hashes: dict[str, str]  # repo-relative path -> content hash (workspace.content_sha)
    head: str | None  # git HEAD then


@dataclass(frozen=True)
class Recorded:
    hashes: dict[str, str]
    head: str | None
    iteration: int  # the landing that recorded them; else the task's last iteration before they were recorded


class ProtectedState:
    """work/autoresearch/protected/<task>.json: the hashes the task's protected files must still have."""

    def __init__(self, state_dir: Path, task: str) -> None:
        self.path = state_dir / "protected" / f"{task}.json"

    def load(self) -> Recorded | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Recorded(dict(data["files"]), data["head"], int(data["iteration"]))
        except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable as if removed: recorded afresh
            return None

    def save(self, recorded: Recorded) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"files": dict(sorted(recorded.hashes.items())), "head": recorded.head,
                                            "iteration": recorded.iteration}))


def workspace_hashes(engine: Engine, task: Task) -> dict[str, str]:
    """The content hash of every protected file in the workspace, as the sandboxes copy it (the storage left
    out), reading only those files."""
    hashes = {}
    for rel in engine.paths_in(task.protected, task.rootdir):
        if task.is_protected(rel) and (found := path_hash(task.rootdir, rel)) is not None:
            hashes[rel] = found
    return hashes


def path_hash(root: Path, rel: str) -> str | None:
    """root/rel's content hash (a link by its target), read a chunk at a time; None for nothing or a folder."""
    path = root / rel
    if path.is_symlink():
        return content_sha(Link(os.readlink(path)))
    digest = file_digest(path)
    return digest.hex() if digest is not None else None


def check(engine: Engine, task: Task) -> tuple[Checked, str | None]:
    """The workspace's protected files now, and why the task stops (None: it goes on). Recorded here when there
    is no record yet, or when git HEAD moved since (the user committed; no HEAD to be read is no new one)."""
    now = Checked(workspace_hashes(engine, task), git_head(task.rootdir))
    state = ProtectedState(engine.storage.state_dir, task.name)
    recorded = state.load()
    if recorded is None or (now.head is not None and recorded.head != now.head):
        state.save(Recorded(now.hashes, now.head, engine.storage.results.last_iteration(task.name)))
        return now, None
    if not (names := changed(recorded.hashes, now.hashes)):
        return now, None
    since = (f"the last landing (iteration {recorded.iteration})" if recorded.iteration
             else "the task's first iteration began")
    them = "it" if len(names) == 1 else "them"
    return now, (f"protected file{'s' if len(names) > 1 else ''} {', '.join(names)} changed in the workspace since "
                 f"{since}: the task stops; if you changed {them} on purpose, commit {them} or remove "
                 f"{engine.shown(state.path)}")


def changed(expected: dict[str, str], found: dict[str, str]) -> list[str]:
    """The paths whose hashes differ, a path found only now marked (new) and one no longer found (removed)."""
    return [rel + (" (new)" if rel not in expected else " (removed)" if rel not in found else "")
            for rel in sorted(set(expected) | set(found)) if expected.get(rel) != found.get(rel)]


def copy_hashes(task: Task, copy: Path, manifest: Manifest, digests: Digests | None = None) -> dict[str, str]:
    """The content hash of every protected file of a copy of the workspace (copy_tree's manifest of it, and the
    digests it took while copying, when it took them)."""
    found = {}
    for rel, state in manifest.items():
        if not task.is_protected(rel):
            continue
        if isinstance(state, Link):
            found[rel] = content_sha(state)
        elif digests is not None and rel in digests:
            found[rel] = digests[rel].hex()
        elif (hashed := path_hash(copy, rel)) is not None:
            found[rel] = hashed
    return found


def check_copy(checked: Checked | None, found: dict[str, str]) -> None:
    """Rejected unless a copy the iteration made of the workspace holds the protected files it checked as it
    began (nothing to hold it to when it checked none): one that differs was forged meanwhile, and is not run."""
    if checked is None or not (names := changed(checked.hashes, found)):
        return
    if len(names) == 1:
        raise Rejected(f"protected file {names[0]} changed in the workspace during the iteration: its copy is not "
                       f"the file checked as the iteration began")
    raise Rejected(f"protected files {', '.join(names)} changed in the workspace during the iteration: their "
                   f"copies are not the files checked as the iteration began")


def record_landing(engine: Engine, task: Task, attempt: Attempt, record: Record) -> None:
    """After the attempt's record is appended: the hashes its iteration checked become the reference, with its
    git HEAD, or the engine's own commit of it. An attempt begun under an older HEAD than the one recorded since
    leaves the newer hashes as they are. Under xdist this runs on the controller, from the attempt's data."""
    if attempt.protected is None:  # made where the workspace is not this one (a Ray node's copy): nothing checked
        return
    state = ProtectedState(engine.storage.state_dir, task.name)
    recorded = state.load()
    newer = recorded is not None and recorded.head != attempt.head
    hashes = recorded.hashes if newer else attempt.protected
    head = record.commit or (recorded.head if newer else attempt.head)
    state.save(Recorded(hashes, head, record.iteration))
