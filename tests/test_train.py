"""train.py: a toy-size end-to-end run on the CPU (as the README's "smaller computers" edits make it),
the NaN fast-fail path, and the model pieces that are easy to get subtly wrong."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import train

REPO = Path(__file__).resolve().parents[1]

# The edits a user makes by hand for a small computer (README, "Smaller computers"); each must match
# exactly one constant line, so renaming a constant breaks this test loudly rather than silently.
PREPARE_EDITS = {"MAX_SEQ_LEN": "128", "TIME_BUDGET": "5", "EVAL_TOKENS": "64 * 128 * 4", "VOCAB_SIZE": "512"}
TRAIN_EDITS = {"DEPTH": "2", "ASPECT_RATIO": "32", "HEAD_DIM": "32", "WINDOW_PATTERN": '"SL"',
               "TOTAL_BATCH_SIZE": "2**13", "DEVICE_BATCH_SIZE": "32"}
SUMMARY_KEYS = ["training_seconds", "total_seconds", "startup_seconds", "export_seconds", "model_mb", "peak_vram_mb",
                "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth"]
EVALUATION_KEYS = ["val_bpb", "eval_seconds"]  # printed by evaluate.py, which train.py hands over to when run by hand


def set_constants(path: Path, edits: dict[str, str]) -> None:
    """Rewrite `NAME = value  # comment` lines in place, keeping the comments."""
    text = path.read_text()
    for name, value in edits.items():
        text, n = re.subn(rf"^{name} = [^#\n]*?(?=\s*(#|$))", f"{name} = {value}", text, flags=re.M)
        assert n == 1, f"{path.name}: expected exactly one `{name} = ...` line, found {n}"
    path.write_text(text)


def run_script(workdir: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), PYTHONUNBUFFERED="1",
               # one thread: on a small shared machine OpenMP threads spinning against each other cost 3-5x
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory: pytest.TempPathFactory, make_corpus_slice) -> tuple[Path, Path]:
    """(a folder holding toy-size prepare.py + train.py, the prepared cache), built with `prepare.py --source`."""
    root = tmp_path_factory.mktemp("toy_project")
    source = make_corpus_slice(root / "source", train_rows=300, val_rows=256)
    for name in ("prepare.py", "evaluate.py", "train.py"):
        shutil.copy(REPO / name, root / name)
    set_constants(root / "prepare.py", PREPARE_EDITS)
    set_constants(root / "train.py", TRAIN_EDITS)
    cache = root / "cache"
    done = run_script(root, cache, "prepare.py", "--source", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    return root, cache


def parse_summary(stdout: str) -> list[tuple[str, str]]:
    """The `key: value` lines after the last `---`, the evaluator's `evaluation: ...` line left out."""
    lines = stdout.splitlines()
    assert "---" in lines, f"no summary block in:\n{stdout[-3000:]}"
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    pairs = []
    for line in block:
        if line.startswith("evaluation: "):
            continue
        m = re.fullmatch(r"(\w+):( +)(\S+)", line)
        assert m, f"summary line not `key: value`: {line!r}"
        assert len(m[1]) + 1 + len(m[2]) == 18, f"value not aligned at column 18: {line!r}"
        pairs.append((m[1], m[3]))
    return pairs


@pytest.mark.slow
def test_toy_run_on_cpu_ends_with_complete_summary(toy_project):
    root, cache = toy_project
    done = run_script(root, cache, "train.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^attention: masked\+masked \| compiled: False \| ", done.stdout, re.M)
    assert re.search(r"^step \d{5} .*\| loss \d+\.\d+ \| lrm .*\| tok/s .*\| mfu .*\| remaining \d+s$", done.stdout, re.M)
    # the start-up breakdown: each phase in order, and they add up to the total
    startup = re.search(r"^startup: (.*) \| total (\d+\.\d)s$", done.stdout, re.M)
    phases = dict(re.fullmatch(r"(.+) (\d+\.\d)s", part).groups() for part in startup[1].split(" | "))
    assert list(phases) == ["imports", "set-up", "data", "first micro-step", "first update", "warm-up steps"]
    assert sum(map(float, phases.values())) == pytest.approx(float(startup[2]), abs=0.05 * len(phases) + 0.01)
    summary = parse_summary(done.stdout)
    assert [key for key, _ in summary] == SUMMARY_KEYS + EVALUATION_KEYS
    values = {key: float(value) for key, value in summary}
    assert math.isfinite(values["val_bpb"]) and values["val_bpb"] > 0
    assert re.search(r"^evaluation: model\.export \| batch 32 x 128 \| cpu \| .* causality checked on \d+ rows$",
                     done.stdout, re.M)
    assert (root / "model.export").stat().st_size == pytest.approx(values["model_mb"] * 2**20, abs=0.06 * 2**20)
    assert values["training_seconds"] >= 5  # the whole (edited) TIME_BUDGET was trained
    assert values["startup_seconds"] == pytest.approx(float(startup[2]), abs=0.15)
    assert values["eval_seconds"] > 0 and values["export_seconds"] > 0
    # each figure is rounded to 0.1 s; evaluation runs after the training process, which total_seconds covers
    assert values["startup_seconds"] + values["training_seconds"] + values["export_seconds"] <= values["total_seconds"] + 0.15
    assert values["peak_vram_mb"] == 0.0 and values["mfu_percent"] == 0.0  # CPU: no VRAM, no known peak
    assert values["num_steps"] >= 2 and values["num_steps"] == int(values["num_steps"])
    assert values["total_tokens_M"] == pytest.approx(values["num_steps"] * 2**13 / 1e6, abs=0.051)
    assert values["depth"] == 2
    assert "FAIL" not in done.stdout


@pytest.mark.slow
def test_exploding_learning_rates_fail_fast(toy_project, tmp_path):
    root, cache = toy_project
    for name in ("prepare.py", "evaluate.py", "train.py"):
        shutil.copy(root / name, tmp_path / name)
    set_constants(tmp_path / "train.py", {name: "1e30" for name in ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")})
    done = run_script(tmp_path, cache, "train.py")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" in done.stdout.splitlines()
    assert "---" not in done.stdout.splitlines() and "val_bpb:" not in done.stdout

@pytest.mark.slow
def test_out_of_memory_in_the_first_step_says_what_to_lower(toy_project, tmp_path):
    root, cache = toy_project
    for name in ("prepare.py", "evaluate.py", "train.py"):
        shutil.copy(root / name, tmp_path / name)
    script = (tmp_path / "train.py").read_text()
    forward = '        loss = train_model(x, y, reduction="none").mean()\n'  # the micro-step's forward
    assert script.count(forward) == 1
    (tmp_path / "train.py").write_text(script.replace(forward, '        raise torch.OutOfMemoryError("simulated")\n'))
    done = run_script(tmp_path, cache, "train.py")
    assert done.returncode == 1
    assert "CUDA out of memory in the first step with DEVICE_BATCH_SIZE=32: lower it" in done.stderr
    assert "failed:" not in done.stdout  # no other attention plan tried: they need as much memory


@pytest.mark.slow
def test_a_cpu_run_too_large_for_memory_is_refused_before_it_starts(toy_project, tmp_path):
    root, cache = toy_project
    for name in ("prepare.py", "evaluate.py", "train.py"):
        shutil.copy(root / name, tmp_path / name)
    # the README's toy model, with 2**17 rows a micro-step: over 8 TiB of attention probabilities alone
    set_constants(tmp_path / "train.py", {"DEVICE_BATCH_SIZE": "2**17", "TOTAL_BATCH_SIZE": "2**24"})
    done = run_script(tmp_path, cache, "train.py")
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"train\.py: on the CPU this run needs at least [\d.]+ GiB, and [\d.]+ GiB are available: "
                        r"lower DEVICE_BATCH_SIZE, MAX_SEQ_LEN or DEPTH \(README: Smaller computers\)", message), message
    assert "step 0" not in done.stdout


# The peak resident size is measured from a high-water mark reset after the imports (Linux: clear_refs 5):
# the imports' own peak, when it is higher than what the step adds to the steady size, would hide the step.
MEASURE_STEP = """
import torch, train
def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
def resident():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
config = train.GPTConfig(sequence_len=256, vocab_size=512, n_layer=2, n_head=2, n_embd=128, window_pattern="SL")
open("/proc/self/clear_refs", "w").write("5")
before = resident()
model = train.GPT(config)
model.init_weights()
model.attention.prepare(model.windows, 256, "cpu")
idx = torch.randint(0, 512, (64, 256))
model(idx, idx).backward()
grown = peak() - before
print(grown, train.cpu_training_bytes(config, 64, model.num_params()), model.num_params())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures with Linux's /proc high-water mark")
def test_the_cpu_memory_bound_is_below_what_a_real_step_takes():
    # a lower bound: it may refuse only runs that cannot fit. A real step's peak memory (a fresh process) exceeds it.
    done = subprocess.run([sys.executable, "-c", MEASURE_STEP], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    grown, bound, num_params = map(int, done.stdout.split())
    optimizer_states = 2 * 4 * num_params  # not allocated by a bare step
    assert 0 < bound - optimizer_states <= grown


def test_compile_caches_live_beside_the_data_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert train.use_persistent_compile_cache() == str(tmp_path / "compile" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "compile" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # a user's (or an image's) choice wins
    assert train.use_persistent_compile_cache() == "/elsewhere"


def test_the_saved_model_scores_what_the_trained_one_scores_in_process(use_tiny_cache, monkeypatch, tmp_path):
    # train.py's own saving step (attention switched to a plan that can be saved), then the sealed evaluator
    import evaluate
    import prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "DEVICE_BATCH_SIZE", 4)
    tokenizer = prepare.Tokenizer.from_directory()
    torch.manual_seed(0)
    config = train.GPTConfig(sequence_len=prepare.MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=2,
                             n_head=1, n_embd=32, window_pattern="SL")
    model = train.GPT(config)
    model.init_weights()
    model.attention.prepare(model.windows, prepare.MAX_SEQ_LEN, "cpu")
    run = train.Run(torch.device("cpu"), bf16=False, seed=0, config=config, tokenizer=tokenizer, grad_accum=1)
    seconds, megabytes = train.save_for_evaluation(run, model, model.attention)
    assert seconds > 0 and megabytes == pytest.approx((tmp_path / train.MODEL_FILE).stat().st_size / 2**20)
    assert evaluate.evaluate_file(train.MODEL_FILE)["val_bpb"] == prepare.evaluate_bpb(model, tokenizer, 4)
    assert all(p.requires_grad for p in model.parameters()) and model.training  # training could go on


# ---------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------

def reference_attention(q, k, v, window):
    """Explicit float64 softmax attention, (B, T, H, D) layout, keys j with 0 <= i - j < window."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    T = q.size(2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~((j <= i) & (i - j < window)), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


# eager FlexAttention (CPU) warns that it materialises the scores; at these sizes that is the point
ignore_eager_flex = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def random_qkv(T=256, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, T, H, D, generator=g) for _ in range(3)]


@ignore_eager_flex
@pytest.mark.parametrize("banded", ["masked", "flex"])
@pytest.mark.parametrize("window", [1, 64, 255, 256, 1024])
def test_attention_matches_explicit_banded_softmax(banded, window):
    T = 256
    attention = train.Attention("masked", banded)
    attention.prepare([window, T], T, "cpu")
    q, k, v = random_qkv(T)
    with torch.no_grad():  # FlexAttention has no CPU backward; the forward is what defines the mask
        out = attention(q, k, v, window)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, window), atol=1e-5, rtol=1e-5)


def test_full_window_is_plain_causal_attention():
    T = 64
    assert torch.equal(train.band_mask(T, T, "cpu"), torch.ones(T, T, dtype=torch.bool).tril())
    assert torch.equal(train.band_mask(T, 10 * T, "cpu"), train.band_mask(T, T, "cpu"))
    q, k, v = random_qkv(T)
    attention = train.Attention()
    attention.prepare([T], T, "cpu")
    torch.testing.assert_close(attention(q, k, v, T), attention(q, k, v, 4 * T))


@ignore_eager_flex
@pytest.mark.parametrize("banded", ["masked", "flex"])
def test_sliding_window_blocks_tokens_beyond_it(banded):
    T, W = 256, 64
    attention = train.Attention("masked", banded)
    attention.prepare([W, T], T, "cpu")
    q, k, v = random_qkv(T, seed=1)
    last = T - 1
    with torch.no_grad():
        base = attention(q, k, v, W)
        for j, visible in ((last - W, False), (last - W + 1, True)):
            k2, v2 = k.clone(), v.clone()
            k2[:, j] += 3.0
            v2[:, j] += 3.0
            changed = not torch.allclose(attention(q, k2, v2, W)[:, last], base[:, last], atol=1e-6)
            assert changed == visible, f"key {last - j} back from the query: visible={changed}, expected {visible}"


@pytest.mark.parametrize(("pattern", "n_layer", "expected"), [
    ("SSSL", 8, ["S", "S", "S", "L", "S", "S", "S", "L"]),
    ("SL", 3, ["S", "L", "L"]),  # the last layer is always full
    ("L", 2, ["L", "L"]),
    ("s", 2, ["S", "L"]),
])
def test_window_pattern_maps_to_half_and_full_context(pattern, n_layer, expected):
    config = train.GPTConfig(sequence_len=128, vocab_size=64, n_layer=n_layer, n_head=1, n_embd=16, window_pattern=pattern)
    assert train.window_sizes(config) == [{"S": 64, "L": 128}[c] for c in expected]


def test_per_token_loss_shape_and_mean():
    torch.manual_seed(0)
    config = train.GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32, window_pattern="SL")
    model = train.GPT(config)
    model.init_weights()
    model.attention.prepare(model.windows, 32, "cpu")
    idx = torch.randint(0, 64, (3, 32))
    per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3, 32)
    torch.testing.assert_close(per_token.mean(), model(idx, idx))
    logits = model(idx)
    assert logits.shape == (3, 32, 64) and logits.abs().max() < 15  # soft-capped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (4, 48, 96), (256, 512)])
def test_orthogonalize_drives_singular_values_to_one(shape, dtype):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    X = train.orthogonalize(G, steps=5, dtype=dtype).float()
    assert X.shape == G.shape
    # 5 Polar Express steps leave singular values within ~[0.86, 1.14] for well-conditioned input
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.8 and s.max() < 1.2, (s.min().item(), s.max().item())
    # ... and keep G's singular vectors: X is close to the exact polar factor U V^T
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    assert (X - polar).norm() / polar.norm() < 0.15


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_lr_schedule_never_rises_and_stays_in_range(a, b):
    lo, hi = sorted((a, b))
    assert train.lr_multiplier(hi) <= train.lr_multiplier(lo) + 1e-12 or train.WARMUP_RATIO > 0
    assert min(train.FINAL_LR_FRAC, 1.0) - 1e-12 <= train.lr_multiplier(a) <= 1.0 + 1e-12

def test_prefetch_yields_in_order_then_reraises_the_loaders_error():
    def loader():
        yield from range(10)
        raise ValueError("shard unreadable")

    batches = train.prefetch(loader(), depth=2)
    assert [next(batches) for _ in range(10)] == list(range(10))
    with pytest.raises(ValueError, match="shard unreadable"):
        next(batches)

# ---------------------------------------------------------------------------
# CUDA only
# ---------------------------------------------------------------------------

@pytest.mark.gpu
def test_the_compiled_model_is_one_graph_the_autograd_cache_can_serve_on_cuda(tmp_path, monkeypatch):
    # a warm start must load the model's forward/backward split, not trace and partition it again: nothing in the
    # graph may make AOTAutograd's cache refuse it (strict mode raises, naming what it refused)
    import torch._functorch.config
    import torch._inductor.config
    from torch._dynamo.utils import counters
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", True)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", True)
    monkeypatch.setattr(torch._functorch.config, "strict_autograd_cache", True)
    device = torch.device("cuda")
    T = 256
    attention = train.Attention("sdpa", "flex", train.pick_sdpa_backend(4, 2, T, 64, torch.bfloat16, device))
    config = train.GPTConfig(sequence_len=T, vocab_size=256, n_layer=2, n_head=2, n_embd=128, window_pattern="SL")
    with torch.device(device):
        model = train.GPT(config, attention)
    model.init_weights(low_precision=torch.bfloat16)
    attention.prepare(model.windows, T, device)
    idx = torch.randint(0, 256, (4, T), device=device)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    with torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16):
        compiled(idx, idx, reduction="none").mean().backward()
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0
    assert counters["aot_autograd"]["autograd_cache_miss"] + counters["aot_autograd"]["autograd_cache_hit"] == 1
    torch._dynamo.reset()


@pytest.mark.gpu
def test_compiled_flex_and_sdpa_match_masked_attention_on_cuda():
    device = torch.device("cuda")
    T = 256
    backends = train.pick_sdpa_backend(4, 2, T, 64, torch.bfloat16, device)
    results = []
    for attention in (train.Attention("sdpa", "flex", backends), train.Attention("masked", "masked")):
        torch.manual_seed(0)
        config = train.GPTConfig(sequence_len=T, vocab_size=256, n_layer=2, n_head=2, n_embd=128, window_pattern="SL")
        with torch.device(device):
            model = train.GPT(config, attention)
        model.init_weights()
        with torch.no_grad():  # non-zero projections so attention actually reaches the loss
            for block in model.blocks:
                block.attn.c_proj.weight.normal_(0, 0.02)
        attention.prepare(model.windows, T, device)
        idx = torch.randint(0, 256, (4, T), device=device, generator=torch.Generator(device).manual_seed(0))
        compiled = torch.compile(model, dynamic=False, fullgraph=True)
        with torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = compiled(idx, idx)
        loss.backward()
        results.append((loss.detach(), model.blocks[0].attn.c_q.weight.grad.clone()))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=2e-2, rtol=2e-2)
    assert torch.nn.functional.cosine_similarity(grad_a.flatten(), grad_b.flatten(), dim=0) > 0.99
