"""policy.kind `noise-aware` ({kind: noise-aware, repeats: 5, confidence: 0.95, min_delta: 0.0, max_repeats: 10,
pool_noise: true}): a one-sided t-test over repeated runs, its noise pooled from the task's history where that
holds enough runs, a second look at max_repeats runs when the first is inconclusive, and early stopping (the
test, its edge cases and caveats: see the package)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..early_stop import EarlyStop
from ..noise import Noise
from . import BASE_SEED, Decision, Policy, check_inputs, early_stop, is_number, mean, min_delta, non_finite_decision

KEYS = ("repeats", "confidence", "min_delta", "max_repeats", "pool_noise", "early_stop")
DEFAULT_REPEATS = 5
DEFAULT_CONFIDENCE = 0.95
MAX_REPEATS = 50  # runs per side: past it a typo (repeats: 10000 ran 3,025 baseline runs before it was stopped)
MIN_HISTORY_DF = 4        # pooled noise is used once the history holds this many degrees of freedom
FIRST_LOOK_SHARE = 0.2   # of 1 - confidence, spent at the first look when there are two
SPREAD_DIFFERS_P = 0.01   # two-sided F-test: a candidate this unlike the pooled spread gets Welch's test


def build(spec: Mapping[str, Any]) -> NoiseAwarePolicy:
    delta = min_delta(spec)
    repeats = spec.get("repeats", DEFAULT_REPEATS)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"policy.repeats: must be an integer >= 1, got {repeats!r}")
    if repeats > MAX_REPEATS:
        raise ValueError(f"policy.repeats: must be at most {MAX_REPEATS} (runs per side), got {repeats}")
    confidence = spec.get("confidence", DEFAULT_CONFIDENCE)
    if not is_number(confidence) or not 0 < confidence < 1:
        raise ValueError(f"policy.confidence: must be a number strictly between 0 and 1, got {confidence!r}")
    max_repeats = spec.get("max_repeats", 2 * repeats)
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < repeats:
        raise ValueError(f"policy.max_repeats: must be an integer >= repeats ({repeats}), got {max_repeats!r}")
    if max_repeats > 2 * MAX_REPEATS:
        raise ValueError(f"policy.max_repeats: must be at most {2 * MAX_REPEATS}, got {max_repeats}")
    pool_noise = spec.get("pool_noise", True)
    if not isinstance(pool_noise, bool):
        raise ValueError(f"policy.pool_noise: must be true or false, got {pool_noise!r}")
    return NoiseAwarePolicy(repeats=repeats, confidence=float(confidence), min_delta=delta, max_repeats=max_repeats,
                            pool_noise=pool_noise, early_stop=early_stop(spec))



@dataclass(frozen=True)
class NoiseAwarePolicy(Policy):
    repeats: int = DEFAULT_REPEATS
    confidence: float = DEFAULT_CONFIDENCE
    min_delta: float = 0.0
    max_repeats: int | None = None  # None: repeats (one look)
    pool_noise: bool = True
    early_stop: EarlyStop | None = None
    kind: str = "noise-aware"
    # a keep's scores were selected for looking good (the winner's curse): its content is scored afresh
    reuses_kept_scores: bool = False

    def runner_seed(self, iteration: int, run: int) -> int:
        """Candidates draw seeds of their own, BASE_SEED + M*i + r with M = max_runs: the re-scoring of a keep as
        the next baseline (BASE_SEED + r, r < M) must draw fresh noise rather than replay the seeds the candidate
        won with, and no two candidates' runs share a seed."""
        return BASE_SEED + run if iteration == 0 else BASE_SEED + self.max_runs * iteration + run

    @property
    def max_runs(self) -> int:
        return self.max_repeats or self.repeats

    @property
    def baseline_runs(self) -> int:
        # a baseline serves every candidate until a keep: scoring it as often as a candidate's second look costs
        # little per candidate, and a baseline mean of 3 runs would cap what either look can see
        return self.max_runs

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
               noise: Noise | None = None) -> Decision:
        """noise: the runner's noise pooled from the task's history (the baseline's runs included, the
        candidate's not); used when pool_noise is on and it holds at least MIN_HISTORY_DF degrees of freedom."""
        check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        alpha = 1.0 - self.confidence
        nb, nc = len(baseline), len(candidate_scores)
        # two looks (at repeats, then at max_runs) share alpha (Bonferroni: the false-keep rate stays <= alpha);
        # the first gets the smaller share, since a candidate it cannot keep yet may still be kept at the second
        looks = 2 if self.max_runs > self.repeats else 1
        second_look = looks == 2 and nc > self.repeats
        alpha_look = alpha if looks == 1 else alpha * (1 - FIRST_LOOK_SHARE if second_look else FIRST_LOOK_SHARE)
        mb, mc = mean(baseline), mean(candidate_scores)
        sign = 1.0 if direction == "maximize" else -1.0
        delta = sign * (mc - mb)  # positive = better, whatever the direction
        margin = delta - self.min_delta
        history = noise if self.pool_noise and noise is not None and noise.df >= MIN_HISTORY_DF else None
        test, t, df, pooled = _t_statistic(baseline, mb, candidate_scores, mc, margin, history)
        if t is None:  # no noise estimate: the sign of the margin is the whole evidence
            p_better = 0.0 if margin > 0 else 1.0 if margin < 0 else 0.5
            p_worse = 1.0 - p_better
        else:  # both tails computed directly: 1 - p would lose the small p-values to rounding
            p_better, p_worse = student_t_sf(t, df), student_t_sf(-t, df)
        statistic = {"test": test, "t": t, "df": df, "p_value": p_better, "delta": delta,
                     "min_delta": self.min_delta, "confidence": self.confidence, "looks": looks,
                     "max_runs": self.max_runs,
                     "n_baseline": nb, "n_candidate": nc, "mean_baseline": mb, "mean_candidate": mc}
        if pooled is not None:
            statistic.update(noise_sd=math.sqrt(pooled.variance), noise_df=pooled.df)
        runs = f"{nc} of {self.repeats} runs" if looks == 1 else f"{nc} runs (looks at {self.repeats} and {self.max_runs})"
        at_a_look = nc >= self.repeats and (nc == self.repeats or nc >= self.max_runs)
        if at_a_look and p_better < alpha_look:
            return Decision("keep", f"better by {delta:.4g} (p={p_better:.3g} < {alpha_look:.3g}, {runs})", statistic)
        if nc >= 2 and p_worse < alpha:
            return Decision("discard", f"worse: delta {delta:+.4g} falls short of min_delta {self.min_delta:g} "
                                       f"(p={p_worse:.3g} < {alpha:.3g}, stopped after {runs})", statistic)
        # after the first look, run on only while the candidate is ahead: a second look can then still keep it
        if nc >= self.max_runs or (nc >= self.repeats and p_better >= 0.5):
            return Decision("discard", f"not better with {self.confidence:g} confidence: delta {delta:+.4g} "
                                       f"(p={p_better:.3g} >= {alpha_look:.3g}, {runs})", statistic)
        return Decision("continue", f"inconclusive after {runs}: delta {delta:+.4g} (p={p_better:.3g})", statistic)


def _t_statistic(baseline: Sequence[float], mb: float, candidate: Sequence[float], mc: float, margin: float,
                 history: Noise | None) -> tuple[str, float | None, float | None, Noise | None]:
    """(test name, t, df, pooled noise) for H1: true delta > min_delta; t and df are None when there is no noise
    estimate. With a history, one pooled variance serves both sides (df from every run on record), unless the
    candidate's own spread is clearly unlike it: a change may change the noise, and then Welch's test is used."""
    nb, nc = len(baseline), len(candidate)
    vb = _variance(baseline, mb) if nb >= 2 else None
    vc = _variance(candidate, mc) if nc >= 2 else None
    if history is not None and history.variance > 0 and not (vc is not None and _spread_differs(vc, nc, history)):
        pooled = history.with_groups(candidate)
        se2 = pooled.variance * (1 / nb + 1 / nc)
        return "pooled_history_t", margin / math.sqrt(se2), float(pooled.df), pooled
    test, t, df = _sample_t(vb, nb, vc, nc, margin)
    if history is not None and history.variance > 0:
        test += " (the candidate's spread differs from the pooled noise)"
    return test, t, df, None


def _spread_differs(candidate_variance: float, nc: int, history: Noise) -> bool:
    """Two-sided F-test of the candidate's variance against the history's, at SPREAD_DIFFERS_P."""
    f, d1, d2 = candidate_variance / history.variance, nc - 1, history.df
    upper = _regularized_beta(d2 / (d2 + d1 * f), d2 / 2.0, d1 / 2.0)  # P(F > f)
    return 2 * min(upper, 1.0 - upper) < SPREAD_DIFFERS_P


def _sample_t(vb: float | None, nb: int, vc: float | None, nc: int,
              margin: float) -> tuple[str, float | None, float | None]:
    """(test name, t, df) from the two samples alone."""
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
