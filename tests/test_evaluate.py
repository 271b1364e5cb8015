"""evaluate.py, the sealed evaluator: the same val_bpb as the in-process evaluation for an honest model, and a
one-line refusal for a model file that cheats, is malformed, or would run code while it loads."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate
import prepare
import train
from evaluate import Refused, evaluate_file, save_model

REPO = Path(__file__).resolve().parents[1]
BATCH = 4


def toy_model(seed: int = 0) -> train.GPT:
    """A two-layer GPT of train.py at prepare's MAX_SEQ_LEN, with the attention plan a CPU run exports."""
    tokenizer = prepare.Tokenizer.from_directory()
    config = train.GPTConfig(sequence_len=prepare.MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=2,
                             n_head=1, n_embd=32, window_pattern="SL")
    attention = train.Attention()
    torch.manual_seed(seed)
    model = train.GPT(config, attention)
    model.init_weights()
    attention.prepare(model.windows, prepare.MAX_SEQ_LEN, torch.device("cpu"))
    return model


class Cheat(nn.Module):
    """A trained model plus a trick, exported through save_model like an honest one."""

    def __init__(self, inner: nn.Module, trick: str) -> None:
        super().__init__()
        self.inner, self.trick = inner, trick
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.inner(idx)
        vocab = logits.size(-1)
        if self.trick == "look-ahead":  # position t is told token t+1: the loss collapses
            ahead = torch.cat([idx[:, 1:], idx[:, :1]], dim=1)
            return logits + 10 * F.one_hot(ahead, vocab).float()
        if self.trick == "other-rows":  # each row's logits move with the batch's mean token
            return logits + idx.float().mean() / 1000
        if self.trick == "dropout":
            return F.dropout(logits, 0.1, training=True)
        if self.trick == "stateful":  # counts its calls: could behave one way when checked and another when scored
            self.calls += 1
            return logits + self.calls.float()
        if self.trick == "wrong-shape":
            return logits[..., :-1]
        if self.trick == "nan":
            return logits * float("nan")
        raise ValueError(self.trick)


@pytest.fixture
def honest_file(use_tiny_cache: Path, tmp_path: Path) -> tuple[train.GPT, Path]:
    model = toy_model()
    path = tmp_path / "model.export"
    save_model(model, BATCH, path)
    return model, path


def test_the_sealed_score_equals_the_in_process_evaluation(honest_file, tmp_path: Path) -> None:
    model, path = honest_file
    in_process = prepare.evaluate_bpb(model, prepare.Tokenizer.from_directory(), BATCH)
    sealed = evaluate_file(path)
    assert sealed["val_bpb"] == in_process  # the same rows, the same logits, the same loss: not merely close
    assert sealed["rows_checked"] >= BATCH  # the causality check ran


def test_a_file_with_another_batch_size_scores_the_same(honest_file, tmp_path: Path) -> None:
    model, path = honest_file
    other = tmp_path / "other.export"
    save_model(model, 3, other)  # the last batch is padded differently: rows are counted, not batches
    assert evaluate_file(other)["val_bpb"] == pytest.approx(evaluate_file(path)["val_bpb"], rel=1e-9)


@pytest.mark.parametrize("trick, reason", [
    ("look-ahead", "not causal"),
    ("other-rows", "not (causal|deterministic)"),
    ("dropout", "random"),
    ("stateful", "writes its (buffers|arguments)"),
    ("wrong-shape", "not logits of shape"),
    ("nan", "NaN or infinite loss"),
])
def test_a_cheating_or_broken_graph_is_refused_with_its_reason(use_tiny_cache: Path, tmp_path: Path, trick: str,
                                                                reason: str) -> None:
    path = tmp_path / "model.export"
    save_model(Cheat(toy_model(), trick), BATCH, path)
    with pytest.raises(Refused, match=reason):
        evaluate_file(path)


def rewrite_header(path: Path, change) -> None:
    """Apply change(header) to a saved model file's JSON header, keeping its tensor bytes."""
    data = path.read_bytes()
    start = len(evaluate.MAGIC) + 8
    (length,) = struct.unpack("<Q", data[len(evaluate.MAGIC):start])
    header = json.loads(data[start:start + length])
    change(header)
    new = json.dumps(header).encode()
    path.write_bytes(evaluate.MAGIC + struct.pack("<Q", len(new)) + new + data[start + length:])


def first_node(header: dict) -> dict:
    return header["program"]["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize("change, reason", [
    (lambda h: first_node(h).__setitem__("target", "torch.save"), "only ATen operators"),
    (lambda h: first_node(h).__setitem__("target", "builtins.exec"), "only ATen operators"),
    (lambda h: first_node(h)["inputs"][0].__setitem__("arg", {"as_sym_int": {"as_name": "s0"}}), "as_sym_int"),
    (lambda h: h["program"]["graph_module"]["graph"]["sym_int_values"].__setitem__(
        "s0", {"as_expr": {"expr_str": "__import__('os').system('touch PWNED')"}}), "sym_int_values|as_expr|expr_str"),
    (lambda h: h["program"].__setitem__("guards_code", ["__import__('os').system('touch PWNED')"]), "guard code"),
    (lambda h: next(iter(h["tensors"].values())).__setitem__("nbytes", 10**12), "does not fit"),
    (lambda h: next(iter(h["tensors"].values())).__setitem__("dtype", "object"), "bad table entry"),
])
def test_a_forged_file_is_refused_before_anything_in_it_runs(honest_file, tmp_path: Path, monkeypatch, change,
                                                             reason: str) -> None:
    _, path = honest_file
    monkeypatch.chdir(tmp_path)
    rewrite_header(path, change)
    with pytest.raises(Refused, match=reason):
        evaluate_file(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_pickle_or_an_oversize_file_is_refused_unread(use_tiny_cache: Path, tmp_path: Path, monkeypatch) -> None:
    pickled = tmp_path / "pickle.export"
    torch.save({"weights": torch.zeros(3)}, pickled)  # torch.export.save's archive is a pickle-bearing zip too
    with pytest.raises(Refused, match="bad magic"):
        evaluate_file(pickled)
    huge = tmp_path / "huge.export"
    with open(huge, "wb") as f:
        f.truncate(evaluate.MAX_MODEL_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(Refused, match="GiB, over the evaluator's"):
        evaluate_file(huge)


def test_the_command_line_ends_with_one_refusal_line_and_exit_code_3(use_tiny_cache: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "model.export"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == evaluate.REFUSED_EXIT_CODE
    assert done.stdout.strip().splitlines()[-1].startswith("refused: model.export: no such file")


def test_the_command_line_prints_the_score_block(honest_file, tmp_path: Path) -> None:
    model, path = honest_file
    done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("val_bpb:", "eval_seconds:")))
    assert float(lines["val_bpb"]) == pytest.approx(prepare.evaluate_bpb(model, prepare.Tokenizer.from_directory(), BATCH),
                                                    abs=5e-7)  # printed to 6 decimals
