"""Seams: scorer kinds (stdout regex, a JSON metrics file), scorer constraints that reject a candidate before the
policy sees it, policies that carry their own seeding and score-reuse rules, one schema of task.yaml keys."""

from __future__ import annotations

import re

import pytest

from autoresearch_helpers import REPO_ROOT, records, write_task
from pytest_autoresearch import policies, scorers
from pytest_autoresearch.task import TaskError, load_task, schema

# the runner writes its metrics as JSON (and prints nothing the stdout scorer could read)
JSON_SCORE = '''import json, pathlib
v = int(pathlib.Path(os.environ["VALUE_FILE"]).read_text())
pathlib.Path("out/metrics.json").parent.mkdir(exist_ok=True)
pathlib.Path("out/metrics.json").write_text(json.dumps({"score": v, "peak_vram_mb": 100 * v, "note": "x"}))
'''
# prints the score and a memory figure that grows with it
VRAM_SCORE = '''import pathlib
v = int(pathlib.Path(os.environ["VALUE_FILE"]).read_text())
print(f"score: {v}")
print(f"peak_vram_mb: {100 * v}")
'''


def test_a_json_metrics_file_is_a_scorer_kind(pytester, research):
    write_task(pytester.path, score="import os\n" + JSON_SCORE,
               spec={"scorer": {"kind": "json-file", "file": "out/metrics.json"}})
    result = research("-v")
    assert result.ret == 0, result.stdout.str()
    baseline, keep = records(pytester.path)
    assert (baseline["score"], keep["status"], keep["score"]) == (1.0, "keep", 2.0)
    assert keep["metrics"] == {"score": 2.0, "peak_vram_mb": 200.0}


def test_a_json_file_the_runner_did_not_write_is_a_crash_saying_so(pytester, research):
    write_task(pytester.path, spec={"scorer": {"kind": "json-file", "file": "out/metrics.json"}})
    result = research()
    result.stdout.fnmatch_lines(["*crash: baseline: no metric: the runner wrote no out/metrics.json*"])


def test_a_candidate_breaking_a_constraint_is_rejected_before_the_policy_sees_it(pytester, research):
    write_task(pytester.path, step=5, score="import os\n" + VRAM_SCORE,
               spec={"scorer": {"constraints": ["peak_vram_mb <= 300"]}})
    result = research("-v")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*rejected: constraint peak_vram_mb <= 300 broken: peak_vram_mb was 600*"])
    baseline, rejected = records(pytester.path)
    assert baseline["status"] == "baseline" and rejected["status"] == "rejected"
    assert rejected["scores"] == [] and rejected["statistic"] is None  # the policy never decided
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"


def test_a_candidate_within_its_constraints_is_judged_as_usual(pytester, research):
    write_task(pytester.path, step=1, score="import os\n" + VRAM_SCORE,
               spec={"scorer": {"constraints": ["peak_vram_mb <= 300", "score > 0"]}})
    assert research().ret == 0
    assert records(pytester.path)[-1]["status"] == "keep"


@pytest.mark.parametrize("scorer, message", [
    ({"kind": "xml"}, "scorer.kind: unknown 'xml' (expected one of: json-file, stdout)"),
    ({"kind": "json-file"}, "scorer.file: missing required key (kind json-file)"),
    ({"kind": "json-file", "file": "../m.json"}, "scorer.file: '../m.json' must stay inside the sandbox*"),
    ({"file": "m.json"}, "scorer.file: unknown key (expected one of: kind, metric, direction, constraints, pattern)"),
    ({"constraints": ["vram < lots"]}, "scorer.constraints: 'vram < lots' is not 'metric <op> number'*"),
    ({"constraints": "vram < 1"}, "scorer.constraints: must be a list*"),
])
def test_scorer_errors_are_one_line_naming_file_and_key(tmp_path, scorer, message):
    write_task(tmp_path, spec={"scorer": scorer})
    with pytest.raises(TaskError) as caught:
        load_task(tmp_path / "experiments/t/task.yaml", tmp_path)
    assert re.fullmatch(re.escape("experiments/t/task.yaml: " + message).replace(r"\*", ".*"), str(caught.value))


def test_policies_carry_their_own_seeding_and_score_reuse_rules():
    greedy, noisy = policies.make_policy({}), policies.make_policy({"kind": "noise-aware", "repeats": 3})
    assert greedy.reuses_kept_scores and not noisy.reuses_kept_scores
    assert [greedy.runner_seed(i, 0) for i in (0, 1, 7)] == [42, 42, 42]
    # candidates' seeds start past the baseline's max_repeats (6) runs: 42 + 6 * 2 + 1
    assert [noisy.runner_seed(0, r) for r in range(3)] == [42, 43, 44] and noisy.runner_seed(2, 1) == 55
    engine_code = "".join((REPO_ROOT / "pytest_autoresearch" / name).read_text()
                          for name in ("engine.py", "iteration.py", "results.py"))
    assert "policy.kind" not in engine_code and '"greedy"' not in engine_code  # the engine asks, never names


def test_kinds_are_the_modules_of_their_packages():
    # adding a kind is adding one module: nothing else lists them
    assert scorers.kinds() == ["json-file", "stdout"] and policies.kinds() == ["greedy", "noise-aware", "sequential"]


def test_the_schema_is_what_loading_accepts():
    keys = schema()
    assert keys[""] == ("name", "description", "artifacts", "protected", "mutation", "mutator", "runner",
                        "scorer", "policy", "setup", "evaluator")
    assert set(keys["scorer"]) == {"kind", "metric", "pattern", "direction", "file", "constraints"}
    assert set(keys["policy"]) == {"kind", "min_delta", "repeats", "confidence", "max_repeats", "pool_noise", "early_stop",
                                  "looks", "max_runs", "discard_below", "noise_sd", "screen"}
    assert set(keys["mutator"]) == {"command", "timeout", "prompt", "isolation", "network", "hparams"}
    assert set(keys["runner"]) == {"command", "timeout", "gpus", "isolation", "network", "hide", "writable", "budget",
                                   "startup_allowance"}
    assert set(keys["evaluator"]) == {"command", "receives", "max_bytes", "timeout", "isolation", "network"}
    assert set(keys["setup"]) == {"command", "timeout"}


def test_usage_documents_every_task_key():
    usage = (REPO_ROOT / "USAGE.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", usage, re.M))
    for section, names in schema().items():
        for name in names:
            key = f"{section}.{name}" if section else name
            assert key in documented or (not section and name in {"mutation", "scorer", "policy", "runner"}), key


def test_every_test_the_trust_model_names_exists() -> None:
    """USAGE's trust model backs each claim with a test named `file.py::test_name`: each must be there."""
    usage = (REPO_ROOT / "USAGE.md").read_text(encoding="utf-8")
    section = usage[usage.index("## Trust model"):usage.index("## For agents running the loop")]
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", section))
    assert len(named) >= 15
    for file, name in sorted(named):
        source = (REPO_ROOT / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"USAGE's trust model names {file}::{name}, which is not there"
