"""Mutation limits: what a candidate changed versus its baseline, and whether that is allowed.

Checked in this order, the first broken rule becoming the rejection reason: max_bytes (by stat, before any
content is read), protected files, links escaping the sandbox, changes outside `artifacts`, max_files,
max_lines.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Rejected, Unchanged
from .sandbox import (IGNORED_ANYWHERE, IGNORED_TOP, Content, Digests, FileState, Link, Manifest, file_digest,
                      read_content)
from .task import Task

SHOWN_PATHS = 3  # paths named in a reason before "(+N more)"


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # added | changed | deleted
    lines: int  # lines added + removed (unified diff)


@dataclass(frozen=True)
class Verdict:
    changes: tuple[Change, ...]  # artifact changes versus the baseline
    candidate: dict[str, Content | None]  # new content of each changed artifact path (None: deleted)
    violation: str | None = None
    outside: tuple[str, ...] = field(default=())

    @property
    def files_changed(self) -> int:
        return len(self.changes)

    @property
    def lines_changed(self) -> int:
        return sum(c.lines for c in self.changes)


def count_lines(old: Content | None, new: Content | None) -> int:
    """Lines added + removed, as a unified diff would count them (difflib's matching)."""
    def lines(content: Content | None) -> list[str] | list[bytes]:
        if content is None:
            return []
        if isinstance(content, Link):
            return [content.target]
        try:
            # keepends: a changed line ending or a newline added at the end is a changed line, as in diff
            return content.decode("utf-8").splitlines(keepends=True)
        except UnicodeDecodeError:
            return content.split(b"\n")
    a, b = lines(old), lines(new)
    if type(old) is not type(new) and old is not None and new is not None:
        return len(a) + len(b)  # a file became a link or the reverse: everything changed
    if a and b and type(a[0]) is not type(b[0]):  # text <-> binary
        return len(a) + len(b)
    matcher = difflib.SequenceMatcher(None, a, b)
    return sum((i2 - i1) + (j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def diff_artifacts(baseline: Mapping[str, Content], candidate: Mapping[str, Content]) -> list[Change]:
    changes = []
    for rel in sorted(set(baseline) | set(candidate)):
        old, new = baseline.get(rel), candidate.get(rel)
        if old == new:
            continue
        kind = "added" if old is None else "deleted" if new is None else "changed"
        changes.append(Change(rel, kind, count_lines(old, new)))
    return changes


def escapes(root: Path, rel: str, link: Link, never_copied: Iterable[Path] = ()) -> bool:
    """Whether a link at root/rel (root: the workspace) points out of what a sandbox of root holds: absolute,
    climbing out with .., into a folder a sandbox never holds (the engine's storage wherever it lies, work/,
    version control, virtual environments), or through a link of the workspace to any of these. Judged
    against the workspace, not the sandbox: the sandbox lacks exactly those folders, so a link into them
    dangles harmlessly there and reaches them once a keep puts it in the workspace."""
    if os.path.isabs(link.target):
        return True
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), link.target))
    if lexical == ".." or lexical.startswith("../"):
        return True
    parts = lexical.split("/")
    if parts[0] in IGNORED_TOP or any(part in IGNORED_ANYWHERE for part in parts):
        return True
    if any(os.path.exists(os.path.join(root, *parts[:k], "pyvenv.cfg")) for k in range(1, len(parts) + 1)):
        return True  # a virtual environment of any name, which sandboxes leave out too
    real_root = os.path.realpath(root)
    banned = [os.path.realpath(path) for path in never_copied]
    for target in (os.path.join(root, lexical), os.path.join(root, os.path.dirname(rel), link.target)):
        resolved = os.path.realpath(target)  # through the workspace's own links, as the OS would follow them
        if not _within(resolved, real_root) or any(_within(resolved, path) for path in banned):
            return True
    return False


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def judge(task: Task, changes: list[Change], candidate: dict[str, Content | None], *, protected: list[str],
          escaping: list[str], outside: list[str]) -> Verdict:
    def named(paths: list[str]) -> str:
        more = f" (+{len(paths) - SHOWN_PATHS} more)" if len(paths) > SHOWN_PATHS else ""
        return ", ".join(paths[:SHOWN_PATHS]) + more

    violation = None
    files, lines = len(changes), sum(c.lines for c in changes)
    if protected:
        violation = f"protected file changed: {named(protected)}"
    elif escaping:
        violation = f"link points outside the sandbox: {named(escaping)}"
    elif outside:
        violation = f"changed outside artifacts: {named(outside)}"
    elif task.max_files is not None and files > task.max_files:
        violation = f"{files} files changed > max_files {task.max_files}: {named([c.path for c in changes])}"
    elif task.max_lines is not None and lines > task.max_lines:
        violation = f"{lines} lines changed > max_lines {task.max_lines}"
    return Verdict(tuple(changes), candidate, violation, tuple(outside))


def check_sandbox(task: Task, sandbox: Path, before: Manifest, after: Manifest, digests: Digests,
                  baseline: Mapping[str, Content], rootdir: Path, never_copied: Iterable[Path] = ()) -> Verdict:
    """Judge a mutator's work by content: (size, mtime) is the mutator's to forge (a same-size rewrite with its
    mtime put back), bytes are not. Every path outside the artifacts (protected files included) is compared with
    the content hash taken while it was copied in (`digests`): a change of size or kind needs no reading, a
    file of the same size is hashed a chunk at a time. Changed artifacts are read only once their sizes, by
    stat, are within mutation.max_bytes, so a huge file is rejected unread."""
    protected, escaping, outside = [], [], []
    changed_artifacts = []
    for rel in sorted(set(before) | set(after)):
        old, new = before.get(rel), after.get(rel)
        if task.is_artifact(rel):
            # an artifact that keeps its (size, mtime) is the baseline's: even if forged, those bytes are not the
            # candidate's, and the runner scores a fresh copy made of the candidate as read here
            if old != new:
                changed_artifacts.append(rel)
            continue
        if old == new if isinstance(new, Link) else _same_file(sandbox / rel, old, new, digests.get(rel)):
            continue
        (protected if task.is_protected(rel) else outside).append(rel)
    if (too_large := _over_max_bytes(task, after, changed_artifacts)) is not None:
        return Verdict((), {}, too_large)
    candidate_artifacts = dict(baseline)
    for rel in changed_artifacts:
        content = read_content(sandbox, rel, limit=task.max_bytes)
        if content is None:
            candidate_artifacts.pop(rel, None)
            continue
        if isinstance(content, bytes) and len(content) > task.max_bytes:  # grew after its stat
            return Verdict((), {}, f"{rel}: more than mutation.max_bytes {task.max_bytes:,} bytes")
        candidate_artifacts[rel] = content
        if isinstance(content, Link) and escapes(rootdir, rel, content, never_copied):
            escaping.append(rel)
    changes = diff_artifacts(baseline, candidate_artifacts)
    new_content = {c.path: candidate_artifacts.get(c.path) for c in changes}
    return judge(task, changes, new_content, protected=protected, escaping=escaping, outside=outside)


def _same_file(path: Path, old: FileState | None, new: FileState | None, digest: bytes | None) -> bool:
    """Whether a file outside the artifacts holds the bytes it was copied in with."""
    if old is None or new is None or isinstance(old, Link) or isinstance(new, Link):
        return False  # added, deleted, or a file that became a link or the reverse
    if old[0] != new[0]:
        return False  # another size: changed, and nothing to read
    return digest is not None and file_digest(path) == digest


def _over_max_bytes(task: Task, after: Manifest, changed: list[str]) -> str | None:
    """The rejection reason when the changed artifact files, by their stat sizes, hold more than max_bytes."""
    sizes = {rel: state[0] for rel in changed
             if (state := after.get(rel)) is not None and not isinstance(state, Link)}
    total = sum(sizes.values())
    if total <= task.max_bytes:
        return None
    largest = sorted(sizes, key=lambda rel: -sizes[rel])
    named = ", ".join(f"{rel} ({sizes[rel]:,})" for rel in largest[:SHOWN_PATHS])
    more = f" (+{len(largest) - SHOWN_PATHS} more)" if len(largest) > SHOWN_PATHS else ""
    return f"{total:,} bytes in changed files > mutation.max_bytes {task.max_bytes:,}: {named}{more}"


def enforce(verdict: Verdict) -> Verdict:
    """The change set, when there is something to run: Rejected for a broken limit, Unchanged for no change."""
    if verdict.violation is not None:
        raise Rejected(verdict.violation)
    if not verdict.changes:
        raise Unchanged("no change")
    return verdict
