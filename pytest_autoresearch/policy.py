"""Keep/discard policies: decide whether a candidate's scores beat the baseline's.

Two kinds, chosen by the `policy:` mapping of task.yaml:

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

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

DIRECTIONS = ("minimize", "maximize")
DEFAULT_REPEATS = 5
DEFAULT_CONFIDENCE = 0.95
ALLOWED_KEYS = {
    "greedy": ("kind", "min_delta"),
    "noise-aware": ("kind", "repeats", "confidence", "min_delta"),
}


@dataclass(frozen=True)
class Decision:
    verdict: Literal["keep", "discard", "continue"]
    reason: str
    statistic: dict[str, Any] | None = None


class Policy(ABC):
    kind: str
    repeats: int  # how many baseline scores are needed, and the most candidate runs

    @abstractmethod
    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> Decision:
        """Judge the candidate from every score so far; "continue" asks for one more candidate run."""


# ----------------------------------------------------------------------------
# Spec validation


def make_policy(spec: Mapping[str, Any] | None) -> Policy:
    """Build a policy from task.yaml's `policy` mapping (None or {} -> greedy with min_delta 0)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"policy: must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind", "greedy")
    if kind not in ALLOWED_KEYS:
        raise ValueError(f"policy.kind: unknown {kind!r} (expected greedy or noise-aware)")
    for key in spec:
        if key not in ALLOWED_KEYS[kind]:
            if kind == "greedy" and key in ALLOWED_KEYS["noise-aware"]:
                raise ValueError(f"policy.{key}: not valid for kind greedy (it scores once; use kind noise-aware)")
            raise ValueError(f"policy.{key}: unknown key (expected one of: {', '.join(ALLOWED_KEYS[kind])})")
    min_delta = spec.get("min_delta", 0.0)
    if not _is_number(min_delta) or not math.isfinite(min_delta) or min_delta < 0:
        raise ValueError(f"policy.min_delta: must be a finite number >= 0, got {min_delta!r}")
    if kind == "greedy":
        return GreedyPolicy(min_delta=float(min_delta))
    repeats = spec.get("repeats", DEFAULT_REPEATS)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"policy.repeats: must be an integer >= 1, got {repeats!r}")
    confidence = spec.get("confidence", DEFAULT_CONFIDENCE)
    if not _is_number(confidence) or not 0 < confidence < 1:
        raise ValueError(f"policy.confidence: must be a number strictly between 0 and 1, got {confidence!r}")
    return NoiseAwarePolicy(repeats=repeats, confidence=float(confidence), min_delta=float(min_delta))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_inputs(baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: must be minimize or maximize, got {direction!r}")
    if not baseline_scores or not candidate_scores:
        raise ValueError("decide() needs at least one baseline score and one candidate score")


def _non_finite_decision(baseline: list[float], candidate_scores: Sequence[float]) -> Decision | None:
    """Discard on a NaN/inf candidate score or an all-non-finite baseline; None when both sides are usable."""
    for i, score in enumerate(candidate_scores):
        if not math.isfinite(score):
            return Decision("discard", f"candidate run {i + 1} scored {score}, not a finite number", None)
    if not baseline:
        return Decision("discard", "baseline has no finite score to compare against", None)
    return None


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _variance(xs: Sequence[float], mean: float) -> float:
    return math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


# ----------------------------------------------------------------------------
# Greedy


@dataclass(frozen=True)
class GreedyPolicy(Policy):
    min_delta: float = 0.0
    kind: str = "greedy"
    repeats: int = 1

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> Decision:
        _check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := _non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        sign = 1.0 if direction == "maximize" else -1.0
        delta = sign * (_mean(candidate_scores) - _mean(baseline))
        statistic = {"test": "greedy", "delta": delta, "min_delta": self.min_delta,
                     "n_baseline": len(baseline), "n_candidate": len(candidate_scores)}
        if delta > self.min_delta:
            return Decision("keep", f"better by {delta:.4g} (> min_delta {self.min_delta:g})", statistic)
        return Decision("discard", f"not better: delta {delta:+.4g} (needs > {self.min_delta:g})", statistic)


# ----------------------------------------------------------------------------
# Noise-aware (one-sided Welch t-test with early stopping)


@dataclass(frozen=True)
class NoiseAwarePolicy(Policy):
    repeats: int = DEFAULT_REPEATS
    confidence: float = DEFAULT_CONFIDENCE
    min_delta: float = 0.0
    kind: str = "noise-aware"

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> Decision:
        _check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := _non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        alpha = 1.0 - self.confidence
        nb, nc = len(baseline), len(candidate_scores)
        mb, mc = _mean(baseline), _mean(candidate_scores)
        sign = 1.0 if direction == "maximize" else -1.0
        delta = sign * (mc - mb)  # positive = better, whatever the direction
        margin = delta - self.min_delta
        test, t, df = _t_statistic(baseline, mb, candidate_scores, mc, margin)
        if t is None:  # no noise estimate: the sign of the margin is the whole evidence
            p_better = 0.0 if margin > 0 else 1.0 if margin < 0 else 0.5
            p_worse = 1.0 - p_better
        else:  # both tails computed directly: 1 - p would lose the small p-values to rounding
            p_better, p_worse = student_t_sf(t, df), student_t_sf(-t, df)
        statistic = {"test": test, "t": t, "df": df, "p_value": p_better, "delta": delta,
                     "min_delta": self.min_delta, "confidence": self.confidence,
                     "n_baseline": nb, "n_candidate": nc, "mean_baseline": mb, "mean_candidate": mc}
        runs = f"{nc} of {self.repeats} runs"
        if nc >= self.repeats:
            if p_better < alpha:
                return Decision("keep", f"better by {delta:.4g} (p={p_better:.3g} < {alpha:.3g}, {runs})", statistic)
            return Decision("discard", f"not better with {self.confidence:g} confidence: delta {delta:+.4g} "
                                       f"(p={p_better:.3g} >= {alpha:.3g}, {runs})", statistic)
        if nc >= 2 and p_worse < alpha:
            return Decision("discard", f"worse: delta {delta:+.4g} falls short of min_delta {self.min_delta:g} "
                                       f"(p={p_worse:.3g} < {alpha:.3g}, stopped after {runs})", statistic)
        return Decision("continue", f"inconclusive after {runs}: delta {delta:+.4g} (p={p_better:.3g})", statistic)


def _t_statistic(baseline: Sequence[float], mb: float, candidate: Sequence[float], mc: float,
                 margin: float) -> tuple[str, float | None, float | None]:
    """(test name, t, df) for H1: true delta > min_delta; t and df are None when there is no noise estimate."""
    nb, nc = len(baseline), len(candidate)
    vb = _variance(baseline, mb) if nb >= 2 else None
    vc = _variance(candidate, mc) if nc >= 2 else None
    if vb is None and vc is None:
        return "strict", None, None
    if vb is None or vc is None:  # one side's spread stands in for both
        v = vb if vc is None else vc
        test, se2, df = "pooled_t", v / nb + v / nc, float((nb if vc is None else nc) - 1)
    else:
        test, se2 = "welch_t", vb / nb + vc / nc
        df = _welch_df(vb / nb, vc / nc, nb, nc) if se2 > 0 else None
    t = margin / math.sqrt(se2) if se2 > 0 else math.inf
    if not math.isfinite(t):  # no measurable spread: the difference is exact
        return "exact", None, None
    return test, t, df


def _welch_df(sb2: float, sc2: float, nb: int, nc: int) -> float:
    """Welch-Satterthwaite degrees of freedom, written with shares of se^2 so tiny variances cannot underflow to 0/0."""
    share_b, share_c = sb2 / (sb2 + sc2), sc2 / (sb2 + sc2)
    return 1.0 / (share_b ** 2 / (nb - 1) + share_c ** 2 / (nc - 1))


# ----------------------------------------------------------------------------
# Student t distribution (no scipy)


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df > 0 degrees of freedom (df may be fractional)."""
    if math.isnan(t) or not df > 0:
        raise ValueError(f"student_t_sf: need a number t and df > 0, got t={t}, df={df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    half_tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return half_tail if t > 0 else 1.0 - half_tail


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) via its continued fraction, using the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) for fast convergence."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float, max_terms: int = 300, eps: float = 1e-15) -> float:
    """Modified Lentz evaluation of the incomplete beta continued fraction."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result
