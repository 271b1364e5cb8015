"""The hparams mutator's artifact-specific rules come from its task (mutator.hparams), not from its code: the
choices of a str constant, the constants whose product must divide a total, and the fallback sequence length."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoresearch_helpers import REPO_ROOT
from pytest_autoresearch.mutators import hparams
from pytest_autoresearch.task import TaskError, load_task

ARTIFACT = """MODE = "fast"           # one of the task's choices
TOKENS = 96              # a multiple of ROWS * LENGTH
ROWS = 4
LENGTH = 8
RATE = 0.5
"""
RULES = {"choices": {"MODE": ["fast", "careful", "lazy"]},
         "batch": {"total": "TOKENS", "device": "ROWS", "seq_len": "LENGTH"}, "seq_len": 8}


def write_task(root: Path, hparams_spec=None) -> Path:
    folder = root / "experiments" / "t"
    folder.mkdir(parents=True)
    (root / "model.py").write_text(ARTIFACT)
    mutator = {"command": f"{sys.executable} -m pytest_autoresearch.mutators.hparams", "timeout": 30}
    if hparams_spec is not None:
        mutator["hparams"] = hparams_spec
    spec = {"artifacts": ["model.py"], "mutator": mutator, "runner": {"command": "true"},
            "scorer": {"metric": "score", "direction": "maximize"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "task.yaml"


def mutate(root: Path, task_file: Path, iteration: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), AUTORESEARCH_ARTIFACTS="model.py", AUTORESEARCH_SEED="7",
               AUTORESEARCH_ITERATION=str(iteration), AUTORESEARCH_TASK_FILE=str(task_file), AUTORESEARCH_MAX_LINES="2")
    (root / "model.py").write_text(ARTIFACT)
    subprocess.run([sys.executable, "-m", "pytest_autoresearch.mutators.hparams"], cwd=root, env=env, check=True,
                   capture_output=True)
    return (root / "model.py").read_text()


def test_the_tasks_rules_decide_the_choices_and_the_divisibility(tmp_path):
    task_file = write_task(tmp_path, RULES)
    seen_modes, moved = set(), set()
    for iteration in range(40):
        values = {}
        exec(mutate(tmp_path, task_file, iteration), {}, values)
        seen_modes.add(values["MODE"])
        moved |= {name for name in ("MODE", "TOKENS", "ROWS", "LENGTH", "RATE") if values[name] != _default(name)}
        assert values["TOKENS"] % (values["ROWS"] * values["LENGTH"]) == 0  # never broken
    assert seen_modes <= {"fast", "careful", "lazy"} and len(seen_modes) > 1
    assert {"MODE", "RATE"} <= moved


def _default(name: str):
    values = {}
    exec(ARTIFACT, {}, values)
    return values[name]


def test_without_rules_the_task_gets_train_pys():
    assert hparams.rules(None) == hparams.TRAIN_PY
    assert hparams.TRAIN_PY.choices["WINDOW_PATTERN"] == ("L", "SL", "SSL", "SSSL", "SSSSL")
    assert hparams.TRAIN_PY.batch == ("TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "MAX_SEQ_LEN")
    assert hparams.TRAIN_PY.seq_len == 2048


def test_train_bpb_search_states_its_rules_in_its_task():
    task = yaml.safe_load((REPO_ROOT / "experiments/train-bpb-search/task.yaml").read_text(encoding="utf-8"))
    assert hparams.rules(task["mutator"]["hparams"]) == hparams.TRAIN_PY


@pytest.mark.parametrize("spec, message", [
    ("yes", "mutator.hparams: must be a mapping"),
    ({"choice": {}}, "mutator.hparams.choice: unknown key"),
    ({"choices": {"MODE": []}}, "mutator.hparams.choices.MODE: must be a non-empty list of strings"),
    ({"choices": {"mode": ["a"]}}, "mutator.hparams.choices.mode: must be an UPPER_CASE constant name"),
    ({"batch": {"total": "TOKENS"}}, "mutator.hparams.batch: needs total, device and seq_len"),
    ({"seq_len": 0}, "mutator.hparams.seq_len: must be an integer >= 1"),
])
def test_bad_rules_are_one_line_naming_the_file_and_key(tmp_path, spec, message):
    task_file = write_task(tmp_path, spec)
    with pytest.raises(TaskError) as caught:
        load_task(task_file, tmp_path)
    assert str(caught.value).startswith(f"experiments/t/task.yaml: {message}") and "\n" not in str(caught.value)
