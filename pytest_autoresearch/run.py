"""Run the task's runner on a sandbox and read its score and metrics through the task's scorer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .process import run_logged
from .scorers import NoScore, extract_metrics
from .task import Task


@dataclass(frozen=True)
class RunOutcome:
    score: float | None
    seconds: float
    failure: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def score_once(task: Task, sandbox: Path, env: Mapping[str, str], log: BinaryIO, header: str) -> RunOutcome:
    gpu = f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
    log.write(f"[autoresearch] {header}{gpu}: {task.runner_command}\n".encode())
    log.flush()
    result = run_logged(task.runner_command, sandbox, env, task.runner_timeout, log)
    if (failure := result.failure("runner", task.runner_timeout)) is not None:
        return RunOutcome(None, result.seconds, failure)
    try:
        scored = task.scorer.read(result.stdout, sandbox)
    except NoScore as e:
        return RunOutcome(None, result.seconds, str(e), extract_metrics(result.stdout))
    return RunOutcome(scored.score, result.seconds, None, scored.metrics)
