"""The one folder that holds every file the engine writes (default `work/` of the folder tasks run in):
results.jsonl and its state files, logs and diffs, locks, workspace baselines, journals. It moves as a whole
with --autoresearch-dir, or with --autoresearch-results (then the results file's folder is the storage)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from .errors import naming
from .files import remove_dead_temp_files
from .sandbox import Content, Link
from .results import ResultsStore

DEFAULT_DIR = "work"
RESULTS_NAME = "results.jsonl"
ITERATION_LOG = re.compile(r"^(\d+)\.log$")


class Storage:
    def __init__(self, root: Path, results: Path | None = None, session: str = "") -> None:
        self.root = Path(root)
        self.results = ResultsStore(results if results is not None else self.root / RESULTS_NAME, session)
        self.state_dir = self.root / "autoresearch"  # locks, workspace baselines, journals
        self.logs_dir = self.root / "logs"  # <task>/<iteration>.log and .diff, baseline logs

    def lock(self, name: str) -> FileLock:
        path = self.state_dir / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def check_writable(self) -> None:
        """StorageUnwritable unless records, state files and logs can be written (see ResultsStore)."""
        self.results.check_writable()

    def remove_dead_temp_files(self) -> None:
        """Temp files of state files left by a killed session (a live worker's are kept: their writer runs)."""
        for folder in {self.root, self.results.path.parent}:
            remove_dead_temp_files(folder.rglob(".*.tmp") if folder.is_dir() else [])

    def reserve_iteration(self, task: str) -> int:
        """The task's next iteration number: past every recorded, handed-out and logged one, so that a fresh
        results file (or lost counters) never restarts the numbering over the logs of earlier sessions."""
        return self.results.reserve_iteration(task, after=self._last_logged(task))

    def _last_logged(self, task: str) -> int:
        folder = self.logs_dir / task
        names = os.listdir(folder) if folder.is_dir() else []
        return max((int(m.group(1)) for name in names if (m := ITERATION_LOG.match(name))), default=0)

    def iteration_log(self, task: str, iteration: int) -> Path:
        return self._create(self.logs_dir / task / f"{iteration}.log")

    def baseline_log(self, task: str, stem: str) -> Path:
        """A new log for a baseline run: `<stem>.log`, or `<stem>.2.log`, ... when an earlier session's (the same
        content scored again, e.g. after a fresh results file) holds the name: logs are never overwritten."""
        return self._create(self.logs_dir / task / f"{stem}.log")

    @staticmethod
    def write_diff(log: Path, old: Mapping[str, Content], new: Mapping[str, Content]) -> None:
        """<iteration>.diff beside the iteration's log: what the candidate changed, kept or not (text files only)."""
        def text(content: Content | None) -> list[str]:
            if content is None:
                return []
            if isinstance(content, Link):
                return [f"-> {content.target}\n"]
            try:
                return content.decode("utf-8").splitlines(keepends=True)
            except UnicodeDecodeError:
                return ["(binary)\n"]
        chunks = []
        for rel in sorted(set(old) | set(new)):
            if old.get(rel) != new.get(rel):
                chunks.extend(difflib.unified_diff(text(old.get(rel)), text(new.get(rel)), f"a/{rel}", f"b/{rel}"))
        path = log.with_suffix(".diff")
        with naming(path):
            path.write_text("".join(chunks), encoding="utf-8")

    @staticmethod
    def _create(path: Path) -> Path:
        """Create path empty, or the first free `<name>.<k><suffix>` beside it; never an existing file."""
        with naming(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            stem, suffix, k = path.name[:-len(path.suffix)], path.suffix, 1
            while True:
                candidate = path if k == 1 else path.with_name(f"{stem}.{k}{suffix}")
                try:
                    os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                    return candidate
                except FileExistsError:
                    k += 1
