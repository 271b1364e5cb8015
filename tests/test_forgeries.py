"""The forgeries of issue 20, each tried as a hostile candidate would, through this repository's own
experiments/train-bpb at the README's toy sizes on the CPU: a real inner `pytest --autoresearch` per candidate,
judged against the honest train.py (the baseline, scored by the first session). Before the evaluation was sealed
the first three were KEPT (BENCHMARKS §11); now none is."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_helpers import REPO_ROOT, plugin_args
from test_train import PREPARE_EDITS, TRAIN_EDITS, set_constants

pytestmark = pytest.mark.slow

STARTUP_ALLOWANCE = 20  # seconds: a toy CPU run starts in a few; the shipped 150 is sized for a cold GPU compile


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory, make_corpus_slice) -> Path:
    """A clone-like folder: the fixed files, the toy train.py and experiments/train-bpb as shipped (but the start-up
    allowance), its cache prepared, everything committed: git HEAD is the honest baseline."""
    root = tmp_path_factory.mktemp("toy_repo")
    for name in ("prepare.py", "evaluate.py", "train.py"):
        shutil.copy(REPO_ROOT / name, root / name)
    set_constants(root / "prepare.py", PREPARE_EDITS)
    set_constants(root / "train.py", TRAIN_EDITS)
    (root / "experiments" / "train-bpb").mkdir(parents=True)
    task = (REPO_ROOT / "experiments" / "train-bpb" / "task.yaml").read_text()
    task, n = re.subn(r"startup_allowance: \d+", f"startup_allowance: {STARTUP_ALLOWANCE}", task)
    assert n == 1
    (root / "experiments" / "train-bpb" / "task.yaml").write_text(task)
    (root / ".gitignore").write_text("work/\ncache/\nmodel.export\n")
    source = make_corpus_slice(root.parent / f"{root.name}-source", train_rows=300, val_rows=256)
    done = subprocess.run([sys.executable, "prepare.py", "--source", str(source)], cwd=root, env=inner_env(root),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for key in ("AUTHOR", "COMMITTER"):
        os.environ.setdefault(f"GIT_{key}_NAME", "t")
        os.environ.setdefault(f"GIT_{key}_EMAIL", "t@t")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy")
    return root


def inner_env(root: Path) -> dict[str, str]:
    # `python` in the task's commands is this test's interpreter; one thread each on a small shared machine
    return {**os.environ, "AUTORESEARCH_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": str(REPO_ROOT)}


def judge(root: Path, edit) -> dict:
    """Edit train.py in the workspace (edit(text) -> text), judge it, and return its record."""
    git(root, "checkout", "--", "train.py")
    path = root / "train.py"
    path.write_text(edit(path.read_text()))
    done = subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "experiments/train-bpb",
                           "-p", "no:cacheprovider", "-q"], cwd=root, env=inner_env(root), capture_output=True,
                          text=True, timeout=600)
    records = [json.loads(line) for line in (root / "work" / "results.jsonl").read_text().splitlines()]
    candidate = records[-1]
    assert candidate["status"] != "baseline", done.stdout[-3000:]
    baseline = next(r for r in records if r["status"] == "baseline")
    assert baseline["scores"] and 0 < baseline["scores"][0] < 20, "the honest baseline was scored"
    git(root, "checkout", "--", "train.py")
    return {**candidate, "baseline": baseline["scores"][0]}


def at_start_of_main(line: str):
    return lambda text: text.replace("def main():\n", f"def main():\n    {line}\n", 1)


def test_a_printed_score_with_no_training_is_a_crash(toy_repo: Path) -> None:
    record = judge(toy_repo, at_start_of_main('print("val_bpb: 0.100000"); raise SystemExit(0)'))
    assert (record["status"], record["reason"]) == ("crash", "the runner left no model.export")


def test_a_shadowed_metric_changes_nothing(toy_repo: Path) -> None:
    # the candidate halves evaluate_bpb in its own process and rewrites the evaluator and the metric in its folder
    shadow = '''
import prepare, evaluate as _evaluate
_true = prepare.evaluate_bpb
prepare.evaluate_bpb = lambda *a, **k: _true(*a, **k) / 2
for _name in ("evaluate.py", "prepare.py"):
    with open(_name, "a") as _f:
        _f.write("\\nevaluate_bpb = lambda *a, **k: 0.1\\nevaluate_file = lambda *a, **k: dict(val_bpb=0.1)\\n")
'''
    record = judge(toy_repo, lambda text: text.replace('\nif __name__ == "__main__":', shadow + '\nif __name__ == "__main__":'))
    assert record["status"] in ("keep", "discard")
    assert record["score"] > 0.8 * record["baseline"]  # the honest number (within CPU noise), not half of it


def test_training_past_the_budget_is_stopped_from_outside(toy_repo: Path) -> None:
    more = lambda text: text.replace("\nT_IMPORTED = time.time()", "\nTIME_BUDGET = 6 * TIME_BUDGET\nT_IMPORTED = time.time()")
    record = judge(toy_repo, more)
    assert record["status"] == "crash"
    assert record["reason"].startswith(f"runner ran past its time limit of {5 + STARTUP_ALLOWANCE}s (training budget 5s "
                                       f"from prepare.py:TIME_BUDGET + start-up allowance {STARTUP_ALLOWANCE}s)")


def test_a_model_that_looks_ahead_is_refused(toy_repo: Path) -> None:
    peek = lambda text: text.replace(
        "        if targets is None:\n            return logits\n",
        "        logits = logits + 10 * F.one_hot(torch.roll(idx, -1, 1), logits.size(-1))  # the next token, told\n"
        "        if targets is None:\n            return logits\n", 1)
    record = judge(toy_repo, peek)
    assert record["status"] == "crash"
    assert "refused: the model is not causal" in record["reason"]


def test_training_on_the_validation_split_finds_no_data(toy_repo: Path) -> None:
    from pytest_autoresearch.isolation import unavailable
    if (why := unavailable(True)) is not None:
        pytest.skip(f"bwrap {why}: without it the validation data is in the training's sight (USAGE: trust model)")
    on_val = lambda text: text.replace('DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")', 'DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "val")', 1)
    record = judge(toy_repo, on_val)
    assert record["status"] == "crash" and record["reason"].startswith("runner exited with code")
