"""Engine: the per-session context shared by iterations (paths, locks, results, worker identity),
plus the steps every iteration shares: environments, baseline scoring, candidate scoring."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from .policy import Decision
from .results import Record, ResultsStore, mean
from .run import score_once
from .sandbox import Content, copy_tree, read_contents, scan
from .task import Task
from .workspace import apply_contents

BASE_SEED = 42  # baseline run r gets BASE_SEED + r; the mutator of iteration i gets BASE_SEED + i
REUSES_KEPT_SCORES = ("greedy",)  # policies whose keeps' scores stand in for the new baseline (see runner_seed)
WILDCARD = re.compile(r"[*?\[]")  # a glob part holding one of these is not a literal folder name


def runner_seed(task: Task, iteration: int, run: int) -> int:
    """AUTORESEARCH_SEED of a runner run. The baseline's runs use BASE_SEED + r. Under greedy, so do the
    candidates' (the upstream's setup: every run seeded alike, so a no-op change ties). Under a noise-aware
    policy, iteration i's candidate runs use seeds of their own, BASE_SEED + R*i + r: a keep's scores were
    selected for looking good (the winner's curse), so its content is re-scored as the next baseline, and
    that re-scoring must draw fresh noise rather than replay the seeds the candidate won with."""
    if task.policy.kind in REUSES_KEPT_SCORES or iteration == 0:
        return BASE_SEED + run
    return BASE_SEED + task.policy.repeats * iteration + run


@dataclass(frozen=True)
class Engine:
    rootdir: Path
    results: ResultsStore
    worker: str  # "main" or an xdist worker id
    commit: bool

    @property
    def state_dir(self) -> Path:
        return self.rootdir / "work" / "autoresearch"

    @property
    def logs_dir(self) -> Path:
        return self.rootdir / "work" / "logs"

    def lock(self, name: str) -> FileLock:
        path = self.state_dir / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

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
                   AUTORESEARCH_RESULTS=str(self.results.path), AUTORESEARCH_SEED=str(seed),
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
            with self.lock(f"baseline-{task.name}-{content_hash}"):
                scores = self.scores_for(task, content_hash)
                if len(scores) < task.policy.repeats:
                    scores = self._score_baseline(task, record, source, baseline, scratch, extra_env)
                    if scores is None:
                        return False
        record.baseline_scores = scores
        record.baseline_score = mean(scores)
        return True

    def scores_for(self, task: Task, content_hash: str) -> list[float]:
        """The baseline scores on record for this content (a keep's own scores only under greedy)."""
        return self.results.scores_for(task.name, content_hash, reuse_kept=task.policy.kind in REUSES_KEPT_SCORES)

    def _score_baseline(self, task: Task, record: Record, source: Path, baseline: dict[str, Content],
                        scratch: Path, extra_env: dict[str, str]) -> list[float] | None:
        sandbox = scratch / "baseline"
        copy_tree(source, sandbox)
        present = self.artifacts_in(task, sandbox)
        apply_contents(sandbox, {**{rel: None for rel in present if rel not in baseline}, **baseline})
        log_path = self.logs_dir / task.name / f"baseline-{record.baseline_hash}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_record = Record(task=task.name, iteration=0, status="baseline", metric=task.metric,
                                 direction=task.direction, started_at=record.started_at, worker=self.worker,
                                 baseline_hash=record.baseline_hash, log=self.shown(log_path),
                                 reason="baseline scored", description="baseline")
        with open(log_path, "wb") as log:
            ok = self.score_runs(task, baseline_record, sandbox, log, None, extra_env)
        if not ok:
            record.status, record.log = "crash", baseline_record.log
            record.reason = f"baseline: {baseline_record.reason}"
            return None
        baseline_record.baseline_scores, baseline_record.baseline_score = baseline_record.scores, baseline_record.score
        baseline_record.duration_s = round(baseline_record.runner_s, 3)
        self.results.append(baseline_record)
        return baseline_record.scores

    def score_runs(self, task: Task, record: Record, sandbox: Path, log: BinaryIO,
                   baseline_scores: list[float] | None, extra_env: dict[str, str]) -> Decision | bool:
        """Run the runner until the policy decides (candidate), or policy.repeats times (baseline:
        baseline_scores None). Fills record.scores/score/metrics/runner_s; on failure sets crash and returns False."""
        repeats = task.policy.repeats
        decision = None
        for r in range(repeats):
            seed = runner_seed(task, record.iteration, r)
            env = self.env(task, record, seed, sandbox, extra_env)
            outcome = score_once(task, sandbox, env, log, f"runner run {r + 1}/{repeats} (seed {seed})")
            record.runner_s = round(record.runner_s + outcome.seconds, 3)
            if outcome.failure is not None:
                record.status, record.reason = "crash", outcome.failure
                return False
            record.scores.append(outcome.score)
            record.score = mean(record.scores)
            record.metrics = outcome.metrics
            if baseline_scores is not None:
                decision = task.policy.decide(baseline_scores, record.scores, task.direction)
                if decision.verdict != "continue":
                    break
        if baseline_scores is None:
            return True
        if decision.verdict == "continue":  # a policy must settle by `repeats` runs; never keep on a maybe
            decision = Decision("discard", f"undecided after {repeats} runs: {decision.reason}", decision.statistic)
        record.statistic = decision.statistic
        return decision
