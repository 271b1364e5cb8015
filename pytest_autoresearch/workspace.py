"""The workspace (the real repository): atomic application of kept candidates, baseline snapshots
for `mutator: workspace`, and git (HEAD as a baseline, commits of keeps)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import naming
from .files import process_alive, temp_prefix, write_atomic
from .sandbox import Content, Link
from .task import Task


def apply_contents(root: Path, contents: Mapping[str, Content | None]) -> None:
    """Write every path's new content (None: delete) so that root is never left half-applied:
    all new files are staged as temp files first (any failure removes them and changes nothing),
    then each is renamed over its target, then deletions run. An OSError names the target file."""
    staged: list[tuple[Path, Path]] = []
    try:
        for rel, content in sorted(contents.items()):
            if content is None:
                continue
            target = root / rel
            with naming(target, instead=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(temp_prefix(target) + "apply.tmp")
                if isinstance(content, Link):
                    os.symlink(content.target, tmp)
                else:
                    tmp.write_bytes(content)
                    if target.exists() and not target.is_symlink():
                        os.chmod(tmp, target.stat().st_mode & 0o7777)
            staged.append((tmp, target))
        for k, (tmp, target) in enumerate(staged):
            with naming(target, instead=True):  # e.g. an immutable file, or a folder where a file should go
                os.replace(tmp, target)
            staged[k] = (target, target)  # landed: nothing left to remove
    except BaseException:
        for tmp, target in staged:
            if tmp != target:
                tmp.unlink(missing_ok=True)
        raise
    for rel, content in contents.items():
        if content is None:
            with naming(root / rel):
                (root / rel).unlink(missing_ok=True)


def content_sha(content: Content) -> str:
    """sha256 of a file's bytes, or of a link's target (as `link:<target>`), in hex."""
    blob = b"link:" + content.target.encode() if isinstance(content, Link) else content
    return hashlib.sha256(blob).hexdigest()


def encode_contents(contents: Mapping[str, Content | None]) -> dict[str, Any]:
    """Contents as JSON: bytes in base64, a link as its target, a deletion as null."""
    return {rel: None if c is None else {"link": c.target} if isinstance(c, Link) else {"b64": base64.b64encode(c).decode()}
            for rel, c in sorted(contents.items())}


def decode_contents(data: Mapping[str, Any]) -> dict[str, Any]:
    return {rel: None if v is None else Link(v["link"]) if "link" in v else base64.b64decode(v["b64"])
            for rel, v in data.items()}


# ----------------------------------------------------------------------------
# A verdict landing in the workspace, written ahead: survives kill -9 at any instant


class Journal:
    """work/autoresearch/journal/<task>-<iteration>.json: the record a verdict will append and the contents it
    writes into the workspace, written (atomically) before the first file is replaced and removed once the
    record is in results.jsonl. One left behind by a dead process is rolled forward: the contents land, the
    record is appended if it is missing. So after any kill the workspace is the baseline or the candidate,
    and every landed keep has its record."""

    def __init__(self, state_dir: Path, task: str, iteration: int) -> None:
        self.path = state_dir / "journal" / f"{task}-{iteration}.json"

    @staticmethod
    def leftovers(state_dir: Path, task: str) -> Iterator[tuple[Path, dict[str, Any], dict[str, Content | None],
                                                                 dict[str, Content | None], tuple | None]]:
        """(path, record, contents, before, snapshot) of each journal of this task whose writer is no longer
        running (killed before it could remove it)."""
        folder = state_dir / "journal"
        for path in sorted(folder.glob(f"{task}-*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):  # write_atomic never leaves half a file: unreadable is foreign
                continue
            if process_alive(int(data.get("pid", 0))):
                continue
            snap = data.get("snapshot")
            snapshot = (decode_contents(snap["files"]), snap["protected"], snap["head"]) if snap else None
            yield path, data["record"], decode_contents(data["contents"]), decode_contents(data["before"]), snapshot

    def write(self, record: dict[str, Any], contents: Mapping[str, Content | None], before: Mapping[str, Content | None],
              snapshot: tuple[Mapping[str, Content], Mapping[str, str], str | None] | None = None) -> None:
        """before: what those paths hold now (recovery replaces only files still as they were, or half-way);
        snapshot: the workspace-mode baseline to store with it (files, protected hashes, git HEAD)."""
        data = {"pid": os.getpid(), "record": record, "contents": encode_contents(contents),
                "before": encode_contents(before)}
        if snapshot is not None:
            files, protected, head = snapshot
            data["snapshot"] = {"files": encode_contents(files), "protected": dict(protected), "head": head}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Workspace-mode baseline: the last kept state, one JSON file written atomically


class Snapshot:
    """work/autoresearch/baselines/<task>.json: the artifacts' content, the protected files' hashes, and the git
    HEAD it was taken at (a HEAD that moved since means the user committed a new baseline)."""

    def __init__(self, state_dir: Path, task: Task) -> None:
        self.path = state_dir / "baselines" / f"{task.name}.json"

    def load(self) -> tuple[dict[str, Content], dict[str, str], str | None] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return decode_contents(data["files"]), dict(data["protected"]), data.get("head")

    def save(self, files: Mapping[str, Content], protected: Mapping[str, str], head: str | None) -> None:
        data = {"files": encode_contents(files), "protected": dict(sorted(protected.items())), "head": head}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data))

    def forget(self) -> bool:
        """--autoresearch-reset: drop the snapshot, so the next run takes its baseline from git HEAD again."""
        existed = self.path.exists()
        self.path.unlink(missing_ok=True)
        return existed


def protected_hashes(task: Task, contents: Mapping[str, Content]) -> dict[str, str]:
    return {rel: content_sha(c) for rel, c in contents.items() if task.is_protected(rel)}


# ----------------------------------------------------------------------------
# git


def _git(root: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True, check=False)


def git_head(root: Path) -> str | None:
    """The commit HEAD names, or None outside a repository with commits (or where git is not installed: a
    mutator-mode task needs no git)."""
    try:
        proc = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    except FileNotFoundError:
        return None
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def git_head_contents(task: Task) -> tuple[dict[str, Content], dict[str, str]] | None:
    """Artifacts and protected hashes as of git HEAD, or None outside a repository with commits."""
    root = task.rootdir
    listing = _git(root, "ls-tree", "-r", "-z", "HEAD")
    if listing.returncode != 0:
        return None
    files: dict[str, Content] = {}
    protected: dict[str, str] = {}
    for entry in listing.stdout.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.partition(b"\t")
        rel = name.decode()
        if not (task.is_artifact(rel) or task.is_protected(rel)):
            continue
        mode, _, obj = meta.decode().split(" ")
        blob = _git(root, "cat-file", "blob", obj).stdout
        content: Content = Link(blob.decode()) if mode == "120000" else blob
        if task.is_artifact(rel):
            files[rel] = content
        else:
            protected[rel] = content_sha(content)
    return (files, protected) if files else None  # artifacts never committed: HEAD is no baseline


def git_commit(root: Path, paths: list[str], message: str) -> tuple[str | None, str | None]:
    """Commit exactly `paths` (additions, changes, deletions); (commit hash, None) or (None, why not)."""
    for step, args in (("add", ("add", "-A", "--", *paths)), ("commit", ("commit", "-q", "-m", message, "--", *paths))):
        proc = _git(root, *args)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            return None, f"git {step} failed: " + (lines[-1] if lines else f"exit {proc.returncode}")
    head = _git(root, "rev-parse", "HEAD").stdout.decode().strip()
    return head, None
