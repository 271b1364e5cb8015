"""Step 4, run and score: the task's runner on a sandbox, within its time limit (budget.py), its score and
metrics read through the task's scorer from its own output or, with an `evaluator:`, from the evaluator's
(evaluator.py); a candidate is run until its policy settles."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .early_stop import Curve, Watcher
from .engine import Engine, matching_paths
from .errors import Crashed, Rejected
from .evaluator import clear_received, evaluation, received_problem
from .isolation import command_wrapper, matching, storage_paths
from .noise import Noise
from .process import run_logged
from .results import mean
from .scorers import NoScore, NotFinite, extract_metrics
from .screen import ENV as SCREEN_ENV
from .seal import seal
from .task import Task


@dataclass(frozen=True)
class RunOutcome:
    score: float | None  # NaN or infinite when the run printed such a score (see not_finite)
    seconds: float
    failure: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    not_finite: str | None = None  # why the score is no finite number: the policy discards such a candidate
    stopped: dict[str, Any] | None = None  # policy.early_stop's evidence, when it stopped this run
    curve: tuple[tuple[float, float], ...] = ()  # the run's progress points, when the policy has an early_stop

    @property
    def baseline_failure(self) -> str | None:
        """Why this run cannot score a baseline: a failure, or a score that nothing could be judged against."""
        return self.failure or self.not_finite


@dataclass(frozen=True)
class Runs:
    """What a candidate's runs measured: every score in run order, the last run's metrics, runner seconds, and
    the evidence of policy.early_stop when it stopped the last run."""
    scores: tuple[float, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    runner_s: float = 0.0
    early_stop: dict[str, Any] | None = None
    screen: dict[str, Any] | None = None  # policy.screen's evidence (screen.Screen.judge), when it screened


def score_once(task: Task, sandbox: Path, env: Mapping[str, str], log: BinaryIO, header: str,
               hidden: Iterable[Path] = (), watcher: Watcher | None = None,
               screen_seconds: float | None = None) -> RunOutcome:
    """One run of the runner in sandbox, then of the task's evaluator, if any; under runner.isolation, `hidden` (the
    engine's storage) and the paths runner.hide names now are out of its sight, and runner.writable's folders (made
    if missing) take its writes. A watcher (policy.early_stop against the baseline's curves) may stop the run
    half-way. screen_seconds: a screen run's training budget (policy.screen), the limit's in runner.budget's place."""
    gpu = f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
    log.write(f"[autoresearch] {header}{gpu}: {task.runner_command}\n".encode())
    log.flush()
    # what the evaluator and the budget read, taken before the runner can rewrite it
    sealed = seal(sandbox, matching_paths(sandbox, task.protected, task.is_protected)) \
        if task.evaluator is not None or task.budget is not None else {}
    limit, past_limit = task.runner_timeout, None
    if task.budget is not None:
        try:
            limit, past_limit = task.budget.limit(sealed, task.runner_timeout, screen_seconds)
        except ValueError as e:
            return RunOutcome(None, 0.0, f"runner.budget: {e}")
    if task.evaluator is not None:
        clear_received(sandbox, task.evaluator)
    evidence: dict[str, Any] = {}

    def watch(line: str) -> bool:
        found = watcher.feed(line)
        evidence.update(found or {})
        return found is not None

    writable = [Path(folder) for folder in task.runner_writable] if task.runner_isolation is not None else []
    for folder in writable:
        folder.mkdir(parents=True, exist_ok=True)
    wrapper = command_wrapper(task.runner_isolation, task.rootdir, sandbox, [*hidden, *matching(task.runner_hide)],
                              writable, env)
    result = run_logged(task.runner_command, sandbox, env, limit, log, wrapper,
                        watch if watcher is not None else None)
    rule = task.policy.early_stop
    curve = tuple(p for line in result.stdout.splitlines() if (p := rule.point(line))) if rule else ()
    if result.stopped:
        return RunOutcome(None, result.seconds, metrics=extract_metrics(result.stdout), curve=curve,
                          stopped={**evidence, "run_seconds": round(result.seconds, 3)})
    if (failure := result.failure("runner", limit)) is not None:
        return RunOutcome(None, result.seconds, past_limit if result.timed_out and past_limit else failure)
    if task.evaluator is None:
        return _outcome(task, result.stdout, sandbox, result.seconds, curve)
    if (problem := received_problem(sandbox, task.evaluator)) is not None:
        return RunOutcome(None, result.seconds, problem)
    with evaluation(task.evaluator, task.rootdir, sandbox, sealed, env, log, hidden) as evaluated:
        seconds = result.seconds + evaluated.result.seconds  # the evaluation is GPU time too
        if evaluated.failure is not None:
            return RunOutcome(None, seconds, evaluated.failure)
        # the runner's other metrics stay, below the evaluator's: its own score line counts for nothing
        return _outcome(task, evaluated.result.stdout, evaluated.folder, seconds, curve, "evaluator",
                        extract_metrics(result.stdout))


def _outcome(task: Task, stdout: str, folder: Path, seconds: float, curve: tuple[tuple[float, float], ...],
             source: str = "runner", below: Mapping[str, float] | None = None) -> RunOutcome:
    """The run's outcome from what `source` printed and left in folder, read through the task's scorer; the
    metrics `below` (the runner's, under an evaluator) go under those it read."""
    below = below or {}
    try:
        scored = task.scorer.read(stdout, folder, source)
    except NotFinite as e:
        return RunOutcome(e.value, seconds, None, {**below, **extract_metrics(stdout)}, str(e))
    except NoScore as e:
        return RunOutcome(None, seconds, str(e), {**below, **extract_metrics(stdout)})
    return RunOutcome(scored.score, seconds, None, {**below, **scored.metrics}, curve=curve)


def score_candidate(engine: Engine, task: Task, iteration: int, baseline_scores: list[float], sandbox: Path,
                    log: BinaryIO, extra_env: dict[str, str], noise: Noise | None = None,
                    curves: Sequence[Curve] = (), screen_baseline: float | None = None) -> Runs:
    """Run the candidate until its policy stops asking for more (at most policy.max_runs runs), judging with the
    history's noise; under policy.screen a screen run against the baseline's (screen_baseline) comes first, and
    a candidate it does not promote gets no full run; under policy.early_stop each run is watched against the
    baseline's curves and a stopped run ends the candidate. Raises Crashed on a failed run and Rejected on a run
    that breaks a scorer constraint (a candidate over a bound is no candidate: the policy never sees it), each
    carrying the runs so far."""
    runs, most = Runs(), task.policy.max_runs
    baseline_score = mean(baseline_scores)
    rule = task.policy.early_stop
    if task.policy.screen is not None and screen_baseline is not None:
        runs = _screen(engine, task, iteration, screen_baseline, baseline_score, sandbox, log, extra_env)
        if not runs.screen or not runs.screen["promoted"]:
            return runs
    for r in range(most):
        seed = task.policy.runner_seed(iteration, r)
        env = engine.env(task, iteration, baseline_score, seed, sandbox, extra_env)
        outcome = score_once(task, sandbox, env, log, f"runner run {r + 1}/{most} (seed {seed})",
                             storage_paths(engine.storage), rule.watcher(curves) if rule else None)
        runner_s = round(runs.runner_s + outcome.seconds, 3)
        if outcome.stopped is not None:
            return Runs(runs.scores, outcome.metrics, runner_s, early_stop=outcome.stopped, screen=runs.screen)
        if outcome.failure is not None:
            raise Crashed(outcome.failure, runs=Runs(runs.scores, runs.metrics, runner_s, screen=runs.screen))
        _check_constraints(task, outcome, Runs(runs.scores, outcome.metrics, runner_s, screen=runs.screen))
        runs = Runs(runs.scores + (outcome.score,), outcome.metrics, runner_s, screen=runs.screen)
        if task.policy.decide(baseline_scores, runs.scores, task.direction, noise).verdict != "continue":
            break
    return runs


def _screen(engine: Engine, task: Task, iteration: int, screen_baseline: float, baseline_score: float,
            sandbox: Path, log: BinaryIO, extra_env: dict[str, str]) -> Runs:
    """The candidate's screen run (policy.screen), told its budget through AUTORESEARCH_TIME_BUDGET and killed
    past it: Runs with no full-run score, its metrics, seconds and the screen's evidence."""
    screen = task.policy.screen
    assert screen is not None
    seed = task.policy.runner_seed(iteration, 0)
    env = {**engine.env(task, iteration, baseline_score, seed, sandbox, extra_env), SCREEN_ENV: f"{screen.seconds:g}"}
    outcome = score_once(task, sandbox, env, log, f"screen run ({screen.seconds:g}s, seed {seed})",
                         storage_paths(engine.storage), screen_seconds=screen.seconds)
    runner_s = round(outcome.seconds, 3)
    if outcome.failure is not None:
        raise Crashed(f"screen run: {outcome.failure}", runs=Runs(runner_s=runner_s))
    _check_constraints(task, outcome, Runs((), outcome.metrics, runner_s))
    score = outcome.score if outcome.score is not None else math.nan
    return Runs((), outcome.metrics, runner_s, screen=screen.judge(screen_baseline, score, task.direction))


def _check_constraints(task: Task, outcome: RunOutcome, runs: Runs) -> None:
    """Raise Rejected, carrying `runs`, when the run broke one of the scorer's constraints."""
    if (broken := next(filter(None, (c.broken_by(outcome.metrics) for c in task.constraints)), None)):
        raise Rejected(broken, runs=runs)
