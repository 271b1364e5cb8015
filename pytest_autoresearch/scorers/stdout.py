"""scorer.kind `stdout` (the default, task.yaml v1): the score is group 1 of the last stdout line matching
`scorer.pattern`; every `key: number` line of stdout is a metric."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lines import MATCHED_LINE_CHARS, nested_repeat_problem
from . import Fail, NoScore, NotFinite, Scored, Scorer, clipped, extract_metrics

KEYS = ("pattern",)


@dataclass(frozen=True)
class StdoutScorer(Scorer):
    metric: str
    pattern: re.Pattern[str]

    @property
    def setup(self) -> str:
        return self.pattern.pattern

    def read(self, stdout: str, sandbox: Path, source: str = "runner") -> Scored:
        score, why = extract_score(self.pattern, stdout, self.metric, source)
        if why is not None:
            raise NoScore(why) if score is None else NotFinite(why, score)
        return Scored(score, extract_metrics(stdout))


def extract_score(pattern: re.Pattern[str], stdout: str, metric: str,
                  source: str = "runner") -> tuple[float | None, str | None]:
    """(score, None) from group 1 of the last matching line, else (None, why not); a NaN or infinity comes
    with why it is no finite score: (nan, "no metric: score is nan"). A line longer than lines.MATCHED_LINE_CHARS
    matches nothing."""
    last, unread = None, 0
    for line in stdout.splitlines():
        if len(line) > MATCHED_LINE_CHARS:
            unread += 1
        elif (match := pattern.search(line)) is not None:
            last = match
    if last is None:
        note = (f" ({unread:,} line{'s' if unread > 1 else ''} longer than {MATCHED_LINE_CHARS:,} characters not "
                f"read)" if unread else "")
        return None, f"no metric: no line of the {source}'s stdout matches {pattern.pattern!r}{note}"
    text = last.group(1)
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None, f"no metric: {metric} {clipped(text)} is not a number"
    if not math.isfinite(value):
        return value, f"no metric: {metric} is {value}"
    return value, None


def build(spec: Mapping[str, Any], metric: str, fail: Fail) -> StdoutScorer:
    raw = spec.get("pattern", rf"^{re.escape(metric)}:\s*(\S+)")
    if not isinstance(raw, str):
        raise fail("scorer.pattern", f"must be a string, got {type(raw).__name__}")
    try:
        pattern = re.compile(raw)
    except re.error as e:
        raise fail("scorer.pattern", f"bad regex {raw!r}: {e}") from None
    if pattern.groups < 1:
        raise fail("scorer.pattern", f"regex {raw!r} needs a group (...) capturing the number")
    if (problem := nested_repeat_problem(raw)) is not None:
        raise fail("scorer.pattern", problem)
    return StdoutScorer(metric, pattern)
