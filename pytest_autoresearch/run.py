"""Run the task's runner on a sandbox and read its score (and every `key: number` line) from stdout."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .process import run_logged
from .task import Task

METRIC_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class RunOutcome:
    score: float | None
    seconds: float
    failure: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def extract_score(pattern: re.Pattern[str], stdout: str, metric: str) -> tuple[float | None, str | None]:
    """(score, None) from group 1 of the last matching line, else (None, why not)."""
    last = None
    for line in stdout.splitlines():
        if (match := pattern.search(line)) is not None:
            last = match
    if last is None:
        return None, f"no metric: no line of the runner's stdout matches {pattern.pattern!r}"
    text = last.group(1)
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None, f"no metric: {metric} {text!r} is not a number"
    if not math.isfinite(value):
        return None, f"no metric: {metric} is {text}"
    return value, None


def extract_metrics(stdout: str) -> dict[str, float]:
    """Every `key: number` line (the last value wins), e.g. val_bpb, peak_vram_mb, training_seconds."""
    metrics = {}
    for line in stdout.splitlines():
        if (match := METRIC_LINE.match(line)) is not None and math.isfinite(value := float(match.group(2))):
            metrics[match.group(1)] = value
    return metrics


def score_once(task: Task, sandbox: Path, env: Mapping[str, str], log: BinaryIO, header: str) -> RunOutcome:
    gpu = f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
    log.write(f"[autoresearch] {header}{gpu}: {task.runner_command}\n".encode())
    log.flush()
    result = run_logged(task.runner_command, sandbox, env, task.runner_timeout, log)
    if (failure := result.failure("runner", task.runner_timeout)) is not None:
        return RunOutcome(None, result.seconds, failure)
    score, failure = extract_score(task.pattern, result.stdout, task.metric)
    return RunOutcome(score, result.seconds, failure, extract_metrics(result.stdout))
