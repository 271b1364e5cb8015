"""Research per GPU-hour (issue 21; CPU, simulated, seconds): an overnight session of candidates whose true
effects on val_bpb are drawn from a distribution fitted to the upstream's published session, run through the
engine's own policy objects (make_policy(...).decide(...), the noise pooled by noise.task_noise), with the
same candidates in the same order, and the same noise for a candidate's r-th run, under every policy.

Usage: python tests/bench_research.py [--seeds 200] [--gpu-hours 8] [--noise-sd 0.00034] [--world fitted|issue]
[--screen 1,2,3]. Prints, per policy (the shipped one's screen, policy.screen, at several assumed agreements): true
improvement of val_bpb (the sum of the kept candidates' true effects), keeps, phantom keeps (kept with a true
effect >= 0), runs per decision, decisions, and true improvement per GPU-hour with its ratio to the ritual's
(BENCHMARKS.md §13).

The fitted world (FITTED). The upstream's session karpathy/autoresearch, branch exp/H100/mar8, results.tsv:
124 judged experiments on one H100 at 300 s, one run each, seed 42, a keep being any improvement. Each
experiment's observed delta is its val_bpb less the best kept before it (the crash left out, and the one broken
run, weight tying at +2.24, treated as a crash: any policy discards it on one run). Model: delta = effect +
noise, noise ~ N(0, 2 sd^2) (two single runs, sd 0.00034, BENCHMARKS §3.3); effect = -LogNormal(help) with
probability p_help, else +LogNormal(hurt). Fitted by maximum likelihood (the convolution integrated on a log
grid of effect sizes; a grid search, then a random local search): p_help 0.062, helping median 0.00125
(log-sd 1.42), hurting median 0.00055 (log-sd 1.25). The likelihood is flat in p_help from 0.05 to 0.15
(within 1 nat: fewer, larger gains or more, smaller ones); the issue's calibration (ISSUE below) is 5.8
nats less likely. Two biases, stated rather than corrected: a delta after a keep is measured against a
score selected for looking good (the winner's curse), which moves deltas up (more, larger hurts); and the
session's gains came early (halving the batch: -0.0119), where the model draws effects independently of
the order.

Assumed, not measured: effects add up, independent of each other and of what was kept before; a run's score
is the true value plus Gaussian noise of sd noise_sd, independent between runs (a candidate's r-th run draws
the same noise under every policy); early stopping and crashes are not modelled.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_autoresearch.noise import task_noise
from pytest_autoresearch.policies import Policy, make_policy

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Effects:
    """A two-part distribution of candidates' true effects on val_bpb (negative = better)."""
    p_help: float
    help_median: float
    help_log_sd: float
    hurt_median: float
    hurt_log_sd: float

    def draw(self, rng: random.Random) -> float:
        if rng.random() < self.p_help:
            return -self.help_median * math.exp(self.help_log_sd * rng.gauss(0.0, 1.0))
        return self.hurt_median * math.exp(self.hurt_log_sd * rng.gauss(0.0, 1.0))


FITTED = Effects(p_help=0.062, help_median=0.00125, help_log_sd=1.42, hurt_median=0.00055, hurt_log_sd=1.25)
# the issue's fallback calibration (20 % help, median -0.0004, heavy-tailed; 80 % hurt, median +0.001); the
# issue gives no spreads: log-sd 1.0 (help, heavy tail) and 0.8 (hurt) are this benchmark's choice
ISSUE = Effects(p_help=0.20, help_median=0.0004, help_log_sd=1.0, hurt_median=0.001, hurt_log_sd=0.8)
WORLDS = {"fitted": FITTED, "issue": ISSUE}


@dataclass(frozen=True)
class Setup:
    effects: Effects = FITTED
    noise_sd: float = 0.00034     # run-to-run sd of val_bpb: H100, 300 s (BENCHMARKS §3.3)
    budget_s: float = 300.0       # the training budget of one run
    overhead_s: float = 28.7      # measured warm overhead per run (H200, BENCHMARKS §5)
    gpu_hours: float = 8.0

    @property
    def run_s(self) -> float:
        return self.budget_s + self.overhead_s


# the three policies side by side: the upstream's ritual, train-bpb-search before issue 21, and what it ships now
RITUAL = {"kind": "greedy"}
TODAY = {"kind": "noise-aware", "repeats": 3, "confidence": 0.95, "min_delta": 0.0, "max_repeats": 6,
         "pool_noise": True}


def shipped_policy() -> dict[str, Any]:
    """experiments/train-bpb-search's policy as it ships, less early_stop (not modelled here)."""
    task = yaml.safe_load((REPO_ROOT / "experiments/train-bpb-search/task.yaml").read_text(encoding="utf-8"))
    return {key: value for key, value in task["policy"].items() if key != "early_stop"}


@dataclass
class Session:
    """What one simulated session did."""
    gain: float = 0.0                  # true improvement of val_bpb: minus the sum of the kept true effects
    keeps: int = 0
    phantoms: int = 0                  # keeps whose true effect is >= 0
    runs_per_decision: list[int] = field(default_factory=list)  # candidate runs (baseline runs not included)
    gpu_s: float = 0.0


def run_noise(seed: int, sd: float) -> Callable[[str, int, int], float]:
    """The noise of run r of item i ('candidate' i, or the baseline scored after i keeps), the same for every
    policy: drawn from its own seeded stream."""
    def noise(what: str, i: int, r: int) -> float:
        return random.Random(f"{seed}/{what}/{i}/{r}").gauss(0.0, sd)
    return noise


def full_runs(policy: Policy, baseline: list[float], records: list[dict[str, Any]], score: Callable[[int], float],
              setup: Setup, out: Session) -> tuple[list[float], str] | None:
    """A candidate's full runs (score(r) is run r's val_bpb) until decide() stops asking, at most policy.max_runs
    (still undecided after them: a discard), each charged to out.gpu_s; recorded in records. None when the
    budget cannot pay the next run: the candidate is not decided."""
    pooled = task_noise([*records, {"scores": baseline}]) if policy.pool_noise else None
    scores: list[float] = []
    verdict = "continue"
    while verdict == "continue" and len(scores) < policy.max_runs:
        if out.gpu_s + setup.run_s > setup.gpu_hours * 3600.0:
            return None
        out.gpu_s += setup.run_s
        scores.append(score(len(scores)))
        verdict = policy.decide(baseline, scores, "minimize", pooled).verdict
    records.append({"status": verdict, "scores": scores, "baseline_scores": baseline})
    return scores, verdict


def simulate(policy: Policy, setup: Setup, seed: int) -> Session:
    """One session of setup.gpu_hours under policy, the engine's order of things: the baseline scored when no
    scores on record stand for it (policy.baseline_runs runs), the candidate run until decide() stops asking
    (at most policy.max_runs; still undecided after them is a discard), a keep's runs reused as the next
    baseline's where the policy allows; a candidate the budget cannot finish is not decided."""
    rng, noise = random.Random(f"{seed}/effects"), run_noise(seed, setup.noise_sd)
    budget, out = setup.gpu_hours * 3600.0, Session()
    records: list[dict[str, Any]] = []
    true_score, baseline, rescored = 0.0, None, 0  # val_bpb relative to the start; the current baseline's scores
    i = 0
    while True:
        if baseline is None:
            if out.gpu_s + policy.baseline_runs * setup.run_s > budget:
                return out
            baseline = [true_score + noise("baseline", rescored, r) for r in range(policy.baseline_runs)]
            out.gpu_s += policy.baseline_runs * setup.run_s
            rescored += 1
            records.append({"status": "baseline", "scores": baseline, "baseline_scores": baseline})
        effect = setup.effects.draw(rng)
        judged = full_runs(policy, baseline, records,
                           lambda r: true_score + effect + noise("candidate", i, r), setup, out)
        if judged is None:
            return out
        scores, verdict = judged
        out.runs_per_decision.append(len(scores))
        if verdict == "keep":
            true_score += effect
            out.gain -= effect
            out.keeps += 1
            out.phantoms += effect >= 0
            baseline = scores if policy.reuses_kept_scores and len(scores) >= policy.baseline_runs else None
        i += 1


SCREEN_NOISE_FACTOR = 2.0  # assumed until the GPU issue measures it: a 100 s run's sd is twice a 300 s run's


def simulate_screened(policy: Policy, setup: Setup, seed: int, noise_factor: float = SCREEN_NOISE_FACTOR) -> Session:
    """simulate()'s session under a policy with a screen (policy.screen, the engine's own rule): each candidate
    first runs for screen.seconds, and only one the screen promotes is judged on full runs by the policy. A screen
    run sees the full run's true effect through noise noise_factor times the full run's sd: how well the short
    budget ranks candidates, in one number (1: as well as a full run; larger: worse agreement), assumed rather
    than measured. It costs screen.seconds plus the overhead. The baseline's screen run is paid once; a keep's
    screen score and full runs become the two baselines, as in the engine. The same candidates and full-run noise
    as simulate() with the same seed."""
    screen = policy.screen
    assert screen is not None, "simulate_screened needs a policy with a screen"
    rng, noise = random.Random(f"{seed}/effects"), run_noise(seed, setup.noise_sd)
    screen_noise = run_noise(seed, setup.noise_sd * noise_factor)
    screen_s, budget, out = screen.seconds + setup.overhead_s, setup.gpu_hours * 3600.0, Session()
    if screen_s + setup.run_s > budget:
        return out
    true_score, i = 0.0, 0
    screen_baseline, baseline = screen_noise("baseline", 0, 0), [noise("baseline", 0, 0)]
    out.gpu_s += screen_s + setup.run_s
    records: list[dict[str, Any]] = [{"status": "baseline", "scores": baseline, "baseline_scores": baseline}]
    while True:
        effect = setup.effects.draw(rng)
        if out.gpu_s + screen_s > budget:
            return out
        out.gpu_s += screen_s
        screened = true_score + effect + screen_noise("candidate", i, 0)
        runs = 1
        if screen.judge(screen_baseline, screened, "minimize")["promoted"]:
            judged = full_runs(policy, baseline, records,
                               lambda r: true_score + effect + noise("candidate", i, r), setup, out)
            if judged is None:
                return out
            scores, verdict = judged
            runs += len(scores)
            if verdict == "keep":
                true_score += effect
                out.gain -= effect
                out.keeps += 1
                out.phantoms += effect >= 0
                screen_baseline, baseline = screened, scores
        out.runs_per_decision.append(runs)
        i += 1


def simulate_any(policy: Policy, setup: Setup, seed: int, noise_factor: float = SCREEN_NOISE_FACTOR) -> Session:
    return simulate_screened(policy, setup, seed, noise_factor) if policy.screen else simulate(policy, setup, seed)


@dataclass(frozen=True)
class Summary:
    name: str
    gain: float            # mean over sessions
    keeps: float
    phantom_share: float   # phantoms / keeps, over all sessions
    runs_median: float
    runs_mean: float
    decisions: float
    gain_per_gpu_hour: float


def summarize(name: str, sessions: Sequence[Session]) -> Summary:
    runs = [n for s in sessions for n in s.runs_per_decision]
    keeps = sum(s.keeps for s in sessions)
    hours = statistics.fmean(s.gpu_s for s in sessions) / 3600.0
    gain = statistics.fmean(s.gain for s in sessions)
    return Summary(name, gain, keeps / len(sessions), sum(s.phantoms for s in sessions) / max(keeps, 1),
                   statistics.median(runs), statistics.fmean(runs), len(runs) / len(sessions), gain / hours)


def compare(specs: Mapping[str, Mapping[str, Any]], setup: Setup, seeds: Sequence[int]) -> dict[str, Summary]:
    """Each policy's summary over the same sessions (seeds); a policy with a screen at the assumed agreement."""
    return {name: summarize(name, [simulate_any(make_policy(spec), setup, seed) for seed in seeds])
            for name, spec in specs.items()}


def policies() -> dict[str, Mapping[str, Any]]:
    shipped = shipped_policy()
    return {"ritual (greedy, 1 run)": RITUAL, "train-bpb-search before (noise-aware 3/6)": TODAY,
            "sequential alone (train-bpb-search now, no screen)": without_screen(shipped),
            "train-bpb-search now (100 s screen, then sequential)": shipped}


def without_screen(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != "screen"}


def screened(factors: Sequence[float], setup: Setup, seeds: Sequence[int]) -> dict[str, Summary]:
    """The shipped policy, its screen included, one summary per assumed noise factor of the screen's runs."""
    policy = make_policy(shipped_policy())
    return {f"screen {f:g}": summarize(f"train-bpb-search now, screen runs' noise × {f:g}",
                                       [simulate_screened(policy, setup, seed, f) for seed in seeds])
            for f in factors}


def table(summaries: Mapping[str, Summary]) -> str:
    """The summaries side by side; the first is the ritual that the last column divides by."""
    ritual = next(iter(summaries.values())).gain_per_gpu_hour
    lines = ["| policy | true improvement | keeps | phantom keeps | runs per decision (median / mean) | decisions "
             "| per GPU-hour | × ritual |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries.values():
        lines.append(f"| {s.name} | {s.gain:.4f} | {s.keeps:.1f} | {s.phantom_share:.1%} | {s.runs_median:g} / "
                     f"{s.runs_mean:.2f} | {s.decisions:.1f} | {s.gain_per_gpu_hour:.5f} | "
                     f"{s.gain_per_gpu_hour / ritual:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--gpu-hours", type=float, default=8.0)
    parser.add_argument("--noise-sd", type=float, default=0.00034)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--overhead-s", type=float, default=28.7)
    parser.add_argument("--world", choices=sorted(WORLDS), default="fitted")
    parser.add_argument("--screen", default="1,2,3",
                        help="noise factors of a 100 s screen to add as rows (assumed; empty: none)")
    args = parser.parse_args()
    setup = Setup(WORLDS[args.world], args.noise_sd, args.budget_s, args.overhead_s, args.gpu_hours)
    print(f"world {args.world}: {setup.effects}; noise sd {setup.noise_sd}; {setup.run_s:g} s a run; "
          f"{setup.gpu_hours:g} GPU-hours; seeds 0..{args.seeds - 1}")
    seeds = range(args.seeds)
    factors = [float(f) for f in args.screen.split(",") if f]
    print(table({**compare(policies(), setup, seeds), **screened(factors, setup, seeds)}))


if __name__ == "__main__":
    main()
