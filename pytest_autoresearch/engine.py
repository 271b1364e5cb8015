"""Engine: the per-session context every step of an iteration reads: where tasks run, the storage, this
process's worker id, whether keeps are committed; and what derives from it alone (paths as shown, the
artifacts under a root, a subprocess's environment)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .sandbox import Content, read_contents, scan
from .storage import Storage
from .task import Task

WILDCARD = re.compile(r"[*?\[]")  # a glob part holding one of these is not a literal folder name


@dataclass(frozen=True)
class Engine:
    rootdir: Path
    storage: Storage  # every file the engine writes
    worker: str  # "main" or an xdist worker id
    commit: bool

    @property
    def storage_in_tree(self) -> frozenset[str]:
        """The storage folder, repo-relative, when it lies inside the repository: never copied into a sandbox."""
        try:
            return frozenset({self.storage.root.relative_to(self.rootdir).as_posix()})
        except ValueError:
            return frozenset()

    def shown(self, path: Path) -> str:
        """A path as records and reports show it: repo-relative when inside the repository."""
        try:
            return path.relative_to(self.rootdir).as_posix()
        except ValueError:
            return str(path)

    def artifacts_in(self, task: Task, root: Path) -> dict[str, Content]:
        """Current content of every artifact file under root, walking only the globs' literal folders."""
        return read_contents(root, self.paths_in(task.artifacts, root, task.is_artifact))

    def paths_in(self, globs: Iterable[str], root: Path, wanted: Callable[[str], bool] = lambda rel: True) -> list[str]:
        """matching_paths under root, less what a sandbox leaves out (the storage, when it lies in the tree)."""
        return [p for p in matching_paths(root, globs, wanted)
                if not any(p == s or p.startswith(s + "/") for s in self.storage_in_tree)]

    def env(self, task: Task, iteration: int, baseline_score: float | None, seed: int, sandbox: Path,
            extra: dict[str, str]) -> dict[str, str]:
        """A mutator's or runner's environment (USAGE's Environment table); iteration 0 while a baseline runs.
        AUTORESEARCH_RESULTS comes in `extra`: the iteration's export of the history, never the live file."""
        env = dict(os.environ)
        env.update(AUTORESEARCH_TASK=task.name, AUTORESEARCH_ITERATION=str(iteration), AUTORESEARCH_SEED=str(seed),
                   AUTORESEARCH_BASELINE_SCORE="" if baseline_score is None else repr(baseline_score),
                   AUTORESEARCH_TASK_FILE=str(self._in_sandbox(task.path, sandbox)),
                   AUTORESEARCH_ARTIFACTS=os.pathsep.join(task.artifacts),
                   AUTORESEARCH_PROTECTED=os.pathsep.join(task.protected),
                   AUTORESEARCH_MAX_FILES="" if task.max_files is None else str(task.max_files),
                   AUTORESEARCH_MAX_LINES="" if task.max_lines is None else str(task.max_lines))
        prompts = [task.prompt] if task.prompt is not None else [task.path.parent / "program.md",
                                                                 task.rootdir / "program.md"]
        for prompt in prompts:
            if prompt.is_file():
                env["AUTORESEARCH_PROMPT_FILE"] = str(self._in_sandbox(prompt, sandbox))
                break
        env.update(extra)
        return env

    def _in_sandbox(self, path: Path, sandbox: Path) -> Path:
        try:
            return sandbox / path.relative_to(self.rootdir)
        except ValueError:
            return path


def matching_paths(root: Path, globs: Iterable[str], wanted: Callable[[str], bool]) -> list[str]:
    """The paths under root that `globs` name and `wanted` takes, sorted, walking only the globs' literal
    folders; a plain path is taken as it is (it may not exist)."""
    paths: set[str] = set()
    for glob in globs:
        parts = glob.split("/")
        literal = []
        for part in parts:
            if WILDCARD.search(part):
                break
            literal.append(part)
        if len(literal) == len(parts) and not glob.endswith("/"):
            paths.add(glob)  # a plain path: no walk needed
        else:
            paths.update(scan(root, "/".join(p for p in literal if p)))
    return sorted(p for p in paths if wanted(p))
