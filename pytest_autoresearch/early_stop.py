"""policy.early_stop: stop a candidate's run half-way when its progress curve is clearly worse than every
baseline run's at the same progress, instead of training a doomed candidate for the whole budget.

task.yaml:
    policy:
      early_stop:
        pattern: '\\((?P<progress>[\\d.]+)%\\) \\| loss (?P<value>[\\d.]+)'  # train.py's progress lines
        direction: minimize   # of the value (a loss), not of the task's score
        min_progress: 20      # percent; earlier points say little
        window: 3             # points averaged on each curve before comparing (the batch noise)
        z: 4.0                # band half-width, in the baseline runs' spread
        patience: 2           # consecutive points outside the band before the run is stopped

The rule: at a candidate point (p, v) with p >= min_progress, each baseline curve is read at the same p (linear
interpolation of its window-averaged points) and the candidate's own window average is compared with their
mean m. The spread s is the sd across baseline curves, pooled (root mean square) over every progress point
at or past min_progress, so one checkpoint's lucky agreement cannot shrink it. The run is stopped after
`patience` points in a row worse than m by more than z * s * sqrt(1 + 1/n) (the band a new run of the
baseline itself would stay inside), plus a floor of 1e-3 of |m|. It needs at least two baseline curves."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .lines import MATCHED_LINE_CHARS, nested_repeat_problem

KEYS = ("pattern", "direction", "min_progress", "window", "z", "patience")
Curve = Sequence[tuple[float, float]]  # (progress percent, value), in the order printed


@dataclass(frozen=True)
class EarlyStop:
    pattern: re.Pattern[str]
    direction: str = "minimize"
    min_progress: float = 20.0
    window: int = 3
    z: float = 4.0
    patience: int = 2

    def point(self, line: str) -> tuple[float, float] | None:
        """(progress, value) of a progress line, or None for any other line (one longer than
        lines.MATCHED_LINE_CHARS included: the pattern never sees it)."""
        match = self.pattern.search(line) if len(line) <= MATCHED_LINE_CHARS else None
        if match is None:
            return None
        try:
            progress, value = float(match["progress"]), float(match["value"])
        except (IndexError, ValueError):
            return None
        return (progress, value) if math.isfinite(progress) and math.isfinite(value) else None

    def watcher(self, baselines: Sequence[Curve]) -> Watcher | None:
        """A judge of one candidate run against these baseline curves; None when there are too few to judge."""
        smoothed = [smooth(c, self.window) for c in baselines if c]
        if len(smoothed) < 2:
            return None
        sds = []
        for p, _ in smoothed[0]:
            if p >= self.min_progress:
                values = [at(c, p) for c in smoothed]
                m = sum(values) / len(values)
                sds.append(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        if not sds:
            return None
        return Watcher(self, smoothed, math.sqrt(sum(sds) / len(sds)))


@dataclass
class Watcher:
    rule: EarlyStop
    baselines: list[list[tuple[float, float]]]
    spread: float
    points: list[tuple[float, float]] = field(default_factory=list)
    outside: int = 0

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one output line of the candidate's run; the evidence for stopping it now, or None."""
        point = self.rule.point(line)
        if point is None:
            return None
        self.points.append(point)
        progress = point[0]
        if progress < self.rule.min_progress or len(self.points) < self.rule.window:
            return None
        value = sum(v for _, v in self.points[-self.rule.window:]) / self.rule.window
        values = [at(c, progress) for c in self.baselines]
        mean = sum(values) / len(values)
        band = self.rule.z * self.spread * math.sqrt(1 + 1 / len(values)) + 1e-3 * abs(mean)
        worse_by = (value - mean) if self.rule.direction == "minimize" else (mean - value)
        self.outside = self.outside + 1 if worse_by > band else 0
        if self.outside < self.rule.patience:
            return None
        return {"progress": progress, "value": value, "baseline_mean": mean, "band": band, "worse_by": worse_by,
                "baseline_runs": len(values)}


def smooth(curve: Curve, window: int) -> list[tuple[float, float]]:
    """Each point's value replaced by the mean of it and the window - 1 points before it (from the window-th on)."""
    points = list(curve)
    return [(points[i][0], sum(v for _, v in points[i - window + 1:i + 1]) / window)
            for i in range(window - 1, len(points))]


def at(curve: Sequence[tuple[float, float]], progress: float) -> float:
    """The curve's value at progress, linearly interpolated (held flat beyond its ends)."""
    if progress <= curve[0][0]:
        return curve[0][1]
    for (p0, v0), (p1, v1) in zip(curve, curve[1:]):
        if p0 <= progress <= p1:
            return v0 if p1 == p0 else v0 + (v1 - v0) * (progress - p0) / (p1 - p0)
    return curve[-1][1]


def build(spec: Any) -> EarlyStop:
    """From task.yaml's policy.early_stop mapping; ValueError "policy.early_stop.<key>: message" on a bad value."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"policy.early_stop: must be a mapping with a pattern, got {type(spec).__name__}")
    for key in spec:
        if key not in KEYS:
            raise ValueError(f"policy.early_stop.{key}: unknown key (expected one of: {', '.join(KEYS)})")
    try:
        pattern = re.compile(spec["pattern"])
    except KeyError:
        raise ValueError("policy.early_stop.pattern: required (a regex with groups named progress and value)") from None
    except (re.error, TypeError) as e:
        raise ValueError(f"policy.early_stop.pattern: not a valid regex: {e}") from None
    if (problem := nested_repeat_problem(spec["pattern"])) is not None:
        raise ValueError(f"policy.early_stop.pattern: {problem}")
    if not {"progress", "value"} <= set(pattern.groupindex):
        raise ValueError("policy.early_stop.pattern: needs groups named progress and value, "
                         "e.g. '\\((?P<progress>[\\d.]+)%\\) \\| loss (?P<value>[\\d.]+)'")
    direction = spec.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"policy.early_stop.direction: must be minimize or maximize, got {direction!r}")
    numbers = {}
    for key, low, integer in (("min_progress", 0.0, False), ("window", 1, True), ("z", 0.0, False),
                              ("patience", 1, True)):
        value = spec.get(key, getattr(EarlyStop, key))
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                or not math.isfinite(value) or value < low or (key == "z" and value == 0):
            kind = "an integer" if integer else "a number"
            raise ValueError(f"policy.early_stop.{key}: must be {kind} >= {low}{' (not 0)' if key == 'z' else ''}, "
                             f"got {value!r}")
        numbers[key] = value
    return EarlyStop(pattern, direction, float(numbers["min_progress"]), numbers["window"], float(numbers["z"]),
                     numbers["patience"])
