"""Keep/discard policies, chosen by task.yaml's `policy.kind`. A kind is one module of this package, named like
the kind (`-` as `_`), that defines `KEYS` (its policy.* keys) and `build(spec) -> Policy`, raising ValueError
"policy.<key>: message" on a bad value. A policy carries its own rules beyond the verdict: how many runs a
side needs, which seed each run gets, and whether a keep's scores may stand in for the next baseline; the
engine asks, it never looks at a policy's name.

Three kinds, chosen by the `policy:` mapping of task.yaml (sequential: see its module):

greedy ({kind: greedy, min_delta: 0.0})
    One score per side. Keep iff the candidate beats the baseline by more than
    min_delta in the task's direction. Cheap, but on a noisy metric it keeps
    pure noise about half the time.

noise-aware ({kind: noise-aware, repeats: 5, confidence: 0.95, min_delta: 0.0})
    The baseline is scored `repeats` times (different AUTORESEARCH_SEEDs) and so
    is the candidate, one run at a time. The candidate is kept only when a
    one-sided test says, with the given confidence, that its true mean beats the
    baseline's by more than min_delta.

    Test: Welch's t-test. Why: only a handful of runs per side (so a z-test's
    normal approximation would be overconfident -- the t distribution pays for
    the uncertainty in the variance estimates), and a code change may change
    the run-to-run spread, so the two variances are not assumed equal. The
    Student t CDF is computed here from the regularized incomplete beta
    function (continued fraction), so scipy is not needed; Welch's
    non-integer degrees of freedom are fine for it.

    Early stop: after >= 2 candidate runs, if the mirror test says the candidate
    falls short of baseline + min_delta with the given confidence, it is
    discarded without spending the remaining runs. Otherwise the verdict is
    "continue" until `repeats` runs; only then can it be "keep". (No "can it
    still reach keep" bound is used: Gaussian noise has no worst case.)

    Edge cases (each is reported in Decision.statistic["test"]):
      - one side has a single score: its variance is unknown, so the other
        side's variance stands in for both ("pooled_t", df = that side's n - 1).
      - both sides have a single score (repeats 1): no noise estimate exists;
        the rule degrades to greedy, keep iff delta > min_delta ("strict").
        Set min_delta to the known noise level if you must use repeats 1.
      - both variances are zero (a deterministic metric): the difference is
        exact; keep iff delta > min_delta ("exact").
      - a non-finite candidate score (NaN/inf) discards the candidate at once;
        non-finite baseline scores are ignored, and with none left the
        candidate is discarded (nothing trustworthy to compare against).

Caveat of any per-candidate test: over many iterations that share one baseline
sample set, the errors are correlated -- an unlucky low baseline makes many
no-op candidates look better. The rate stays at most 1 - confidence on average
over baselines, not for every baseline. Re-scoring a newly kept baseline
(rather than reusing the winning candidate's scores) avoids the winner's curse.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..early_stop import EarlyStop
from ..early_stop import build as build_early_stop
from ..noise import Noise
from ..screen import Screen

DIRECTIONS = ("minimize", "maximize")
BASE_SEED = 42  # baseline run r gets BASE_SEED + r; the mutator of iteration i gets BASE_SEED + i
DEFAULT_KIND = "greedy"


@dataclass(frozen=True)
class Decision:
    verdict: Literal["keep", "discard", "continue"]
    reason: str
    statistic: dict[str, Any] | None = None


class Policy(ABC):
    kind: str
    repeats: int  # how many baseline scores are needed, and the most candidate runs
    reuses_kept_scores: bool  # may a keep's own scores stand in for the next baseline's (see runner_seed)?

    early_stop: EarlyStop | None  # policy.early_stop: stop a run whose progress curve is clearly worse
    screen: Screen | None = None  # policy.screen: a shorter run first, and a full one only for the promising
    pool_noise: bool = False  # does decide() use the noise pooled from the history? (the engine reads it only then)

    @abstractmethod
    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
               noise: Noise | None = None) -> Decision:
        """Judge the candidate from every score so far; "continue" asks for one more candidate run. noise: the
        runner's noise pooled from the task's history (the baseline's runs included), for policies that use it."""

    @property
    def max_runs(self) -> int:
        """The most candidate runs one decision may take."""
        return self.repeats

    @property
    def baseline_runs(self) -> int:
        """How many runs score a baseline."""
        return self.repeats

    def runner_seed(self, iteration: int, run: int) -> int:
        """AUTORESEARCH_SEED of run `run` of iteration `iteration` (0: the baseline's runs, BASE_SEED + r)."""
        return BASE_SEED + run


def kinds() -> list[str]:
    return sorted(name.replace("_", "-") for _, name, _ in pkgutil.iter_modules(__path__))


def keys(kind: str) -> tuple[str, ...]:
    """The policy.* keys valid for kind ("kind" included): what the schema, the tests and USAGE read."""
    return ("kind",) + tuple(importlib.import_module(f"{__name__}.{kind.replace('-', '_')}").KEYS)


def make_policy(spec: Mapping[str, Any] | None) -> Policy:
    """Build a policy from task.yaml's `policy` mapping (None or {} -> greedy with min_delta 0)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"policy: must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or kind not in kinds():
        *others, last = kinds()
        raise ValueError(f"policy.kind: unknown {kind!r} (expected {', '.join(others)} or {last})")
    allowed = keys(kind)
    for key in spec:
        if key not in allowed:
            elsewhere = [k for k in kinds() if k != kind and key in keys(k)]
            if elsewhere:
                raise ValueError(f"policy.{key}: not valid for kind {kind} (use kind {elsewhere[0]})"
                                 if kind != "greedy" else
                                 f"policy.{key}: not valid for kind greedy (it scores once; use kind {elsewhere[0]})")
            raise ValueError(f"policy.{key}: unknown key (expected one of: {', '.join(allowed)})")
    return importlib.import_module(f"{__name__}.{kind.replace('-', '_')}").build(spec)


def early_stop(spec: Mapping[str, Any]) -> EarlyStop | None:
    return build_early_stop(spec["early_stop"]) if "early_stop" in spec else None


def min_delta(spec: Mapping[str, Any]) -> float:
    value = spec.get("min_delta", 0.0)
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"policy.min_delta: must be a finite number >= 0, got {value!r}")
    return float(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_inputs(baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: must be minimize or maximize, got {direction!r}")
    if not baseline_scores or not candidate_scores:
        raise ValueError("decide() needs at least one baseline score and one candidate score")


def non_finite_decision(baseline: list[float], candidate_scores: Sequence[float]) -> Decision | None:
    """Discard on a NaN/inf candidate score or an all-non-finite baseline; None when both sides are usable."""
    for i, score in enumerate(candidate_scores):
        if not math.isfinite(score):
            return Decision("discard", f"candidate run {i + 1} scored {score}, not a finite number", None)
    if not baseline:
        return Decision("discard", "baseline has no finite score to compare against", None)
    return None


def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)
