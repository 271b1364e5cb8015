"""The LLM-free hparams mutator: step rules, never-repeat, learning from results, and the CLI contract."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoresearch_helpers import REPO_ROOT
from pytest_autoresearch.engine import Engine
from pytest_autoresearch.storage import Storage
from pytest_autoresearch.mutators import hparams
from pytest_autoresearch.mutators.hparams import (apply_moves, batch_safe, candidate_moves, choose, describe,
                                                  find_constants, load_history, parse_description)
from pytest_autoresearch.results import Record, ResultsStore
from pytest_autoresearch.task import load_task

REPO = REPO_ROOT
PATTERNS = ("L", "SL", "SSL", "SSSL", "SSSSL")
PREFIXES = ("MATRIX", "EMBED", "WARMUP", "MODEL", "TOTAL", "DEVICE", "N", "MY", "X2")
SUFFIXES = ("LR", "RATIO", "FRAC", "BETA2", "DECAY", "DEPTH", "HEADS", "BATCH_SIZE", "DIM", "STEPS", "FLAG", "NAME")
COMMENTS = ("", "  # why this value", " # L=full, S=half: 2**k", "      # é ×2 → ok")

SMALL = '''"""A tiny train.py."""
import os
from prepare import MAX_SEQ_LEN

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------
MATRIX_LR = 0.04        # learning rate for matrix parameters
DEPTH = 8               # number of layers
TOTAL_BATCH_SIZE = 2**19 # tokens per step
WINDOW_PATTERN = "SSSL" # L=full, S=half context
WARMUP_RATIO = 0.0      # fraction of the budget


def model_dim():
    return DEPTH * 64
'''


# ---------------------------------------------------------------------------
# Generated constant blocks
# ---------------------------------------------------------------------------

@st.composite
def value_texts(draw: st.DrawFn, name: str) -> str:
    if name == "WINDOW_PATTERN":
        return f'"{draw(st.sampled_from(PATTERNS))}"'
    kind = draw(st.sampled_from(["int", "float", "pow2", "product", "bool", "str"]))
    if kind == "int":
        return str(draw(st.integers(-3, 5000)))
    if kind == "float":
        x = draw(st.just(0.0) | st.floats(1e-6, 1e4) | st.floats(-10, -1e-6))
        return draw(st.sampled_from([repr(x), f"{x:.2e}"]))
    if kind == "pow2":
        return draw(st.sampled_from(["2**{}", "2 ** {}"])).format(draw(st.integers(0, 30)))
    if kind == "product":
        return f"{draw(st.integers(1, 1000))} * {draw(st.integers(1, 1000))}"
    if kind == "bool":
        return draw(st.sampled_from(["True", "False"]))
    quote = draw(st.sampled_from(["'", '"']))
    return quote + draw(st.text("abcXYZ ", max_size=6)) + quote


@st.composite
def blocks(draw: st.DrawFn, max_constants: int = 8) -> str:
    names = draw(st.lists(st.sampled_from(PREFIXES).flatmap(lambda p: st.sampled_from(SUFFIXES).map(
        lambda s: f"{p}_{s}")) | st.just("WINDOW_PATTERN"), min_size=1, max_size=max_constants, unique=True))
    lines = ['"""Generated."""', "import os", ""]
    for name in names:
        lines.append(f"{name} = {draw(value_texts(name))}{draw(st.sampled_from(COMMENTS))}")
    lines += ["", "def f():", "    return os.sep", ""]
    return "\n".join(lines)


def _values(source: str) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(compile(source, "<block>", "exec"), namespace)
    return {k: v for k, v in namespace.items() if k.isupper()}


def _words(name: str) -> set[str]:
    return {w.rstrip("0123456789") for w in name.split("_")}


def _assert_follows_step_rules(name: str, old: object, new: object, old_text: str, new_text: str) -> None:
    words = _words(name)
    assert type(new) is type(old), (name, old, new)
    if isinstance(old, bool):
        assert new is (not old)
    elif isinstance(old, str):
        assert name == "WINDOW_PATTERN" and old in PATTERNS and new in PATTERNS
    elif isinstance(old, int):
        power_of_two = old > 0 and old & (old - 1) == 0
        if re.fullmatch(r"2\s*\*\*\s*\d+", old_text) or "BATCH" in words or ("DIM" in words and power_of_two):
            assert new in (old * 2, old / 2) and old > 0
            if re.fullmatch(r"2\s*\*\*\s*\d+", old_text):  # stays written as a power of two
                assert re.fullmatch(r"2\s*\*\*\s*\d+", new_text) and eval(new_text) == new
        elif words & {"DEPTH", "HEADS"}:
            assert abs(new - old) == 1 and new >= 1
        else:
            assert abs(new - old) == max(1, abs(old) // 8)
            assert new >= 1 or old < 1
    else:
        assert float(f"{new:.3g}") == new  # 3 significant digits
        if old == 0.0:
            assert new in (0.05, 0.1)
        elif words & {"RATIO", "FRAC", "BETA"} and 0 <= old <= 1 and new == 1.0:
            assert old * 1.5 >= 0.995  # clamped at 1
        else:
            assert any(math.isclose(new, old * f, rel_tol=0.005) for f in (1.25, 1.5, 1 / 1.25, 1 / 1.5))
        if words & {"RATIO", "FRAC", "BETA"} and 0 <= old <= 1:
            assert 0 <= new <= 1


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=blocks(), seed=st.integers(0, 2**32), max_lines=st.sampled_from([2, 3, 4, 50]))
def test_one_edit_follows_the_rules(source: str, seed: int, max_lines: int) -> None:
    constants = find_constants(source)
    moves = choose(constants, [], str(seed), max_lines)
    if moves is None:
        assert not any(candidate_moves(c) for c in constants)
        return
    edited = apply_moves(source, moves)
    ast.parse(edited)
    before, after = _values(source), _values(edited)
    changed = sorted(k for k in before if before[k] != after[k] or type(before[k]) is not type(after[k]))
    assert 1 <= len(changed) <= 2 and 2 * len(changed) <= max_lines
    old_lines, new_lines = source.split("\n"), edited.split("\n")
    assert len(old_lines) == len(new_lines)
    diff = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert len(diff) == len(changed)  # one line per change: 2 diff lines each
    for a, b in diff:
        name = a.split(" = ")[0]
        assert name in changed and b.startswith(f"{name} = ")
        assert a.partition("#")[2] == b.partition("#")[2]  # comment kept
        old_text = ast.get_source_segment(a, ast.parse(a).body[0].value)
        new_text = ast.get_source_segment(b, ast.parse(b).body[0].value)
        _assert_follows_step_rules(name, before[name], after[name], old_text, new_text)
    assert describe(moves) == ", ".join(f"{m.const.name} {m.const.text} → {m.text}" for m in moves)
    assert parse_description(describe(moves)) == [(m.const.name, before[m.const.name], after[m.const.name])
                                                  for m in moves]
    assert sum("BATCH" in _words(name) for name in changed) <= 1
    if _batch_divides(before):
        assert _batch_divides(after)


def _batch_divides(values: dict[str, object], seq_len: int = 2048) -> bool:
    """train.py's check: TOTAL_BATCH_SIZE a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN (when both are ints)."""
    total, device = values.get("TOTAL_BATCH_SIZE"), values.get("DEVICE_BATCH_SIZE")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (total, device)) or device == 0:
        return True
    return total % (device * seq_len) == 0


@settings(max_examples=40, deadline=None)
@given(source=blocks(max_constants=4), seed=st.integers(0, 2**32),
       statuses=st.lists(st.sampled_from(["keep", "discard", "crash", "rejected"]), min_size=1, max_size=5))
def test_never_repeats_a_tried_change(source: str, seed: int, statuses: list[str]) -> None:
    history: list[tuple[str, list]] = []
    for i in range(25):
        moves = choose(find_constants(source), history, f"{seed}:{i}", 4)
        if moves is None:
            break
        changes = parse_description(describe(moves))
        assert frozenset(changes) not in {frozenset(c) for _, c in history}
        kept_undone = {frozenset((n, new, old) for n, old, new in c) for s, c in history if s == "keep"}
        assert frozenset(changes) not in kept_undone
        status = statuses[i % len(statuses)]
        history.append((status, changes))
        if status == "keep":
            source = apply_moves(source, moves)


@settings(max_examples=50, deadline=None)
@given(source=blocks(), seed=st.integers(0, 2**32))
def test_deterministic_for_a_seed(source: str, seed: int) -> None:
    history = [("discard", parse_description(describe(m))) for m in
               [choose(find_constants(source), [], "other", 4)] if m is not None]
    first = choose(find_constants(source), history, str(seed), 4)
    again = choose(find_constants(source), history, str(seed), 4)
    assert first == again


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------

def test_candidates_on_an_upstream_like_block() -> None:
    source = SMALL + '\n'.join([
        "ASPECT_RATIO = 64", "HEAD_DIM = 128", "WARMDOWN_RATIO = 0.9", "N_HEAD = 1", "USE_FLAG = True",
        "H100_BF16_PEAK_FLOPS = 989.5e12", "MAX_SEQ_LEN = 1024", "EVAL_STEPS = 3; SEED = 42",
        "UNTIMED_STEPS = 5", "LOG_EVERY = 10", "N_LAYER = -1",
        "ADAM_BETAS = (0.8, 0.95)", "lower_case = 3", "LONG = (1 +\n  2)", "TWICE = 1", "TWICE = 2", ""])
    moves = {c.name: sorted(m.text for m in candidate_moves(c)) for c in find_constants(source)}
    # imported, fixed (MAX_SEQ_LEN), not choices (FLOPS, SEED, ...), tuples, multi-line and reassigned names:
    # left alone
    assert moves == {
        "MATRIX_LR": ["0.0267", "0.032", "0.05", "0.06"],
        "DEPTH": ["7", "9"],
        "TOTAL_BATCH_SIZE": ["2**18", "2**20"],
        "WINDOW_PATTERN": ['"L"', '"SL"', '"SSL"', '"SSSSL"'],
        "WARMUP_RATIO": ["0.05", "0.1"],
        "ASPECT_RATIO": ["56", "72"],
        "HEAD_DIM": ["256", "64"],
        "WARMDOWN_RATIO": ["0.6", "0.72", "1.0"],
        "N_HEAD": ["2"],
        "USE_FLAG": ["False"],
        "EVAL_STEPS": ["2", "4"],
        "N_LAYER": [],  # a count below 1 is a flag ("auto"), not a size
    }


def test_history_reads_descriptions_and_changes_of_its_task(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    records = [
        {"task": "t", "status": "baseline", "description": "baseline"},
        {"task": "t", "status": "discard", "description": "MATRIX_LR 0.04 → 0.05, DEPTH 8 → 9"},
        {"task": "other", "status": "keep", "description": "DEPTH 8 → 7"},
        {"task": "t", "status": "crash", "description": "free text",
         "changes": [{"path": "train.py", "name": "TOTAL_BATCH_SIZE", "old": "2**19", "new": "2**20"}]},
        {"task": "t", "status": "keep", "description": "WARMUP_RATIO 0.0 → 0.1", "changes": [{"what": "?"}]},
    ]
    lines = [json.dumps(r) for r in records]
    results.write_text("\n".join(lines[:2] + ["{oops"] + lines[2:]))
    assert load_history(results, "t") == [("discard", [("MATRIX_LR", 0.04, 0.05), ("DEPTH", 8, 9)]),
                                          ("crash", [("TOTAL_BATCH_SIZE", 2**19, 2**20)]),
                                          ("keep", [("WARMUP_RATIO", 0.0, 0.1)])]
    assert parse_description('WINDOW_PATTERN "SSSL" → "SSSSL", X 40 * 2 → 81') == [
        ("WINDOW_PATTERN", "SSSL", "SSSSL"), ("X", 80, 81)]
    assert parse_description("try a bigger model") == []


def test_kept_directions_are_favoured() -> None:
    constants = find_constants(SMALL)

    def share_of_lr_up(history: list) -> float:
        picks = [choose(constants, history, str(seed), 2) for seed in range(300)]
        return sum(m[0].const.name == "MATRIX_LR" and m[0].direction == "up" for m in picks) / len(picks)

    helped = [("keep", [("MATRIX_LR", 0.032, 0.04)]), ("keep", [("MATRIX_LR", 0.0256, 0.032)])]
    hurt = [("crash", [("MATRIX_LR", 0.032, 0.04)]), ("discard", [("MATRIX_LR", 0.04, 0.0267)])]
    assert share_of_lr_up(helped) > share_of_lr_up([]) + 0.1
    assert share_of_lr_up(hurt) < share_of_lr_up([]) - 0.05


def test_exhausted_candidates_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "train.py"
    path.write_text("DEPTH = 1  # layers\n")
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"task": "t", "status": "discard", "description": "DEPTH 1 → 2"}) + "\n")
    monkeypatch.setenv("AUTORESEARCH_TASK", "t")
    monkeypatch.setenv("AUTORESEARCH_DESCRIPTION_FILE", str(tmp_path / "description.txt"))
    assert hparams.main(["--file", str(path), "--results", str(results)]) == 0
    assert path.read_text() == "DEPTH = 1  # layers\n"
    assert "nothing changed" in capsys.readouterr().out
    assert "nothing changed" in (tmp_path / "description.txt").read_text()


def test_names_filter_and_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "train.py"
    for seed in range(20):
        path.write_text(SMALL)
        monkeypatch.setenv("AUTORESEARCH_HPARAMS", "DEPTH,WARMUP_RATIO")
        assert hparams.main(["--file", str(path), "--seed", str(seed), "--skip", "WARMUP_RATIO"]) == 0
        assert [k for k, v in _values(path.read_text()).items() if _values(SMALL)[k] != v] == ["DEPTH"]


# ---------------------------------------------------------------------------
# As the engine runs it
# ---------------------------------------------------------------------------

def _run(sandbox: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_autoresearch.mutators.hparams"], cwd=sandbox, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_subprocess_edits_the_artifact(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    tried = {"task": "train-bpb", "status": "discard", "description": "MATRIX_LR 0.04 → 0.05"}
    results.write_text(json.dumps(tried) + "\nnot json\n")
    env = {"AUTORESEARCH_ARTIFACTS": os.pathsep.join(["*.md", "train.py"]), "AUTORESEARCH_RESULTS": str(results),
           "AUTORESEARCH_SEED": "7", "AUTORESEARCH_MAX_LINES": "2", "AUTORESEARCH_TASK": "train-bpb",
           "AUTORESEARCH_HPARAMS": "MATRIX_LR"}
    outputs = []
    for name in ("a", "b"):  # two sandboxes, same seed and results: same edit
        sandbox = tmp_path / name
        sandbox.mkdir()
        (sandbox / "README.md").write_text("not python\n")
        (sandbox / "train.py").write_text(SMALL)
        description = sandbox / "description.txt"
        done = _run(sandbox, {**env, "AUTORESEARCH_DESCRIPTION_FILE": str(description)})
        assert done.returncode == 0, done.stderr
        text = description.read_text().strip()
        assert done.stdout == f"hparams: {text}\n"
        outputs.append((text, (sandbox / "train.py").read_text()))
    assert outputs[0] == outputs[1]
    text, edited = outputs[0]
    assert re.fullmatch(r"MATRIX_LR 0\.04 → (0\.032|0\.06|0\.0267)", text)  # 0.05 was tried
    diff = [(a, b) for a, b in zip(SMALL.split("\n"), edited.split("\n")) if a != b]
    new = text.split(" → ")[1]
    assert diff == [("MATRIX_LR = 0.04        # learning rate for matrix parameters",
                     f"MATRIX_LR = {new:<12s}# learning rate for matrix parameters")]


def test_subprocess_reports_a_missing_artifact(tmp_path: Path) -> None:
    done = _run(tmp_path, {"AUTORESEARCH_ARTIFACTS": "src/*.py"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"hparams: error: AUTORESEARCH_ARTIFACTS='src/*.py': no .py file matches in {tmp_path}"]


# ---------------------------------------------------------------------------
# Batch sizes train.py accepts
# ---------------------------------------------------------------------------

BATCHES = "TOTAL_BATCH_SIZE = 2**19  # tokens\nDEVICE_BATCH_SIZE = {device}  # sequences\nMATRIX_LR = 0.04\n"


def test_batch_constants_never_move_together() -> None:
    constants = find_constants(BATCHES.format(device=128))
    moves = {(m.const.name, m.text): m for c in constants for m in candidate_moves(c)}
    total_down, device_up = moves["TOTAL_BATCH_SIZE", "2**18"], moves["DEVICE_BATCH_SIZE", "256"]
    assert batch_safe(constants, (total_down,)) and batch_safe(constants, (device_up,))  # 2**18 = 128 * 2048
    assert not batch_safe(constants, (total_down, device_up))  # 2**18 is not a multiple of 256 * 2048
    assert not batch_safe(constants, (moves["TOTAL_BATCH_SIZE", "2**20"], device_up))  # valid, but never paired
    picks = [choose(constants, [], str(seed), 4) for seed in range(300)]
    assert any(len(p) == 2 for p in picks)
    assert all(sum("BATCH" in m.const.name for m in p) <= 1 for p in picks)


def test_a_single_batch_move_keeps_the_total_a_multiple_of_a_pass() -> None:
    constants = find_constants(BATCHES.format(device=256))  # after a kept DEVICE_BATCH_SIZE 128 → 256
    proposed = {(m.const.name, m.text) for seed in range(300) for m in choose(constants, [], str(seed), 4)}
    assert ("TOTAL_BATCH_SIZE", "2**18") not in proposed  # 2**18 < 256 * 2048: train.py would exit
    assert ("DEVICE_BATCH_SIZE", "512") not in proposed
    assert {("TOTAL_BATCH_SIZE", "2**20"), ("DEVICE_BATCH_SIZE", "128")} <= proposed
    assert batch_safe(constants, tuple(m for c in constants for m in candidate_moves(c)
                                       if m.text == "2**18"), seq_len=1024)  # 2**18 = 256 * 1024


@pytest.mark.parametrize("prepare, expected", [(None, None), ("MAX_SEQ_LEN = 1024\n", "2**18"),
                                               ("MAX_SEQ_LEN = len('a' * 1024)\n", None)])
def test_max_seq_len_is_read_from_prepare_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             prepare: str | None, expected: str | None) -> None:
    (tmp_path / "train.py").write_text(BATCHES.format(device=256))
    if prepare is not None:
        (tmp_path / "prepare.py").write_text(prepare)
    results = tmp_path / "results.jsonl"
    tried = {"task": "t", "status": "discard", "description": "TOTAL_BATCH_SIZE 2**19 → 2**20"}
    results.write_text(json.dumps(tried) + "\n")
    monkeypatch.setenv("AUTORESEARCH_TASK", "t")
    monkeypatch.chdir(tmp_path)
    assert hparams.main(["--file", "train.py", "--results", str(results), "--names", "TOTAL_BATCH_SIZE"]) == 0
    total = _values((tmp_path / "train.py").read_text())["TOTAL_BATCH_SIZE"]
    assert total == (2**19 if expected is None else eval(expected))  # 2048 (the default): 2**18 is too few


# ---------------------------------------------------------------------------
# Which file: task.yaml's glob rules, never a protected file
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("artifacts, protected, edited", [
    ("d/", "", "d/train.py"),  # a trailing / is everything below
    ("**/*.py", "", "d/train.py"),  # train.py is preferred over the sorted-first a.py
    ("*.py", "", "a.py"),  # `*` stays in its folder: d/train.py does not match
    ("*.py", "a.py", "prepare.py"),
    ("*.py" + os.pathsep + "d/*.py", "prepare.py", "d/train.py"),
    ("**", "d/" + os.pathsep + "a.py", "prepare.py"),
    ("**", "d/" + os.pathsep + "*.py", None),
])
def test_artifact_follows_task_globs_and_protection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   artifacts: str, protected: str, edited: str | None) -> None:
    files = ("a.py", "prepare.py", "d/train.py", "d/z.py", "work/train.py", ".venv/train.py", "d/__pycache__/train.py")
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTORESEARCH_ARTIFACTS", artifacts)
    monkeypatch.setenv("AUTORESEARCH_PROTECTED", protected)
    assert hparams.main([]) == (2 if edited is None else 0)
    assert [rel for rel in files if (tmp_path / rel).read_text() != SMALL] == ([edited] if edited else [])


def test_engine_env_protects_files_from_the_subprocess(tmp_path: Path) -> None:
    """As the engine runs it: Engine.env exports the task's protected globs, and prepare.py (sorted first)
    is left alone."""
    (tmp_path / "task.yaml").write_text(
        "artifacts: ['*.py']\nprotected: [prepare.py]\nmutator: {command: x}\nrunner: {command: y}\n"
        "scorer: {metric: score, direction: minimize}\n")
    task = load_task(tmp_path / "task.yaml", tmp_path)
    engine = Engine(rootdir=tmp_path, storage=Storage(tmp_path / "work", tmp_path / "results.jsonl"), worker="main",
                    commit=False)
    record = Record(task.name, 1, "running", "score", "minimize", "2024-01-01T00:00:00Z", "main")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = engine.env(task, record.iteration, record.baseline_score, 0, sandbox, {})
    assert env["AUTORESEARCH_PROTECTED"] == "prepare.py"
    (sandbox / "prepare.py").write_text(SMALL)
    (sandbox / "train.py").write_text(SMALL)
    done = _run(sandbox, env)
    assert done.returncode == 0, done.stderr
    assert (sandbox / "prepare.py").read_text() == SMALL and (sandbox / "train.py").read_text() != SMALL
