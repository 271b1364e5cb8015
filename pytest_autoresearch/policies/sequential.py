"""policy.kind `sequential` ({kind: sequential, confidence: 0.99, looks: [1, 2], max_runs: 2, discard_below: 1.0,
min_delta: 0.0, noise_sd: 0.00034, pool_noise: true, screen: {seconds: 100, noise_sd: 0.00068}}): decide most
candidates on one run, and buy more runs only for close calls; with `screen`, first a shorter run sorts out
the candidates not worth a full one (screen.py).

The candidate is judged at a schedule of looks (its run counts, `looks`, ending at `max_runs`). At each look
the gap to the baseline, less min_delta, is measured in standard errors, z = margin / (sd * sqrt(1/nb + 1/nc)):
  - keep when z clears the one-sided 1 - alpha/K quantile (alpha = 1 - confidence, K looks): by the union
    bound over the looks, a candidate no better than baseline + min_delta is kept at most alpha of the time;
  - discard at a look before the last when z < discard_below (the candidate is not ahead enough for more runs
    to be worth buying), and at the last look whenever it is not kept;
  - otherwise run once more.
Why these thresholds: most candidates of a search hurt, by several sds, and the gains that matter are several
sds too, so one run each settles nearly all of them; a Bonferroni split keeps the false-keep promise simple
and exact whatever the schedule, at a small cost in power over a tuned alpha-spending boundary.

The noise sd: the runner's noise pooled from the task's history with the candidate's own runs (pool_noise)
once it holds MIN_HISTORY_DF degrees of freedom, with Student's t for its uncertainty; before that the
measured `noise_sd` (taken as known); with neither, the history's few degrees of freedom (t), and with none
at all the candidate runs to its last look, whose own runs then give one.

The baseline is scored once (one run) and a keep's runs stand in for the next baseline, never re-measured:
they were selected for looking good, so the next comparisons are conservative (fewer false keeps, some power
lost), which the false-keep promise survives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..early_stop import EarlyStop
from ..noise import Noise
from ..screen import Screen
from ..screen import build as build_screen
from . import Decision, Policy, check_inputs, early_stop, is_number, mean, min_delta, non_finite_decision
from .noise_aware import student_t_sf

KEYS = ("confidence", "looks", "max_runs", "discard_below", "min_delta", "noise_sd", "pool_noise", "early_stop",
        "screen")
DEFAULT_CONFIDENCE = 0.99
DEFAULT_LOOKS = (1, 2)
DEFAULT_DISCARD_BELOW = 1.0
MOST_RUNS = 50          # per candidate: past it a typo, not a schedule
MIN_HISTORY_DF = 10     # the pooled history replaces noise_sd from here (t with df 10 is within 10 % of z)


def build(spec: Mapping[str, Any]) -> SequentialPolicy:
    confidence = spec.get("confidence", DEFAULT_CONFIDENCE)
    if not is_number(confidence) or not 0 < confidence < 1:
        raise ValueError(f"policy.confidence: must be a number strictly between 0 and 1, got {confidence!r}")
    looks = _looks(spec.get("looks", DEFAULT_LOOKS))
    max_runs = spec.get("max_runs", looks[-1])
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or not 1 <= max_runs <= MOST_RUNS:
        raise ValueError(f"policy.max_runs: must be an integer >= 1 and <= {MOST_RUNS}, got {max_runs!r}")
    if looks[-1] > max_runs:
        raise ValueError(f"policy.looks: a look at {looks[-1]} runs is past max_runs ({max_runs})")
    discard_below = spec.get("discard_below", DEFAULT_DISCARD_BELOW)
    if not is_number(discard_below) or not math.isfinite(discard_below):
        raise ValueError(f"policy.discard_below: must be a finite number (standard errors), got {discard_below!r}")
    pool_noise = spec.get("pool_noise", True)
    if not isinstance(pool_noise, bool):
        raise ValueError(f"policy.pool_noise: must be true or false, got {pool_noise!r}")
    noise_sd = spec.get("noise_sd")
    if noise_sd is not None and (not is_number(noise_sd) or not math.isfinite(noise_sd) or noise_sd <= 0):
        raise ValueError(f"policy.noise_sd: must be a finite number > 0, got {noise_sd!r}")
    if noise_sd is None and not pool_noise:
        raise ValueError("policy.noise_sd: needed when pool_noise is false (the thresholds need a noise sd)")
    schedule = looks if looks[-1] == max_runs else (*looks, max_runs)  # the last run is always a look
    return SequentialPolicy(confidence=float(confidence), looks=schedule, discard_below=float(discard_below),
                            min_delta=min_delta(spec), noise_sd=None if noise_sd is None else float(noise_sd),
                            pool_noise=pool_noise, early_stop=early_stop(spec),
                            screen=build_screen(spec["screen"]) if "screen" in spec else None)


def _looks(value: Any) -> tuple[int, ...]:
    ok = (isinstance(value, (list, tuple)) and value
          and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
          and all(a < b for a, b in zip(value, value[1:])))
    if not ok:
        raise ValueError(f"policy.looks: must be run counts >= 1 in increasing order, e.g. [1, 2], got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SequentialPolicy(Policy):
    confidence: float = DEFAULT_CONFIDENCE
    looks: tuple[int, ...] = DEFAULT_LOOKS  # the candidate run counts it judges at; the last is max_runs
    discard_below: float = DEFAULT_DISCARD_BELOW
    min_delta: float = 0.0
    noise_sd: float | None = None
    pool_noise: bool = True
    early_stop: EarlyStop | None = None
    screen: Screen | None = None
    kind: str = "sequential"
    repeats: int = 1
    # the baseline's runs are paid once: a keep's runs are the next baseline's (see the module's caveat)
    reuses_kept_scores: bool = True

    @property
    def max_runs(self) -> int:
        return self.looks[-1]

    def decide(self, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
               noise: Noise | None = None) -> Decision:
        """noise: the runner's noise pooled from the task's history (the baseline's runs included)."""
        check_inputs(baseline_scores, candidate_scores, direction)
        baseline = [s for s in baseline_scores if math.isfinite(s)]
        if (bad := non_finite_decision(baseline, candidate_scores)) is not None:
            return bad
        nb, nc = len(baseline), len(candidate_scores)
        final = nc >= self.max_runs
        if nc not in self.looks and not final:
            return Decision("continue", f"run {nc} of {self.max_runs}: no look here (looks at {list(self.looks)})")
        sd, df = self._noise(baseline, candidate_scores, noise)
        sign = 1.0 if direction == "maximize" else -1.0
        mb, mc = mean(baseline), mean(candidate_scores)
        delta = sign * (mc - mb)  # positive = better, whatever the direction
        look = self.looks.index(min(nc, self.max_runs)) + 1
        alpha_look = (1.0 - self.confidence) / len(self.looks)
        statistic = {"test": "sequential", "delta": delta, "min_delta": self.min_delta,
                     "confidence": self.confidence, "look": look, "looks": list(self.looks),
                     "max_runs": self.max_runs, "n_baseline": nb, "n_candidate": nc, "mean_baseline": mb,
                     "mean_candidate": mc, "noise_sd": sd, "noise_df": df}
        if sd is None:
            if final:
                return Decision("discard", f"no noise estimate after {nc} runs (set policy.noise_sd)", statistic)
            return Decision("continue", f"run {nc} of {self.max_runs}: no noise estimate yet", statistic)
        margin = delta - self.min_delta
        # no spread at all (a deterministic metric): the margin's sign is exact
        z = margin / (sd * math.sqrt(1 / nb + 1 / nc)) if sd > 0 else math.copysign(math.inf, margin) if margin else 0.0
        p_better = _upper_tail(z, df)
        statistic.update(z=z, p_value=p_better)
        at = f"look {look} of {len(self.looks)}, {nc} run{'s' if nc > 1 else ''}"
        if p_better < alpha_look:
            return Decision("keep", f"better by {delta:.4g} (z={z:.2f}, p={p_better:.3g} < {alpha_look:.3g}, {at})",
                            statistic)
        if final or z < self.discard_below:
            why = "not better" if final else f"not ahead enough to buy more runs (z < {self.discard_below:g})"
            return Decision("discard", f"{why}: delta {delta:+.4g} (z={z:.2f}, {at})", statistic)
        return Decision("continue", f"close call: delta {delta:+.4g} (z={z:.2f}, {at})", statistic)

    def _noise(self, baseline: Sequence[float], candidate: Sequence[float],
               history: Noise | None) -> tuple[float | None, float | None]:
        """(sd, df; None df = taken as known) of one run's score, or (None, None) when nothing estimates it."""
        if not self.pool_noise:
            return self.noise_sd, None
        pooled = (history or Noise(0.0, 0, 0)).with_groups(candidate)
        if history is None:  # the engine's history includes the baseline's runs; a bare call's does not
            pooled = pooled.with_groups(baseline)
        if pooled.df >= MIN_HISTORY_DF or (self.noise_sd is None and pooled.df >= 1):
            return math.sqrt(pooled.variance), float(pooled.df)
        return (self.noise_sd, None) if self.noise_sd is not None else (None, None)


def _upper_tail(z: float, df: float | None) -> float:
    """P(Z > z): the normal tail for a known sd (df None), Student's t for an estimated one."""
    if df is None:
        return 0.5 * math.erfc(z / math.sqrt(2.0))
    return student_t_sf(z, df)
