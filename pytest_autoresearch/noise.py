"""The runner's noise, pooled from the history: every group of repeated runs of one content (a baseline's
repeats, a candidate's repeats) measures the run-to-run spread, and a task's runner has much the same spread
for every candidate. Pooling the groups' within-group variances gives an estimate whose degrees of freedom
grow with the session, where one decision's 3 + 3 runs alone give Welch's test ~2 to 4."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Noise:
    variance: float  # pooled within-group variance of one run's score
    df: int          # its degrees of freedom: sum over groups of (runs - 1)
    groups: int

    def with_groups(self, *samples: Sequence[float]) -> Noise:
        """This estimate with more groups pooled in (e.g. the two samples a decision is about)."""
        return pool([_group(s) for s in samples if len(s) >= 2], start=self)


def _group(scores: Sequence[float]) -> tuple[float, int]:
    """(sum of squared deviations, df) of one group."""
    m = math.fsum(scores) / len(scores)
    return math.fsum((x - m) ** 2 for x in scores), len(scores) - 1


def pool(groups: Iterable[tuple[float, int]], start: Noise | None = None) -> Noise:
    ss = start.variance * start.df if start else 0.0
    df = start.df if start else 0
    count = start.groups if start else 0
    for group_ss, group_df in groups:
        ss, df, count = ss + group_ss, df + group_df, count + 1
    return Noise(ss / df if df else 0.0, df, count)


def task_noise(records: Iterable[Mapping[str, Any]]) -> Noise:
    """The noise of a task's runner, from its records: each record's repeated scores and its baseline's, and the
    single scores of one content (candidate_hash) scored in several records; finite scores only. Every record
    of one baseline repeats that baseline's scores: a sample is counted once."""
    seen: set[tuple[float, ...]] = set()
    groups = []
    singles: dict[str, list[float]] = {}
    for record in records:
        for scores in (record.get("baseline_scores"), record.get("scores")):
            finite = tuple(s for s in scores or () if isinstance(s, (int, float)) and math.isfinite(s))
            if len(finite) >= 2 and finite not in seen:
                seen.add(finite)
                groups.append(_group(finite))
        runs = record.get("scores") or [record.get("score")]  # older records hold only the mean score
        own = [s for s in runs if isinstance(s, (int, float)) and math.isfinite(s)]
        if len(own) == 1 and record.get("candidate_hash"):
            singles.setdefault(record["candidate_hash"], []).append(own[0])
    groups += [_group(scores) for scores in singles.values() if len(scores) >= 2]
    return pool(groups)
