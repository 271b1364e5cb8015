"""policy.kind `noise-aware` ({kind: noise-aware, repeats: 5, confidence: 0.95, min_delta: 0.0}): a one-sided
Welch t-test over repeated runs, with early stopping (the test, its edge cases and caveats: see the package)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import BASE_SEED, Decision, Policy, check_inputs, is_number, mean, min_delta, non_finite_decision

KEYS = ("repeats", "confidence", "min_delta")
DEFAULT_REPEATS = 5
DEFAULT_CONFIDENCE = 0.95


def build(spec: Mapping[str, Any]) -> NoiseAwarePolicy:
    delta = min_delta(spec)
    repeats = spec.get("repeats", DEFAULT_REPEATS)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"policy.repeats: must be an integer >= 1, got {repeats!r}")
    confidence = spec.get("confidence", DEFAULT_CONFIDENCE)
    if not is_number(confidence) or not 0 < confidence < 1:
        raise ValueError(f"policy.confidence: must be a number strictly between 0 and 1, got {confidence!r}")
    return NoiseAwarePolicy(repeats=repeats, confidence=float(confidence), min_delta=delta)



@dataclass(frozen=True)
class NoiseAwarePolicy(Policy):
    repeats: int = DEFAULT_REPEATS
    confidence: float = DEFAULT_CONFIDENCE
    min_delta: float = 0.0
    kind: str = "noise-aware"
    # a keep's scores were selected for looking good (the winner's curse): its content is scored afresh
    reuses_kept_scores: bool = False

    def runner_seed(self, iteration: int, run: int) -> int:
        """Candidates draw seeds of their own, BASE_SEED + R*i + r: the re-scoring of a keep as the next baseline
        (BASE_SEED + r) must draw fresh noise rather than replay the seeds the candidate won with."""
        return BASE_SEED + run if iteration == 0 else BASE_SEED + self.repeats * iteration + run

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str) -> Decision:
        check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        alpha = 1.0 - self.confidence
        nb, nc = len(baseline), len(candidate_scores)
        mb, mc = mean(baseline), mean(candidate_scores)
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


def _variance(xs: Sequence[float], mean: float) -> float:
    return math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
