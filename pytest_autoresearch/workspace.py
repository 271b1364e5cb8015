"""The workspace (the real repository): atomic application of kept candidates, baseline snapshots
for `mutator: workspace`, and git (HEAD as a baseline, commits of keeps)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .files import write_atomic
from .sandbox import Content, Link
from .task import Task


def apply_contents(root: Path, contents: Mapping[str, Content | None]) -> None:
    """Write every path's new content (None: delete) so that root is never left half-applied:
    all new files are staged as temp files first (any failure removes them and changes nothing),
    then each is renamed over its target, then deletions run."""
    staged: list[tuple[Path, Path]] = []
    try:
        for rel, content in sorted(contents.items()):
            if content is None:
                continue
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.autoresearch-{os.getpid()}.tmp")
            if isinstance(content, Link):
                os.symlink(content.target, tmp)
            else:
                tmp.write_bytes(content)
                if target.exists() and not target.is_symlink():
                    os.chmod(tmp, target.stat().st_mode & 0o7777)
            staged.append((tmp, target))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
    for rel, content in contents.items():
        if content is None:
            (root / rel).unlink(missing_ok=True)


def _sha(content: Content) -> str:
    blob = b"link:" + content.target.encode() if isinstance(content, Link) else content
    return hashlib.sha256(blob).hexdigest()


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
        files = {rel: Link(v["link"]) if "link" in v else base64.b64decode(v["b64"]) for rel, v in data["files"].items()}
        return files, dict(data["protected"]), data.get("head")

    def save(self, files: Mapping[str, Content], protected: Mapping[str, str], head: str | None) -> None:
        data = {"files": {rel: {"link": c.target} if isinstance(c, Link) else {"b64": base64.b64encode(c).decode()}
                          for rel, c in sorted(files.items())},
                "protected": dict(sorted(protected.items())), "head": head}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data))

    def forget(self) -> bool:
        """--autoresearch-reset: drop the snapshot, so the next run takes its baseline from git HEAD again."""
        existed = self.path.exists()
        self.path.unlink(missing_ok=True)
        return existed


def protected_hashes(task: Task, contents: Mapping[str, Content]) -> dict[str, str]:
    return {rel: _sha(c) for rel, c in contents.items() if task.is_protected(rel)}


# ----------------------------------------------------------------------------
# git


def _git(root: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True, check=False)


def git_head(root: Path) -> str | None:
    """The commit HEAD names, or None outside a repository with commits."""
    proc = _git(root, "rev-parse", "--verify", "-q", "HEAD")
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
            protected[rel] = _sha(content)
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
