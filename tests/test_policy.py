"""Specification of the keep/discard policies (pytest_autoresearch/policy.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_autoresearch.policies import Decision, make_policy
from pytest_autoresearch.policies.greedy import GreedyPolicy
from pytest_autoresearch.policies.noise_aware import NoiseAwarePolicy, student_t_sf

# ----------------------------------------------------------------------------
# Student t distribution against closed forms


@pytest.mark.parametrize("t", [-30.0, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 4.0, 100.0])
def test_t_sf_matches_closed_forms(t):
    assert student_t_sf(t, 1.0) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12, abs=1e-15)  # Cauchy
    assert student_t_sf(t, 2.0) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-12, abs=1e-15)
    assert student_t_sf(t, 1e7) == pytest.approx(0.5 * math.erfc(t / math.sqrt(2)), rel=1e-5, abs=1e-12)


def test_t_sf_matches_tabulated_quantiles():
    assert student_t_sf(2.228138851986274, 10) == pytest.approx(0.025, rel=1e-9)  # t_{0.975, 10}
    assert student_t_sf(2.015048372669157, 5) == pytest.approx(0.05, rel=1e-9)  # t_{0.95, 5}


def test_t_sf_is_monotone_in_fractional_df():
    # heavier tails for fewer degrees of freedom, also between integers (Welch's df is fractional)
    tails = [student_t_sf(2.0, df) for df in (1.0, 1.5, 2.7, 4.2, 8.9, 30.0)]
    assert tails == sorted(tails, reverse=True)


# ----------------------------------------------------------------------------
# make_policy: defaults and validation


def test_defaults():
    assert make_policy(None) == GreedyPolicy(min_delta=0.0)
    assert make_policy({"kind": "greedy"}).repeats == 1
    policy = make_policy({"kind": "noise-aware"})
    assert (policy.kind, policy.repeats, policy.confidence, policy.min_delta) == ("noise-aware", 5, 0.95, 0.0)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "foo"}, "policy.kind: unknown 'foo' (expected greedy, noise-aware or sequential)"),
    ({"kind": "noise-aware", "repeats": 0}, "policy.repeats: must be an integer >= 1"),
    ({"kind": "noise-aware", "repeats": 2.5}, "policy.repeats: must be an integer >= 1"),
    ({"kind": "noise-aware", "repeats": "5"}, "policy.repeats: must be an integer >= 1"),
    ({"kind": "noise-aware", "repeats": True}, "policy.repeats: must be an integer >= 1"),
    ({"kind": "noise-aware", "confidence": 1.0}, "policy.confidence: must be a number strictly between 0 and 1"),
    ({"kind": "noise-aware", "confidence": 0}, "policy.confidence: must be a number strictly between 0 and 1"),
    ({"kind": "noise-aware", "min_delta": -0.1}, "policy.min_delta: must be a finite number >= 0"),
    ({"kind": "greedy", "min_delta": float("nan")}, "policy.min_delta: must be a finite number >= 0"),
    ({"kind": "noise-aware", "repeat": 5}, "policy.repeat: unknown key"),
    ({"kind": "greedy", "repeats": 3}, "policy.repeats: not valid for kind greedy"),
    (["greedy"], "policy: must be a mapping"),
])
def test_bad_spec_names_the_key_in_one_line(spec, message):
    with pytest.raises(ValueError) as excinfo:
        make_policy(spec)
    assert str(excinfo.value).startswith(message)
    assert "\n" not in str(excinfo.value)


def test_decide_rejects_unknown_direction_and_empty_scores():
    policy = make_policy({"kind": "noise-aware"})
    with pytest.raises(ValueError, match="direction"):
        policy.decide([1.0], [1.0], "max")
    with pytest.raises(ValueError, match="at least one"):
        policy.decide([1.0], [], "maximize")


# ----------------------------------------------------------------------------
# Greedy


@pytest.mark.parametrize("baseline, candidate, direction, min_delta, verdict", [
    (1.0, 1.1, "maximize", 0.0, "keep"),
    (1.0, 0.9, "maximize", 0.0, "discard"),
    (1.0, 0.9, "minimize", 0.0, "keep"),
    (1.0, 1.0, "minimize", 0.0, "discard"),  # a tie is not an improvement
    (1.0, 0.75, "minimize", 0.25, "discard"),  # exactly min_delta better is not "more than"
    (1.0, 0.7, "minimize", 0.25, "keep"),
])
def test_greedy(baseline, candidate, direction, min_delta, verdict):
    decision = GreedyPolicy(min_delta=min_delta).decide([baseline], [candidate], direction)
    assert decision.verdict == verdict
    signed = candidate - baseline if direction == "maximize" else baseline - candidate
    assert decision.statistic["delta"] == pytest.approx(signed)


# ----------------------------------------------------------------------------
# Noise-aware: single decisions and edge cases

BASE = [1.00, 1.02, 0.98, 1.01, 0.99]
POLICY = NoiseAwarePolicy()  # repeats 5, confidence 0.95, min_delta 0


def test_clear_improvement_is_kept_only_after_all_repeats():
    better = [0.90, 0.92, 0.88, 0.91, 0.89]  # 0.1 lower, minimize
    verdicts = [POLICY.decide(BASE, better[:n], "minimize").verdict for n in range(1, 6)]
    assert verdicts == ["continue"] * 4 + ["keep"]
    decision = POLICY.decide(BASE, better, "minimize")
    assert decision.statistic["test"] == "welch_t"
    assert decision.statistic["delta"] == pytest.approx(0.1)
    assert decision.statistic["p_value"] < 0.05
    assert "better by 0.1" in decision.reason and "p=" in decision.reason


def test_clearly_worse_candidate_stops_early_but_not_after_one_run():
    worse = [1.20, 1.21]
    assert POLICY.decide(BASE, worse[:1], "minimize").verdict == "continue"
    decision = POLICY.decide(BASE, worse, "minimize")
    assert decision.verdict == "discard" and "stopped after 2 of 5" in decision.reason


def test_min_delta_raises_the_bar():
    better = [0.90, 0.92, 0.88, 0.91, 0.89]
    assert NoiseAwarePolicy(min_delta=0.05).decide(BASE, better, "minimize").verdict == "keep"
    assert NoiseAwarePolicy(min_delta=0.15).decide(BASE, better, "minimize").verdict == "discard"


def test_statistic_is_strict_json():
    for candidate in ([0.9, 0.92], [1.0] * 5, [0.5]):
        for policy in (POLICY, NoiseAwarePolicy(repeats=1)):
            decision = policy.decide(BASE if policy.repeats > 1 else [1.0], candidate[:policy.repeats], "minimize")
            json.dumps(decision.statistic, allow_nan=False)


def test_nan_candidate_is_discarded_at_once():
    decision = POLICY.decide(BASE, [0.9, float("nan")], "minimize")
    assert decision.verdict == "discard" and "run 2" in decision.reason


def test_nan_baseline_scores_are_ignored():
    decision = POLICY.decide(BASE + [float("nan")], [0.90, 0.92, 0.88, 0.91, 0.89], "minimize")
    assert decision.verdict == "keep" and decision.statistic["n_baseline"] == 5
    assert POLICY.decide([float("nan")] * 5, [0.9] * 5, "minimize").verdict == "discard"


def test_single_repeat_falls_back_to_strict_improvement():
    policy = NoiseAwarePolicy(repeats=1, min_delta=0.01)
    assert policy.decide([1.0], [0.98], "minimize").verdict == "keep"
    assert policy.decide([1.0], [0.995], "minimize").verdict == "discard"
    assert policy.decide([1.0], [0.98], "minimize").statistic["test"] == "strict"


def test_single_candidate_run_borrows_the_baseline_spread():
    decision = NoiseAwarePolicy(repeats=1).decide(BASE, [0.5], "minimize")
    assert decision.verdict == "keep"
    assert decision.statistic["test"] == "pooled_t" and decision.statistic["df"] == 4


def test_deterministic_metric_is_compared_exactly():
    assert POLICY.decide([1.0] * 5, [0.999] * 5, "minimize").verdict == "keep"
    assert POLICY.decide([1.0] * 5, [1.0] * 5, "minimize").verdict == "discard"
    assert POLICY.decide([1.0] * 5, [1.001] * 2, "minimize").verdict == "discard"  # certainly worse: stop early
    assert POLICY.decide([1.0] * 5, [0.999] * 5, "minimize").statistic["test"] == "exact"


# ----------------------------------------------------------------------------
# Properties

scores = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
noise_aware = st.builds(NoiseAwarePolicy, repeats=st.integers(1, 6),
                        confidence=st.sampled_from([0.5, 0.9, 0.95, 0.99]), min_delta=st.sampled_from([0.0, 0.01, 1.0]))
policies = st.one_of(noise_aware, st.builds(GreedyPolicy, min_delta=st.sampled_from([0.0, 0.5])))
directions = st.sampled_from(["minimize", "maximize"])


@given(policy=policies, data=st.data(), direction=directions)
def test_never_continues_once_all_repeats_are_spent(policy, data, direction):
    baseline = data.draw(st.lists(scores, min_size=1, max_size=8))
    candidate = data.draw(st.lists(st.one_of(scores, st.just(float("nan"))),
                                   min_size=policy.repeats, max_size=policy.repeats))
    assert policy.decide(baseline, candidate, direction).verdict in ("keep", "discard")


@given(policy=policies, data=st.data(), direction=directions)
def test_direction_symmetry(policy, data, direction):
    baseline = data.draw(st.lists(scores, min_size=1, max_size=8))
    candidate = data.draw(st.lists(scores, min_size=1, max_size=policy.repeats))
    flipped = "maximize" if direction == "minimize" else "minimize"
    decision = policy.decide(baseline, candidate, direction)
    mirrored = policy.decide([-s for s in baseline], [-s for s in candidate], flipped)
    assert mirrored.verdict == decision.verdict
    assert mirrored.statistic["delta"] == decision.statistic["delta"]


@given(policy=policies, data=st.data(), direction=directions)
def test_candidate_identical_to_baseline_is_never_kept(policy, data, direction):
    baseline = data.draw(st.lists(scores, min_size=policy.repeats, max_size=policy.repeats))
    for n in range(1, policy.repeats + 1):  # the engine feeds the candidate's runs one at a time
        decision = policy.decide(baseline, baseline[:n], direction)
        assert decision.verdict != "keep"
        if decision.verdict == "discard":
            break


# ----------------------------------------------------------------------------
# Acceptance: a synthetic engine loop with Gaussian run-to-run noise
# A "session" scores the baseline R times, then runs 100 iterations, each drawing candidate scores one
# at a time (lower is better, like val_bpb) until decide() is not "continue".

SIGMA, LEVEL, ITERATIONS = 0.01, 1.0, 100


def keeps_in_session(policy, seed: int, improvement_sigmas: float, shared_baseline: bool) -> int:
    rng = np.random.default_rng([20240601, seed])
    kept = 0
    baseline = list(LEVEL + SIGMA * rng.standard_normal(policy.repeats))
    for _ in range(ITERATIONS):
        if not shared_baseline:
            baseline = list(LEVEL + SIGMA * rng.standard_normal(policy.repeats))
        candidate: list[float] = []
        decision = Decision("continue", "", None)
        while decision.verdict == "continue":
            candidate.append(float(LEVEL - improvement_sigmas * SIGMA + SIGMA * rng.standard_normal()))
            decision = policy.decide(baseline, candidate, "minimize")
        kept += decision.verdict == "keep"
    return kept


def session_keeps(spec, sessions, improvement_sigmas, shared_baseline) -> np.ndarray:
    policy = make_policy(spec)
    return np.array([keeps_in_session(policy, s, improvement_sigmas, shared_baseline) for s in range(sessions)])


def describe(name, keeps):
    print(f"\n{name}: keep_rate: {keeps.mean() / ITERATIONS:.4f} sessions: {len(keeps)} "
          f"first_session: {keeps[0]}/100 max: {keeps.max()}/100 min: {keeps.min()}/100 "
          f"sessions_over_5: {(keeps > 5).mean():.3f}")


NOISE_AWARE = {"kind": "noise-aware", "repeats": 5, "confidence": 0.95, "min_delta": 0.0}


def test_noise_aware_false_keep_rate_fresh_baseline():
    # every iteration compared against its own fresh baseline sample: the test's nominal level must hold
    keeps = session_keeps(NOISE_AWARE, sessions=400, improvement_sigmas=0.0, shared_baseline=False)
    describe("noise-aware no-change fresh-baseline", keeps)
    assert keeps.mean() / ITERATIONS <= 0.05


def test_noise_aware_false_keep_rate_shared_baseline():
    # the realistic case: one baseline sample set serves all 100 iterations of a session, so its luck is
    # shared. Averaged over sessions the level still holds (a 1 % tolerance covers the heavy-tailed
    # spread between sessions); single sessions with an unlucky baseline keep far more (see report).
    keeps = session_keeps(NOISE_AWARE, sessions=500, improvement_sigmas=0.0, shared_baseline=True)
    describe("noise-aware no-change shared-baseline", keeps)
    assert keeps.mean() / ITERATIONS <= 0.06
    assert np.median(keeps) <= 5


@pytest.mark.parametrize("shared_baseline", [True, False])
def test_noise_aware_keeps_real_improvements(shared_baseline):
    keeps = session_keeps(NOISE_AWARE, sessions=30, improvement_sigmas=3.0, shared_baseline=shared_baseline)
    describe(f"noise-aware 3-sigma {'shared' if shared_baseline else 'fresh'}-baseline", keeps)
    assert keeps.min() >= 80  # every session, not just on average


def test_greedy_keeps_noise():
    # greedy is the baseline that noise-aware exists to beat: it keeps about half of the no-op changes
    keeps = session_keeps({"kind": "greedy"}, sessions=200, improvement_sigmas=0.0, shared_baseline=False)
    shared = session_keeps({"kind": "greedy"}, sessions=200, improvement_sigmas=0.0, shared_baseline=True)
    describe("greedy no-change fresh-baseline", keeps)
    describe("greedy no-change shared-baseline", shared)
    assert keeps.mean() / ITERATIONS > 0.30 and shared.mean() / ITERATIONS > 0.30


def test_greedy_keeps_real_improvements():
    keeps = session_keeps({"kind": "greedy"}, sessions=30, improvement_sigmas=3.0, shared_baseline=True)
    describe("greedy 3-sigma shared-baseline", keeps)
    assert keeps.mean() / ITERATIONS >= 0.80
