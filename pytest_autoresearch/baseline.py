"""The baseline's scores: found on record by the artifacts' content hash, else scored once, however many
xdist workers need it at the same time (its runs are shared out between them and saved, and every worker
reads them there), and recorded as a `baseline` record: at once where the iteration lands, else (an xdist
worker) by the controller, from the attempt, once per content hash and before the first iteration it judged."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from filelock import Timeout

from .engine import Engine
from .errors import Crashed
from .files import write_atomic
from .isolation import storage_paths
from .results import Record, mean
from .run import score_once
from .screen import ENV as SCREEN_ENV
from .sandbox import Content, copy_tree, read_contents, scan
from .task import Task
from .workspace import apply_contents, protected_hashes


def baseline_scores(engine: Engine, task: Task, content_hash: str, source: Path, baseline: dict[str, Content],
                    scratch: Path, extra_env: dict[str, str], started_at: str,
                    record_here: bool = True) -> tuple[list[float], Record | None]:
    """The scores of the baseline `baseline` (hash `content_hash`), scoring it first when results.jsonl holds
    too few of them, and the new baseline's record when it is left to the landing to append (record_here False:
    the attempt lands in another process), else None. Raises Crashed when a baseline run fails: no candidate
    can be judged then."""
    scores = recorded_scores(engine, task, content_hash)
    if len(scores) >= task.policy.baseline_runs:
        return scores, None
    start = time.perf_counter()
    runs = _runs(engine, task, content_hash, source, baseline, scratch, extra_env)
    record = _baseline_record(engine, task, content_hash, runs, time.perf_counter() - start, started_at)
    if not record_here:
        return record.scores, record
    return append_baseline(engine, task, record), None


def append_baseline(engine: Engine, task: Task, record: Record) -> list[float]:
    """Append a new baseline's record unless its scores are on record by now (another worker's, or another
    attempt's that the controller landed first): one baseline record, whoever finishes. Returns the scores on
    record."""
    with engine.storage.lock(f"baseline-{task.name}-{record.baseline_hash}"):
        scores = recorded_scores(engine, task, record.baseline_hash)
        if len(scores) < task.policy.baseline_runs:
            engine.storage.results.append(record)
            scores = record.scores
    return scores


def baseline_curves(engine: Engine, task: Task, content_hash: str) -> list[list[tuple[float, float]]]:
    """The progress curves of the baseline's saved runs (policy.early_stop reads them), those that have one."""
    folder = engine.storage.results.baseline_runs / task.name / content_hash
    curves = []
    for r in range(task.policy.baseline_runs):
        try:
            curve = json.loads((folder / f"{r}.json").read_text(encoding="utf-8")).get("curve") or []
        except (OSError, ValueError, AttributeError):
            continue
        if curve:
            curves.append([(float(p), float(v)) for p, v in curve])
    return curves


def recorded_scores(engine: Engine, task: Task, content_hash: str) -> list[float]:
    """The baseline scores on record for this content (a keep's own scores only where the policy allows)."""
    return engine.storage.results.scores_for(task.name, content_hash, reuse_kept=task.policy.reuses_kept_scores)


def _runs(engine: Engine, task: Task, content_hash: str, source: Path, baseline: dict[str, Content],
          scratch: Path, extra_env: dict[str, str]) -> list[dict[str, Any]]:
    """The baseline's runs (policy.baseline_runs of them), shared out: each run has its own lock, and a worker first takes every run
    nobody has started, then waits for the others' (running any whose worker gave up). So the xdist workers
    that need a new baseline score it side by side, R runs on R GPUs in the time of one, while a single process
    simply runs them in turn. Finished runs are kept beside results.jsonl (<results>.baseline-runs/, atomic
    JSON), so an interruption loses only the runs in flight; a saved run counts only for the same runner,
    metric, protected files and evaluator (its `setup`)."""
    folder = engine.storage.results.baseline_runs / task.name / content_hash
    folder.mkdir(parents=True, exist_ok=True)
    setup = run_setup(task, source)

    def run(r: int) -> dict[str, Any]:
        sandbox = _baseline_sandbox(engine, task, source, baseline, scratch)
        name = "" if task.policy.baseline_runs == 1 else f"-run{r + 1}"
        log_path = engine.storage.baseline_log(task.name, f"baseline-{content_hash}{name}")
        seed = task.policy.runner_seed(0, r)
        env = engine.env(task, 0, None, seed, sandbox, extra_env)
        with open(log_path, "wb") as log:
            outcome = score_once(task, sandbox, env, log, f"baseline run {r + 1}/{task.policy.baseline_runs} (seed {seed})",
                                 storage_paths(engine.storage))
        if outcome.baseline_failure is not None:
            raise Crashed(f"baseline: {outcome.baseline_failure}", log=engine.shown(log_path))
        saved = {"score": outcome.score, "seconds": round(outcome.seconds, 3), "metrics": outcome.metrics,
                 "log": engine.shown(log_path), "worker": engine.worker, "setup": setup, "curve": outcome.curve}
        write_atomic(folder / f"{r}.json", json.dumps(saved))
        return saved

    runs: dict[int, dict[str, Any]] = {}
    for wait in (False, True):
        for r in range(task.policy.baseline_runs):
            if r not in runs and (found := _finished_run(folder, r, setup)) is not None:
                runs[r] = found
            if r in runs:
                continue
            lock = engine.storage.lock(f"baseline-{task.name}-{content_hash}-run{r}")
            try:
                lock.acquire(timeout=-1 if wait else 0)
            except Timeout:
                continue  # another worker is on it: take the next run, come back for this one
            try:
                runs[r] = _finished_run(folder, r, setup) or run(r)  # it may have finished while we waited
            finally:
                lock.release()
    return [runs[r] for r in range(task.policy.baseline_runs)]


def run_setup(task: Task, source: Path) -> str:
    """What a saved run must have been run under to count: the runner, metric, scorer, protected files and
    evaluator (an evaluator scores in the runner's place: a run saved without it, or with another, is no run of
    this setup)."""
    protected = protected_hashes(task, read_contents(source, [rel for rel in scan(source) if task.is_protected(rel)]))
    evaluator = [task.evaluator.command, task.evaluator.receives] if task.evaluator is not None else []
    return hashlib.sha256(json.dumps([task.runner_command, task.metric, task.scorer.setup,
                                      sorted(protected.items()), *evaluator]).encode()).hexdigest()[:16]


def _baseline_sandbox(engine: Engine, task: Task, source: Path, baseline: dict[str, Content], scratch: Path) -> Path:
    """scratch/baseline: a copy of source holding the baseline's artifacts, made on first use."""
    sandbox = scratch / "baseline"
    if not sandbox.exists():
        copy_tree(source, sandbox, engine.storage_in_tree)
        present = engine.artifacts_in(task, sandbox)
        apply_contents(sandbox, {**{rel: None for rel in present if rel not in baseline}, **baseline})
    return sandbox


def baseline_screen(engine: Engine, task: Task, content_hash: str, source: Path, baseline: dict[str, Content],
                    scratch: Path, extra_env: dict[str, str]) -> tuple[float, float]:
    """(the baseline's score at policy.screen's budget, the runner seconds this call spent on it): its saved
    screen run (its own, or the screen run of the keep that made it), else one run now, saved. Raises Crashed
    when that run fails: no candidate can be screened then."""
    screen = task.policy.screen
    assert screen is not None
    setup = run_setup(task, source)
    with engine.storage.lock(f"baseline-{task.name}-{content_hash}-screen"):
        if (found := saved_screen(engine, task, content_hash, setup)) is not None:
            return found, 0.0
        sandbox = _baseline_sandbox(engine, task, source, baseline, scratch)
        log_path = engine.storage.baseline_log(task.name, f"baseline-{content_hash}-screen")
        seed = task.policy.runner_seed(0, 0)
        env = {**engine.env(task, 0, None, seed, sandbox, extra_env), SCREEN_ENV: f"{screen.seconds:g}"}
        with open(log_path, "wb") as log:
            outcome = score_once(task, sandbox, env, log, f"baseline screen run ({screen.seconds:g}s, seed {seed})",
                                 storage_paths(engine.storage), screen_seconds=screen.seconds)
        if outcome.baseline_failure is not None:
            raise Crashed(f"baseline screen: {outcome.baseline_failure}", log=engine.shown(log_path))
        save_screen(engine, task, content_hash, setup, outcome.score)
        return outcome.score, outcome.seconds


def saved_screen(engine: Engine, task: Task, content_hash: str, setup: str) -> float | None:
    """The screen score saved for this content under this setup and screen budget, or None."""
    screen = task.policy.screen
    try:
        saved = json.loads((engine.storage.results.baseline_runs / task.name / content_hash / "screen.json")
                           .read_text(encoding="utf-8"))
        fits = screen is not None and saved["setup"] == setup and float(saved["screen_seconds"]) == screen.seconds
        return float(saved["score"]) if fits else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_screen(engine: Engine, task: Task, content_hash: str, setup: str, score: float) -> None:
    """Save a screen run's score for this content: the baseline's screen score once it is the baseline (a keep's
    screen run stands in for its next baseline's, as the research benchmark models it)."""
    screen = task.policy.screen
    assert screen is not None
    folder = engine.storage.results.baseline_runs / task.name / content_hash
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "screen.json", json.dumps({"score": score, "setup": setup, "screen_seconds": screen.seconds,
                                                     "worker": engine.worker}))


def _baseline_record(engine: Engine, task: Task, content_hash: str, runs: list[dict[str, Any]], wall_s: float,
                     started_at: str) -> Record:
    """The baseline record: runner_s sums the runs (GPU time), duration_s is this worker's wait."""
    scores = [float(run["score"]) for run in runs]
    workers = sorted({run["worker"] for run in runs})
    reason = "baseline scored" + (f"; runs by {', '.join(workers)}" if len(workers) > 1 else "")
    return Record(
        task=task.name, iteration=0, status="baseline", metric=task.metric, direction=task.direction,
        started_at=started_at, worker=engine.worker, baseline_hash=content_hash, log=runs[0]["log"], scores=scores,
        score=mean(scores), baseline_scores=scores, baseline_score=mean(scores), metrics=runs[-1]["metrics"],
        reason=reason, description="baseline", runner_s=round(sum(run["seconds"] for run in runs), 3),
        duration_s=round(wall_s, 3))


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
