"""policy.kind `greedy` ({kind: greedy, min_delta: 0.0}): one score per side; keep iff the candidate beats the
baseline by more than min_delta in the task's direction. Cheap, but on a noisy metric it keeps pure noise
about half the time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..early_stop import EarlyStop
from ..noise import Noise
from . import Decision, Policy, check_inputs, early_stop, mean, min_delta, non_finite_decision

KEYS = ("min_delta", "early_stop")


def build(spec: Mapping[str, Any]) -> GreedyPolicy:
    return GreedyPolicy(min_delta=min_delta(spec), early_stop=early_stop(spec))



@dataclass(frozen=True)
class GreedyPolicy(Policy):
    min_delta: float = 0.0
    early_stop: EarlyStop | None = None
    kind: str = "greedy"
    repeats: int = 1
    # the upstream's setup: every run seeded alike (so a no-op change ties), a keep's score is the next baseline
    reuses_kept_scores: bool = True

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
               noise: Noise | None = None) -> Decision:  # one score per side: no noise to use
        check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        sign = 1.0 if direction == "maximize" else -1.0
        delta = sign * (mean(candidate_scores) - mean(baseline))
        statistic = {"test": "greedy", "delta": delta, "min_delta": self.min_delta,
                     "n_baseline": len(baseline), "n_candidate": len(candidate_scores)}
        if delta > self.min_delta:
            return Decision("keep", f"better by {delta:.4g} (> min_delta {self.min_delta:g})", statistic)
        return Decision("discard", f"not better: delta {delta:+.4g} (needs > {self.min_delta:g})", statistic)
