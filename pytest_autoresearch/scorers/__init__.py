"""Scorers: how a run's score and metrics are read, chosen by task.yaml's `scorer.kind`. A kind is one module
of this package, named like the kind (`-` as `_`), that defines `KEYS` (its scorer.* keys beyond the common
ones) and `build(spec, metric, fail) -> Scorer`; nothing else needs to change to add one."""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lines import NUMBER, matched_lines

DEFAULT_KIND = "stdout"
COMMON_KEYS = ("kind", "metric", "direction", "constraints")
# unambiguous, so that a line that nearly matches fails in time linear in its length (lines.py)
METRIC_LINE = re.compile(rf"^\s*([A-Za-z_][\w.\-/]*)\s*:\s*({NUMBER})\s*$")
CONSTRAINT = re.compile(rf"^\s*([A-Za-z_][\w.\-/]*)\s*(<=|>=|<|>|==|!=)\s*({NUMBER})\s*$")
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b}

Fail = Callable[[str, str], Exception]  # fail(key, message) -> the task file's one-line error


class NoScore(Exception):
    """A run that printed or wrote no usable score; str() says why (the iteration's crash reason)."""


class NotFinite(NoScore):
    """A score that is NaN or infinite: no number to judge against, so a baseline's is a crash (str() says
    why), while a candidate's `value` goes to the policy, which discards it."""

    def __init__(self, why: str, value: float) -> None:
        super().__init__(why)
        self.value = value


def clipped(text: str, limit: int = 40) -> str:
    """repr(text), cut to about `limit` characters with its length said: a reason quotes what a run printed,
    which may be any length."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Scored:
    score: float
    metrics: dict[str, float]


class Scorer(ABC):
    metric: str

    @property
    @abstractmethod
    def setup(self) -> str:
        """What the scores depend on beyond the runner (a saved baseline run counts only for the same setup)."""

    @abstractmethod
    def read(self, stdout: str, sandbox: Path, source: str = "runner") -> Scored:
        """The run's score and metrics, from its stdout or the files it left in the sandbox; NoScore if none.
        `source` names what printed and wrote them in a NoScore's reason: the runner, or the task's evaluator."""

    def files(self) -> tuple[str, ...]:
        """The files of the run's folder that the score is read from (none: stdout alone)."""
        return ()


@dataclass(frozen=True)
class Constraint:
    """`metric op number`, e.g. `peak_vram_mb <= 60000`: a candidate run whose metric breaks it is rejected
    before the policy sees its score."""
    metric: str
    op: str
    bound: float

    def broken_by(self, metrics: Mapping[str, float]) -> str | None:
        """Why these metrics break the constraint (a missing metric breaks it too), else None."""
        if self.metric not in metrics:
            return f"constraint {self}: the run reported no {self.metric}"
        if not COMPARE[self.op](metrics[self.metric], self.bound):
            return f"constraint {self} broken: {self.metric} was {metrics[self.metric]:g}"
        return None

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def kinds() -> list[str]:
    return sorted(name.replace("_", "-") for _, name, _ in pkgutil.iter_modules(__path__))


def _module(kind: str, fail: Fail) -> Any:
    if not isinstance(kind, str) or kind not in kinds():
        raise fail("scorer.kind", f"unknown {kind!r} (expected one of: {', '.join(kinds())})")
    return importlib.import_module(f"{__name__}.{kind.replace('-', '_')}")


def keys(kind: str | None = None) -> tuple[str, ...]:
    """The scorer.* keys valid for kind (every kind's when None): what the schema, the tests and USAGE read."""
    extra = [key for k in ([kind] if kind else kinds()) for key in _module(k, _no_fail).KEYS]
    return COMMON_KEYS + tuple(dict.fromkeys(extra))


def _no_fail(key: str, message: str) -> Exception:
    return ValueError(f"{key}: {message}")


def build(spec: Mapping[str, Any], fail: Fail) -> tuple[Scorer, tuple[Constraint, ...]]:
    """The scorer and constraints of task.yaml's `scorer:` mapping (keys already checked against keys())."""
    module = _module(spec.get("kind", DEFAULT_KIND), fail)
    for key in spec:
        if key not in COMMON_KEYS + tuple(module.KEYS):
            raise fail(f"scorer.{key}", f"unknown key (expected one of: {', '.join(COMMON_KEYS + tuple(module.KEYS))})")
    metric = spec.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise fail("scorer.metric", "missing required key" if metric is None else f"must be a non-empty string, got {metric!r}")
    return module.build(spec, metric, fail), _constraints(spec.get("constraints", []), fail)


def _constraints(value: Any, fail: Fail) -> tuple[Constraint, ...]:
    if not isinstance(value, list):
        raise fail("scorer.constraints", f"must be a list like ['peak_vram_mb <= 60000'], got {value!r}")
    out = []
    for text in value:
        match = CONSTRAINT.match(text) if isinstance(text, str) else None
        if match is None:
            raise fail("scorer.constraints", f"{text!r} is not 'metric <op> number' (op: {', '.join(COMPARE)})")
        out.append(Constraint(match.group(1), match.group(2), float(match.group(3))))
    return tuple(out)


def extract_metrics(stdout: str) -> dict[str, float]:
    """Every `key: number` line of stdout (the last value wins), e.g. val_bpb, peak_vram_mb, training_seconds;
    a line longer than lines.MATCHED_LINE_CHARS is none."""
    metrics = {}
    for line in matched_lines(stdout):
        if (match := METRIC_LINE.match(line)) is not None and math.isfinite(value := float(match.group(2))):
            metrics[match.group(1)] = value
    return metrics
