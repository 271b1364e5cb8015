"""policy.early_stop's rule (issue 12): a run clearly worse than the baseline's curves at the same progress is
stopped, one that would have been kept almost never is. Synthetic curves with train.py's shape, and the real
H200 curves of tests/data/curves/ (three seeds of the default train.py and four one-change candidates, 100 s)."""

from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path

import pytest

from pytest_autoresearch.early_stop import EarlyStop, at, build, smooth

TRAIN_PY = {"pattern": r"\((?P<progress>[\d.]+)%\) \| loss (?P<value>[\d.]+)"}
CURVES = Path(__file__).parent / "data" / "curves"


def lines(curve):
    return [f"step {i:05d} ({p:.1f}%) | loss {v:.6f} | lrm 1.00" for i, (p, v) in enumerate(curve)]


def first_stop(rule: EarlyStop, baselines, candidate_lines):
    watcher = rule.watcher(baselines)
    for line in candidate_lines:
        if (evidence := watcher.feed(line)) is not None:
            return evidence
    return None


def real_curve(name: str):
    rule = build(TRAIN_PY)
    return [point for line in (CURVES / name).read_text().splitlines() if (point := rule.point(line))]


def test_the_real_h200_curves_parse_and_no_seed_is_stopped_against_the_other_two():
    rule = build(TRAIN_PY)
    curves = {name.name: real_curve(name.name) for name in sorted(CURVES.glob("h200-100s-seed*.txt"))}
    assert len(curves) == 3 and all(len(c) >= 30 and c[-1][0] > 95 for c in curves.values())
    for name, curve in curves.items():
        others = [c for n, c in curves.items() if n != name]
        assert first_stop(rule, others, lines(curve)) is None, name
        # the same run made 0.4 nats worse (what a broken learning rate costs) is stopped early. (These curves
        # come from two machines whose step rates differ by 2 %, so the band, set by the baselines' spread at
        # equal progress, is 0.08-0.30 nats wide here; runs of one machine agree more closely.)
        worse = [(p, v + (0.4 if p >= 10 else 0.0)) for p, v in curve]
        evidence = first_stop(rule, others, lines(worse))
        assert evidence is not None and evidence["progress"] < 40, name


def val_bpb(name: str) -> float:
    """The val_bpb its run ended with, from the curve file's header line."""
    return float(re.search(r"val_bpb ([\d.]+)", (CURVES / name).read_text().partition("\n")[0])[1])


def test_no_real_h200_candidate_that_beat_the_baseline_is_stopped_against_its_three_seeds():
    # Four one-change candidates of train.py (BENCHMARKS.md §8): two ended better than every baseline seed
    # (TOTAL_BATCH_SIZE 2**18, MATRIX_LR 0.08), two worse (MATRIX_LR 0.02, DEPTH 6). A keeper must run on.
    rule = build(TRAIN_PY)
    seeds = sorted(CURVES.glob("h200-100s-seed*.txt"))
    candidates = sorted(CURVES.glob("h200-100s-cand-*.txt"))
    assert len(seeds) == 3 and len(candidates) == 4
    baselines = [real_curve(n.name) for n in seeds]
    keepers = [n.name for n in candidates if val_bpb(n.name) < min(val_bpb(s.name) for s in seeds)]
    assert len(keepers) == 2
    for name in keepers:
        assert first_stop(rule, baselines, lines(real_curve(name))) is None, name


STEPS = {"pattern": r"step (?P<progress>\d+) \([\d.]+%\) \| loss (?P<value>[\d.]+)", "min_progress": 64}


def stops(spec: dict, seeds: list[str]) -> dict[str, float | None]:
    """Each real candidate's stop, as the percent of its run done (None: it ran to the end), against these seeds."""
    rule = build(spec)
    baselines = [[p for line in (CURVES / f"h200-100s-{s}.txt").read_text().splitlines() if (p := rule.point(line))]
                 for s in seeds]
    found = {}
    for path in sorted(CURVES.glob("h200-100s-cand-*.txt")):
        watcher, found[path.stem] = rule.watcher(baselines), None
        for line in path.read_text().splitlines():
            if watcher.feed(line) is not None:
                found[path.stem] = float(re.search(r"\(([\d.]+)%\)", line)[1])
                break
    return found


def test_baselines_from_the_candidates_own_machine_stop_a_real_loser_and_no_keeper():
    # issue 21, item 3 (BENCHMARKS §13): the candidates ran 319-321 steps in 100 s, as seeds 2 and 3 did (seed 42's
    # machine ran 327). Against those two seeds alone the band narrows from 0.039 to 0.016 nats: MATRIX_LR 0.02 is
    # stopped at 23.4 % (77 of the mix's 400 s saved, 19 %); the two keepers run on; DEPTH 6 (a loser whose training
    # loss ends lower) runs on. Rests on 2 baseline curves and 4 candidates.
    assert stops(TRAIN_PY, ["seed42", "seed2", "seed3"]) == dict.fromkeys(
        ["h200-100s-cand-batch-half", "h200-100s-cand-depth6", "h200-100s-cand-mlr-double", "h200-100s-cand-mlr-half"])
    same_machine = stops(TRAIN_PY, ["seed2", "seed3"])
    assert same_machine == {"h200-100s-cand-batch-half": None, "h200-100s-cand-depth6": None,
                            "h200-100s-cand-mlr-double": None, "h200-100s-cand-mlr-half": 23.4}


def test_at_equal_steps_a_keeper_that_changes_the_tokens_per_step_is_stopped():
    # comparing at equal steps removes the machines' speed, but TOTAL_BATCH_SIZE 2**18 has seen half the tokens at
    # any step, and is stopped at 12 % though it is the best of the four: equal tokens, not steps, is the measure
    assert stops(STEPS, ["seed2", "seed3"])["h200-100s-cand-batch-half"] == pytest.approx(12, abs=1)


def synthetic_run(rng: random.Random, gain: float, points: int = 100):
    """train.py's shape: fast decay, then a slow fall to the warm-down; per-point batch noise, per-run offset."""
    offset = rng.gauss(0, 0.005)
    curve = []
    for i in range(1, points + 1):
        p = 100 * i / points
        loss = 1.0 + 8.0 * math.exp(-p / 6) + 0.4 * (1 - p / 100) + offset + gain * min(1.0, p / 10)
        curve.append((p, loss + rng.gauss(0, 0.02)))
    final = 1.0 + offset + gain + rng.gauss(0, 0.005)  # the score a full run would end with (lower is better)
    return curve, final


def test_on_a_mix_of_mostly_worse_candidates_a_third_of_the_runner_time_is_saved_and_keepers_run_on():
    rule = build(TRAIN_PY)
    rng = random.Random(12)
    baselines = [synthetic_run(rng, 0.0) for _ in range(3)]
    baseline_final = sum(final for _, final in baselines) / 3
    saved = total = keepers = wrong_stops = 0
    for k in range(500):
        gain = rng.uniform(0.01, 0.15) if k % 5 else -rng.uniform(0.0, 0.05)  # 80 % worse, 20 % better
        curve, final = synthetic_run(rng, gain)
        evidence = first_stop(rule, [c for c, _ in baselines], lines(curve))
        total += 100
        if evidence is not None:
            saved += 100 - evidence["progress"]
        if final < baseline_final:  # a full run would end better than the baseline: a candidate to keep
            keepers += 1
            wrong_stops += evidence is not None
    assert saved / total >= 0.30
    assert keepers >= 50 and wrong_stops / keepers <= 0.02


def test_smoothing_and_interpolation():
    curve = [(0.0, 4.0), (10.0, 2.0), (20.0, 0.0)]
    assert smooth(curve, 2) == [(10.0, 3.0), (20.0, 1.0)]
    assert at(curve, 5.0) == 3.0 and at(curve, -1.0) == 4.0 and at(curve, 99.0) == 0.0


def test_too_few_baseline_curves_judge_nothing():
    rule = build(TRAIN_PY)
    assert rule.watcher([[(50.0, 1.0)] * 5]) is None and rule.watcher([]) is None


@pytest.mark.parametrize("spec, message", [
    ({}, "policy.early_stop.pattern: required"),
    ({"pattern": "("}, "policy.early_stop.pattern: not a valid regex"),
    ({"pattern": r"loss (?P<value>\S+)"}, "policy.early_stop.pattern: needs groups named progress and value"),
    ({**TRAIN_PY, "z": 0}, "policy.early_stop.z: must be a number >= 0.0 (not 0)"),
    ({**TRAIN_PY, "window": 2.5}, "policy.early_stop.window: must be an integer >= 1"),
    ({**TRAIN_PY, "direction": "down"}, "policy.early_stop.direction: must be minimize or maximize"),
    ({**TRAIN_PY, "every": 3}, "policy.early_stop.every: unknown key"),
    ("yes", "policy.early_stop: must be a mapping"),
])
def test_bad_early_stop_values_name_their_key(spec, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build(spec)


# ----------------------------------------------------------------------------
# Through the process layer and the real engine


def test_a_watcher_stops_the_run_and_its_tree_at_the_line_it_names(tmp_path):
    from pytest_autoresearch.process import run_logged
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        result = run_logged("for i in $(seq 1 200); do echo line $i; sleep 0.05; done", tmp_path, dict(os.environ),
                            30, log, watch=lambda line: line == "line 5")
    assert result.stopped and result.failure("runner", 30) is None
    assert result.seconds < 5  # not the 10 s the loop would take
    assert "line 5" in result.stdout and "line 50" not in result.stdout
    assert log_path.read_text().rstrip().endswith("[autoresearch] stopped early (policy.early_stop)")


# a training-like runner: loss falls with progress; value.txt's number is added (higher = worse), the score is -loss
CURVE_RUNNER = '''import math, os, random, time
worse = float(open(os.environ["VALUE_FILE"]).read())
rng = random.Random(int(os.environ["AUTORESEARCH_SEED"]))
for i in range(1, 41):
    p = 2.5 * i
    print("step %05d (%.1f%%) | loss %.6f" % (i, p, 1.0 + 5 * math.exp(-p / 10) + worse + rng.gauss(0, 0.01)), flush=True)
    time.sleep(0.02)
print("score:", -(1.0 + worse + rng.gauss(0, 0.01)))
'''


@pytest.mark.parametrize("candidate, stopped", [("0.5", True), ("-0.2", False)])
def test_the_engine_stops_a_candidate_whose_curve_falls_behind_and_records_why(pytester, research, candidate,
                                                                               stopped):
    from autoresearch_helpers import records, write_task
    write_task(pytester.path, score=CURVE_RUNNER, value="0\n", mutate=f'''import pathlib
pathlib.Path("experiments/t/value.txt").write_text("{candidate}\\n")
''', spec={"policy": {"kind": "noise-aware", "repeats": 2, "max_repeats": 2,
                      "early_stop": {**TRAIN_PY, "min_progress": 20}}})
    result = research("--autoresearch-iterations", "1")
    assert result.ret in (0, 1), result.stdout.str()
    baseline, judged = records(pytester.path)
    assert baseline["status"] == "baseline" and len(baseline["scores"]) == 2
    if stopped:
        assert judged["status"] == "discard" and judged["reason"].startswith("stopped early at")
        evidence = judged["statistic"]["early_stop"]
        assert 20 <= evidence["progress"] < 50 and evidence["worse_by"] > evidence["band"]
        assert judged["scores"] == [] and judged["runner_s"] < sum(baseline_runner_s(pytester)) / 2
    else:
        assert judged["statistic"]["test"] != "early_stop", judged["reason"]
        assert judged["status"] == "keep" and len(judged["scores"]) == 2, judged["reason"]


def baseline_runner_s(pytester):
    from autoresearch_helpers import records
    return [r["runner_s"] for r in records(pytester.path) if r["status"] == "baseline"]
