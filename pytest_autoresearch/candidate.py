"""Steps 1 and 2, sandbox and candidate, from one of two sources feeding the same pipeline:

- MutatorSource: a command edits a private copy of the repository; the candidate is what it left there.
- WorkspaceSource (`mutator: workspace`): the candidate is the edit already in the workspace; the baseline is
  the last kept state (a snapshot under the storage, else git HEAD, else the workspace as found).

Each gives the sandbox and the baseline (start), then makes the candidate (make) and says what it changed (the
change set that limits.enforce judges)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .engine import Engine
from .guard import Checked, check_copy, copy_hashes
from .isolation import command_wrapper, storage_paths
from .landing import Landing
from .limits import Verdict, check_sandbox, diff_artifacts, escapes, judge
from .policies import BASE_SEED
from .process import run_logged
from .sandbox import Content, Digests, Link, Manifest, copy_tree, hash_contents, read_contents, scan
from .task import Task
from .workspace import Snapshot, apply_contents, git_head, git_head_contents, protected_hashes

DESCRIPTION_MAX_CHARS = 300


@dataclass(frozen=True)
class Start:
    """The sandbox as copied, and the baseline a candidate is judged against."""
    sandbox: Path
    manifest: Manifest  # the sandbox's files as copied: a mutator's edits show against it
    baseline: dict[str, Content]
    baseline_hash: str
    baseline_from: str | None = None  # workspace: "git HEAD <sha>" when a new commit became the baseline
    protected_then: dict[str, str] | None = None  # workspace: protected hashes stored with the baseline
    head: str | None = None  # workspace: git HEAD now
    digests: Digests | None = None  # mutator: the content hash of each file as copied in


@dataclass(frozen=True)
class Made:
    description: str | None  # None: the source wrote none (the session's AUTORESEARCH_DESCRIPTION stands)
    mutator_s: float = 0.0
    failure: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    verdict: Verdict  # limits' judgement of what changed
    candidate: dict[str, Content]  # the candidate's artifacts, whole
    snapshot: tuple[dict[str, Content], dict[str, str], str | None] | None = None  # workspace: a keep's new baseline

    @property
    def candidate_hash(self) -> str:
        return hash_contents(self.candidate)


def never_copied(engine: Engine) -> list[Path]:
    """The engine's folders, which no sandbox holds: a candidate's link must not point into them."""
    return [engine.storage.root, engine.storage.results.path.parent]


class MutatorSource:
    def __init__(self, engine: Engine, task: Task, scratch: Path, checked: Checked | None = None) -> None:
        self.engine, self.task, self.scratch = engine, task, scratch
        self.checked = checked  # the protected files every copy of the workspace must hold (guard.py)
        self.description_file = scratch / "description.txt"

    def start(self) -> Start:
        engine, task = self.engine, self.task
        sandbox = self.scratch / "sandbox"
        digests: Digests = {}
        with engine.storage.lock(f"task-{task.name}"):  # never copy the workspace while a keep is landing
            Landing(engine).recover(task)
            manifest = copy_tree(task.rootdir, sandbox, engine.storage_in_tree, digests)
        check_copy(self.checked, copy_hashes(task, sandbox, manifest, digests))
        baseline = read_contents(sandbox, [rel for rel in manifest if task.is_artifact(rel)])
        return Start(sandbox, manifest, baseline, hash_contents(baseline), digests=digests)

    def make(self, start: Start, iteration: int, baseline_score: float | None, log: BinaryIO,
             extra_env: dict[str, str]) -> Made:
        task = self.task
        env = self.engine.env(task, iteration, baseline_score, BASE_SEED + iteration, start.sandbox,
                              {**extra_env, "AUTORESEARCH_DESCRIPTION_FILE": str(self.description_file)})
        log.write(f"[autoresearch] mutator: {task.mutator_command}\n".encode())
        result = run_logged(task.mutator_command, start.sandbox, env, task.mutator_timeout, log,
                            command_wrapper(task.mutator_isolation, task.rootdir, start.sandbox,
                                            storage_paths(self.engine.storage), [self.description_file], env))
        description = None
        if self.description_file.is_file():
            lines = self.description_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            description = lines[0].strip()[:DESCRIPTION_MAX_CHARS] if lines else ""
        return Made(description, round(result.seconds, 3), result.failure("mutator", task.mutator_timeout))

    def change_set(self, start: Start) -> ChangeSet:
        verdict = check_sandbox(self.task, start.sandbox, start.manifest, scan(start.sandbox), start.digests or {},
                                start.baseline, self.task.rootdir, never_copied(self.engine))
        candidate = {**start.baseline, **{k: v for k, v in verdict.candidate.items() if v is not None}}
        for rel in [k for k, v in verdict.candidate.items() if v is None]:
            candidate.pop(rel, None)
        return ChangeSet(verdict, candidate)

    def runnable(self, start: Start, change_set: ChangeSet) -> Path:
        """A fresh copy of the checked candidate for the runner: the workspace copied again, the candidate's
        artifacts written from the bytes that were checked. Never the sandbox the mutator wrote, which a
        helper it left behind could still change after the checks; that one is removed first, and the new
        copy's path did not exist while the mutator ran. Its protected files must be those checked as the
        iteration began: the mutator may have found the workspace and rewritten one there."""
        engine, task = self.engine, self.task
        shutil.rmtree(start.sandbox, ignore_errors=True)
        fresh = self.scratch / "candidate"
        with engine.storage.lock(f"task-{task.name}"):
            manifest = copy_tree(task.rootdir, fresh, engine.storage_in_tree)
        check_copy(self.checked, copy_hashes(task, fresh, manifest))
        present = read_contents(fresh, [rel for rel in manifest if task.is_artifact(rel)])
        apply_contents(fresh, {**{rel: None for rel in present if rel not in change_set.candidate},
                               **{rel: c for rel, c in change_set.candidate.items() if present.get(rel) != c}})
        return fresh


class WorkspaceSource:
    """The caller holds the task lock from start to landing: the workspace is the one candidate."""

    def __init__(self, engine: Engine, task: Task, scratch: Path, checked: Checked | None = None) -> None:
        self.engine, self.task, self.scratch = engine, task, scratch
        self.checked = checked  # the protected files the copy of the workspace must hold (guard.py)

    def start(self) -> Start:
        engine, task = self.engine, self.task
        sandbox = self.scratch / "sandbox"
        Landing(engine).recover(task)
        manifest = copy_tree(task.rootdir, sandbox, engine.storage_in_tree)
        found = read_contents(sandbox, [rel for rel in manifest if task.is_artifact(rel)])
        protected_now = self._protected(start_manifest=manifest, sandbox=sandbox)
        check_copy(self.checked, protected_now)
        snapshot = Snapshot(engine.storage.state_dir, task)
        saved, head, baseline_from = snapshot.load(), git_head(task.rootdir), None
        if saved is None or (head is not None and saved[2] != head):
            # first run, or the user committed since the last one (a new HEAD is a new baseline): HEAD's state,
            # else the workspace as found; protected files HEAD lacks (untracked data, caches) count as they are now
            if saved is not None:
                baseline_from = f"git HEAD {head[:12]}"
            baseline, head_protected = git_head_contents(task) or (found, protected_now)
            saved = (baseline, {**protected_now, **head_protected}, head)
            snapshot.save(*saved)
        baseline, protected_then, _ = saved
        return Start(sandbox, manifest, baseline, hash_contents(baseline), baseline_from, protected_then, head)

    def _protected(self, start_manifest: Manifest, sandbox: Path) -> dict[str, str]:
        return protected_hashes(self.task, read_contents(sandbox, [rel for rel in start_manifest
                                                                   if self.task.is_protected(rel)]))

    def make(self, start: Start, iteration: int, baseline_score: float | None, log: BinaryIO,
             extra_env: dict[str, str]) -> Made:
        return Made(None)  # the edit is already made

    def runnable(self, start: Start, change_set: ChangeSet) -> Path:
        return start.sandbox  # no command ran in it: the copy of the workspace is the candidate as checked

    def change_set(self, start: Start) -> ChangeSet:
        task = self.task
        candidate = read_contents(start.sandbox, [rel for rel in start.manifest if task.is_artifact(rel)])
        protected_now = self._protected(start.manifest, start.sandbox)
        protected_then = start.protected_then or {}
        changes = diff_artifacts(start.baseline, candidate)
        protected = sorted(rel for rel in set(protected_then) | set(protected_now)
                           if protected_then.get(rel) != protected_now.get(rel))
        escaping = [c.path for c in changes if isinstance(link := candidate.get(c.path), Link)
                    and escapes(task.rootdir, c.path, link, never_copied(self.engine))]
        verdict = judge(task, changes, {c.path: candidate.get(c.path) for c in changes},
                        protected=protected, escaping=escaping, outside=[])
        return ChangeSet(verdict, candidate, (candidate, protected_now, start.head))
