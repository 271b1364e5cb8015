"""results.jsonl: one JSON object per line, appended under a file lock, never rewritten."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import StorageUnwritable, describe, naming
from .files import temp_prefix, write_atomic
from .signatures import Signer, verified

STATUSES = ("baseline", "keep", "discard", "crash", "rejected", "interrupted")


@dataclass
class Record:
    task: str
    iteration: int  # 0 for a baseline record
    status: str
    metric: str
    direction: str
    started_at: str  # ISO 8601, UTC
    worker: str  # "main" or an xdist id like "gw0"
    score: float | None = None  # mean over `scores`
    scores: list[float] = field(default_factory=list)
    baseline_score: float | None = None
    baseline_scores: list[float] = field(default_factory=list)
    baseline_hash: str | None = None
    candidate_hash: str | None = None
    files_changed: int = 0
    lines_changed: int = 0
    reason: str = ""
    description: str = ""
    log: str | None = None
    duration_s: float = 0.0
    mutator_s: float = 0.0
    runner_s: float = 0.0
    commit: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    statistic: dict[str, Any] | None = None
    gpu_wait_s: float = 0.0  # time spent waiting for a free GPU (more workers than GPUs)
    baseline_from: str | None = None  # workspace mode: "git HEAD <sha>" when a new commit reset the baseline
    session: str = ""  # the pytest run that appended it (ResultsStore stamps it): each summary counts its own
    node: str | None = None  # the Ray node that made the attempt ("<ip>/<node id>"); None: this machine

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=False, default=str)


def mean(scores: list[float]) -> float | None:
    # 12 significant digits: drops float noise like 1.3463336666666665 from the record, keeps any real digit
    return float(f"{sum(scores) / len(scores):.12g}") if scores else None


def read_records(path: Path, task: str | None = None,
                 on_bad_line: Callable[[int, str], None] | None = None,
                 signer: Signer | None = None, on_forged: Callable[[int, str], None] | None = None
                 ) -> list[dict[str, Any]]:
    """The JSON objects of results.jsonl (of `task` only, if given); [] for a missing file. Every other
    non-blank line (torn, hand-edited, not an object) is skipped and, if given, passed to on_bad_line with
    its 1-based number. With a signer, only the records the engine wrote count: any other line is passed to
    on_forged (see signatures.py)."""
    return [json.loads(body) for body in _record_lines(path, task, on_bad_line, signer, on_forged)]


def _record_lines(path: Path, task: str | None, on_bad_line: Callable[[int, str], None] | None,
                  signer: Signer | None, on_forged: Callable[[int, str], None] | None) -> list[bytes]:
    """The text of each record read_records returns, its signature left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    key = signer.key() if signer is not None else None
    seen: set[bytes] = set()
    out, offset = [], 0
    for number, line in enumerate(data.split(b"\n"), 1):  # "\n" only: U+2028 may sit inside a JSON string
        at, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            record = None
        shown = line[:200].decode("utf-8", errors="replace")
        if not isinstance(record, dict):
            if on_bad_line is not None:
                on_bad_line(number, shown)
        elif (body := verified(key, at, line, seen)) is None:
            if on_forged is not None:
                on_forged(number, shown)
        elif task is None or record.get("task") == task:
            out.append(body)
    return out


class ResultsStore:
    def __init__(self, path: Path, session: str = "") -> None:
        self.path = Path(path)
        self.session = session  # stamped on each record appended
        self.lock = FileLock(str(self.path) + ".lock")
        self.counters = Path(str(self.path) + ".next.json")  # iteration numbers handed out but not yet recorded
        self.heads_path = Path(str(self.path) + ".heads.json")  # each task's workspace state after its last keep
        self.baseline_runs = Path(str(self.path) + ".baseline-runs")  # finished runs of baselines being scored
        self.signer = Signer(self.path)  # its key: <results>.key
        self.warned: set[int] = set()  # line numbers already warned about

    def check_writable(self) -> None:
        """Raise StorageUnwritable unless records can be appended and state files created beside them; run
        before anything lands, so that an iteration that could not be recorded changes nothing."""
        with _writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
            probe = self.path.with_name(temp_prefix(self.path) + "probe.tmp")
            with naming(self.path.parent, instead=True):  # state files are created beside the results file
                probe.write_bytes(b"")
                probe.unlink()
            with self.lock:  # the key, before any command runs: what the file holds now is the engine's
                self.signer.key()

    def append(self, record: Record) -> None:
        """Append one whole line. A process killed mid-write (SIGKILL, power loss) can leave a torn last
        line; the next append then starts on a fresh line so that only the torn one is lost."""
        if self.session and not record.session:
            record = replace(record, session=self.session)
        with _writing(self.path):
            self._append(self.signer.sign(record.to_json()) + "\n")

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, open(self.path, "ab") as f:
            if f.tell() > 0:
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def records(self, task: str | None = None) -> list[dict[str, Any]]:
        """The records the engine wrote (of `task` only, if given)."""
        return read_records(self.path, task, self._warn_torn, self.signer, self._warn_forged)

    def export(self, dest: Path) -> None:
        """The records the engine wrote, as JSONL without their signatures, in a read-only file of their own:
        what a mutator or runner gets as AUTORESEARCH_RESULTS, never the live file."""
        lines = _record_lines(self.path, None, None, self.signer, None)
        with naming(dest):
            dest.write_bytes(b"".join(line + b"\n" for line in lines))
            os.chmod(dest, 0o444)

    def _warn_torn(self, number: int, line: str) -> None:
        self._warn_once(number, f"skipping a line that is not a whole JSON record (a writer killed mid-line?): "
                                f"{line[:60]!r}")

    def _warn_forged(self, number: int, line: str) -> None:
        self._warn_once(number, f"ignoring a record the engine did not write (no valid signature: written by a "
                                f"command or by hand, or copied): {line[:60]!r}")

    def _warn_once(self, number: int, message: str) -> None:
        if number not in self.warned:
            self.warned.add(number)
            warnings.warn(f"{self.path}:{number}: {message}", stacklevel=6)  # at records()'s caller

    def scores_for(self, task: str, content_hash: str, reuse_kept: bool = True) -> list[float]:
        """Scores already measured for this artifact content: a baseline record's, else (reuse_kept) a kept
        candidate's. Without reuse_kept only baseline records count: a keep's scores were selected for
        looking good, so reusing them as the next baseline would bias every later comparison."""
        baseline, kept = [], []
        for record in self.records(task):
            if record.get("status") == "baseline" and record.get("baseline_hash") == content_hash:
                baseline = record.get("scores") or [record["score"]]
            elif reuse_kept and record.get("status") == "keep" and record.get("candidate_hash") == content_hash:
                kept = record.get("scores") or [record["score"]]
        return [float(s) for s in (baseline or kept)]

    def last_iteration(self, task: str) -> int:
        return max((int(r.get("iteration", 0)) for r in self.records(task)), default=0)

    def _judged_since(self, task: str, since: int) -> list[dict[str, Any]]:
        """The task's iteration records (baselines aside) after iteration `since`, in iteration order."""
        return sorted((r for r in self.records(task) if r.get("status") != "baseline"
                       and int(r.get("iteration", 0)) > since), key=lambda r: r["iteration"])

    def misses_in_a_row(self, task: str, since: int) -> int:
        """Iterations after `since` that ended without a keep, counted back from the latest."""
        judged = self._judged_since(task, since)
        count = 0
        for record in reversed(judged):
            if record.get("status") == "keep":
                break
            count += 1
        return count

    def crashes_in_a_row(self, task: str, since: int) -> list[dict[str, Any]]:
        """The crash records after `since` that end the task's history with no other verdict between them."""
        judged = self._judged_since(task, since)
        crashes: list[dict[str, Any]] = []
        for record in reversed(judged):
            if record.get("status") != "crash":
                break
            crashes.append(record)
        return crashes[::-1]

    def heads(self) -> dict[str, dict[str, Any]]:
        """{task: {"hash": the workspace's artifacts hash after the task's last keep, "iteration": its number}}."""
        try:
            heads = json.loads(self.heads_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return heads if isinstance(heads, dict) else {}

    def save_head(self, task: str, content_hash: str, iteration: int) -> None:
        with _writing(self.path), self.lock:
            heads = self.heads()
            heads[task] = {"hash": content_hash, "iteration": iteration}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.heads_path, json.dumps(heads))

    def reserve_iteration(self, task: str, after: int = 0) -> int:
        """Next iteration number for task (and above `after`), unique even across concurrent xdist workers."""
        with _writing(self.path), self.lock:
            recorded = self.last_iteration(task)
            try:
                handed_out = json.loads(self.counters.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                handed_out = {}
            number = max(recorded, int(handed_out.get(task, 0)), after) + 1
            handed_out[task] = number
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.counters, json.dumps(handed_out))
            return number



@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError of the block becomes StorageUnwritable, naming the file (path when the OS names none)."""
    try:
        yield
    except OSError as error:
        where = describe(error) if error.filename is not None else f"{path}: {describe(error)}"
        raise StorageUnwritable(f"cannot write the results store: {where}") from error
