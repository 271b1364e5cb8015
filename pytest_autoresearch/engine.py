"""Engine: the per-session context shared by iterations (paths, locks, results, worker identity),
plus the steps every iteration shares: environments, baseline scoring, candidate scoring."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from filelock import Timeout

from .files import write_atomic
from .policies import Decision
from .results import Record, mean
from .run import score_once
from .sandbox import Content, copy_tree, read_contents, scan
from .storage import Storage
from .task import Task
from .workspace import apply_contents, protected_hashes

WILDCARD = re.compile(r"[*?\[]")  # a glob part holding one of these is not a literal folder name


def runner_seed(task: Task, iteration: int, run: int) -> int:
    """AUTORESEARCH_SEED of a runner run: the policy's rule (Policy.runner_seed)."""
    return task.policy.runner_seed(iteration, run)


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
        paths: set[str] = set()
        for glob in task.artifacts:
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
        return read_contents(root, sorted(p for p in paths if task.is_artifact(p)))

    def env(self, task: Task, record: Record, seed: int, sandbox: Path, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(AUTORESEARCH_TASK=task.name, AUTORESEARCH_ITERATION=str(record.iteration),
                   AUTORESEARCH_RESULTS=str(self.storage.results.path), AUTORESEARCH_SEED=str(seed),
                   AUTORESEARCH_BASELINE_SCORE="" if record.baseline_score is None else repr(record.baseline_score),
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

    # ------------------------------------------------------------------------
    # Scoring

    def ensure_baseline(self, task: Task, record: Record, source: Path, baseline: dict[str, Content],
                        scratch: Path, extra_env: dict[str, str]) -> bool:
        """Fill record's baseline scores, scoring this baseline first if results.jsonl has too few scores
        for its hash (once, even when xdist workers race for it). False (record set to crash) on failure."""
        content_hash = record.baseline_hash
        scores = self.scores_for(task, content_hash)
        if len(scores) < task.policy.repeats:
            start = time.perf_counter()
            runs = self._baseline_runs(task, record, source, baseline, scratch, extra_env)
            if runs is None:
                return False
            with self.storage.lock(f"baseline-{task.name}-{content_hash}"):  # one baseline record, whoever finishes
                scores = self.scores_for(task, content_hash)
                if len(scores) < task.policy.repeats:
                    scores = self._record_baseline(task, record, runs, time.perf_counter() - start)
        record.baseline_scores = scores
        record.baseline_score = mean(scores)
        return True

    def scores_for(self, task: Task, content_hash: str) -> list[float]:
        """The baseline scores on record for this content (a keep's own scores only under greedy)."""
        return self.storage.results.scores_for(task.name, content_hash, reuse_kept=task.policy.reuses_kept_scores)

    def _baseline_runs(self, task: Task, record: Record, source: Path, baseline: dict[str, Content],
                       scratch: Path, extra_env: dict[str, str]) -> list[dict[str, Any]] | None:
        """The baseline's `repeats` runs, shared out: each run has its own lock, and a worker first takes
        every run nobody has started, then waits for the others' (running any whose worker gave up). So the
        xdist workers that need a new baseline score it side by side, R runs on R GPUs in the time of one,
        while a single process simply runs them in turn. Finished runs are kept beside results.jsonl
        (<results>.baseline-runs/, atomic JSON), so an interruption loses only the runs in flight; a saved
        run counts only for the same runner, metric and protected files (its `setup`)."""
        folder = self.storage.results.baseline_runs / task.name / str(record.baseline_hash)
        folder.mkdir(parents=True, exist_ok=True)
        sandbox = scratch / "baseline"
        protected = protected_hashes(task, read_contents(source, [rel for rel in scan(source) if task.is_protected(rel)]))
        setup = hashlib.sha256(json.dumps([task.runner_command, task.metric, task.scorer.setup,
                                           sorted(protected.items())]).encode()).hexdigest()[:16]

        def run(r: int) -> dict[str, Any] | None:
            if not sandbox.exists():
                copy_tree(source, sandbox, self.storage_in_tree)
                present = self.artifacts_in(task, sandbox)
                apply_contents(sandbox, {**{rel: None for rel in present if rel not in baseline}, **baseline})
            name = "" if task.policy.repeats == 1 else f"-run{r + 1}"
            log_path = self.storage.baseline_log(task.name, f"baseline-{record.baseline_hash}{name}")
            seed = runner_seed(task, 0, r)
            env = self.env(task, replace(record, iteration=0, baseline_score=None), seed, sandbox, extra_env)
            with open(log_path, "wb") as log:
                outcome = score_once(task, sandbox, env, log, f"baseline run {r + 1}/{task.policy.repeats} (seed {seed})")
            if outcome.failure is not None:
                record.status, record.reason, record.log = "crash", f"baseline: {outcome.failure}", self.shown(log_path)
                return None
            saved = {"score": outcome.score, "seconds": round(outcome.seconds, 3), "metrics": outcome.metrics,
                     "log": self.shown(log_path), "worker": self.worker, "setup": setup}
            write_atomic(folder / f"{r}.json", json.dumps(saved))
            return saved

        runs: dict[int, dict[str, Any]] = {}
        for wait in (False, True):
            for r in range(task.policy.repeats):
                if r not in runs and (found := _finished_run(folder, r, setup)) is not None:
                    runs[r] = found
                if r in runs:
                    continue
                lock = self.storage.lock(f"baseline-{task.name}-{record.baseline_hash}-run{r}")
                try:
                    lock.acquire(timeout=-1 if wait else 0)
                except Timeout:
                    continue  # another worker is on it: take the next run, come back for this one
                try:
                    done = _finished_run(folder, r, setup) or run(r)  # it may have finished while we waited
                    if done is None:
                        return None
                    runs[r] = done
                finally:
                    lock.release()
        return [runs[r] for r in range(task.policy.repeats)]

    def _record_baseline(self, task: Task, record: Record, runs: list[dict[str, Any]], wall_s: float) -> list[float]:
        """Append the baseline record: runner_s sums the runs (GPU time), duration_s is this worker's wait."""
        scores = [float(run["score"]) for run in runs]
        workers = sorted({run["worker"] for run in runs})
        reason = "baseline scored" + (f"; runs by {', '.join(workers)}" if len(workers) > 1 else "")
        baseline_record = Record(task=task.name, iteration=0, status="baseline", metric=task.metric,
                                 direction=task.direction, started_at=record.started_at, worker=self.worker,
                                 baseline_hash=record.baseline_hash, log=runs[0]["log"], scores=scores,
                                 score=mean(scores), baseline_scores=scores, baseline_score=mean(scores),
                                 metrics=runs[-1]["metrics"], reason=reason, description="baseline")
        baseline_record.runner_s = round(sum(run["seconds"] for run in runs), 3)
        baseline_record.duration_s = round(wall_s, 3)
        self.storage.results.append(baseline_record)
        return scores

    def score_runs(self, task: Task, record: Record, sandbox: Path, log: BinaryIO,
                   baseline_scores: list[float], extra_env: dict[str, str]) -> Decision | None:
        """Run the candidate until the policy decides (at most policy.repeats runs). Fills
        record.scores/score/metrics/runner_s; on a failed run sets crash, on a run breaking a scorer constraint
        rejected, and returns None."""
        repeats = task.policy.repeats
        for r in range(repeats):
            seed = runner_seed(task, record.iteration, r)
            env = self.env(task, record, seed, sandbox, extra_env)
            outcome = score_once(task, sandbox, env, log, f"runner run {r + 1}/{repeats} (seed {seed})")
            record.runner_s = round(record.runner_s + outcome.seconds, 3)
            if outcome.failure is not None:
                record.status, record.reason = "crash", outcome.failure
                return None
            if (broken := next(filter(None, (c.broken_by(outcome.metrics) for c in task.constraints)), None)):
                record.status, record.reason, record.metrics = "rejected", broken, outcome.metrics
                return None  # never shown to the policy: a candidate over a bound is no candidate
            record.scores.append(outcome.score)
            record.score = mean(record.scores)
            record.metrics = outcome.metrics
            decision = task.policy.decide(baseline_scores, record.scores, task.direction)
            if decision.verdict != "continue":
                break
        if decision.verdict == "continue":  # a policy must settle by `repeats` runs; never keep on a maybe
            decision = Decision("discard", f"undecided after {repeats} runs: {decision.reason}", decision.statistic)
        record.statistic = decision.statistic
        return decision


def _finished_run(folder: Path, r: int, setup: str) -> dict[str, Any] | None:
    """Baseline run r's saved outcome, or None when it has not finished under this setup (a file that cannot
    be read as one, e.g. edited by hand, counts as not finished: the run is simply done again)."""
    try:
        run = json.loads((folder / f"{r}.json").read_text(encoding="utf-8"))
        run["score"] = float(run["score"])
        complete = all(key in run for key in ("seconds", "metrics", "log", "worker"))
        return run if complete and run.get("setup") == setup else None
    except (OSError, ValueError, TypeError, KeyError):
        return None
