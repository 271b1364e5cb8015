"""Mutation limits: what a candidate changed versus its baseline, and whether that is allowed.

Checked in this order, the first broken rule becoming the rejection reason:
protected files, links escaping the sandbox, changes outside `artifacts`, max_files, max_lines.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Rejected, Unchanged
from .sandbox import Content, Link, Manifest, read_content
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


def escapes(root: Path, rel: str, link: Link) -> bool:
    """Whether a link at root/rel points outside root (absolute, or climbing out with ..)."""
    target = os.path.normpath(os.path.join(os.path.dirname(os.path.join(root, rel)), link.target))
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(target)
    return not (resolved == real_root or resolved.startswith(real_root + os.sep)) or os.path.isabs(link.target)


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


def check_sandbox(task: Task, sandbox: Path, before: Manifest, after: Manifest,
                  baseline: Mapping[str, Content], rootdir: Path) -> Verdict:
    """Judge a mutator's work: every path whose state moved is a change unless its bytes are as before. Protected
    files are compared by content whatever their state says: (size, mtime) is the mutator's to forge (a same-size
    rewrite with its mtime put back), and they are few."""
    touched = [rel for rel in sorted(set(before) | set(after))
               if before.get(rel) != after.get(rel) or task.is_protected(rel)]
    protected, escaping, outside = [], [], []
    candidate_artifacts = dict(baseline)
    for rel in touched:
        new = read_content(sandbox, rel) if rel in after else None
        if task.is_artifact(rel):
            if new is None:
                candidate_artifacts.pop(rel, None)
            else:
                candidate_artifacts[rel] = new
        elif new is not None and new == read_content(rootdir, rel):
            continue  # touched (mtime moved) but byte-identical to the repository
        elif task.is_protected(rel):
            protected.append(rel)
        else:
            outside.append(rel)
        if isinstance(new, Link) and escapes(sandbox, rel, new):
            escaping.append(rel)
    changes = diff_artifacts(baseline, candidate_artifacts)
    new_content = {c.path: candidate_artifacts.get(c.path) for c in changes}
    return judge(task, changes, new_content, protected=protected, escaping=escaping, outside=outside)


def enforce(verdict: Verdict) -> Verdict:
    """The change set, when there is something to run: Rejected for a broken limit, Unchanged for no change."""
    if verdict.violation is not None:
        raise Rejected(verdict.violation)
    if not verdict.changes:
        raise Unchanged("no change")
    return verdict
