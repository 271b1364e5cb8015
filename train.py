"""
Autoresearch pretraining script: one GPU (or MPS, or CPU at toy size), one file.
A small GPT in the style of nanochat, trained with Muon + AdamW for a fixed wall-clock budget, then saved as
model.export, which evaluate.py scores in a process of its own (val_bpb). Edit the constants below directly;
there are no CLI flags.
Usage: uv run train.py      (by hand it ends by running evaluate.py; under the harness, the harness does)
"""

import time
T_PROCESS_START = time.time()  # startup_seconds counts from here: imports, model build, compile, warm-up

import os
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # less fragmentation at 40+ GB

import gc
import queue
import sys
import threading
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from evaluate import MODEL_FILE, save_model
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, cache_dir, make_dataloader

T_IMPORTED = time.time()

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly)
# ---------------------------------------------------------------------------

# Model architecture
DEPTH = 8               # number of transformer layers; the main size knob
ASPECT_RATIO = 64       # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128          # dimension of one attention head
WINDOW_PATTERN = "SSSL" # per-layer attention window, repeated: L = full context, S = half (last layer always L)

# Optimization
TOTAL_BATCH_SIZE = 2**19   # tokens per optimizer step (~524K), reached by gradient accumulation
DEVICE_BATCH_SIZE = 128    # sequences per forward/backward pass (lower it if out of memory)
EMBEDDING_LR = 0.6         # token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004     # lm_head (AdamW)
MATRIX_LR = 0.04           # 2-D weights of the transformer blocks (Muon)
SCALAR_LR = 0.5            # per-layer residual / x0 mixing scalars (AdamW)
WEIGHT_DECAY = 0.2         # cautious weight decay for Muon, decayed linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)   # AdamW beta1, beta2
WARMUP_RATIO = 0.0         # fraction of the time budget spent ramping the LR up
WARMDOWN_RATIO = 0.5       # fraction of the time budget spent ramping the LR down
FINAL_LR_FRAC = 0.0        # LR at the end of the warm-down, as a fraction of the peak

# Run mechanics
UNTIMED_STEPS = 5          # first optimizer steps (compilation, autotuning) don't count against TIME_BUDGET
LOG_EVERY = 10             # progress line (and the only host sync of the loop) every this many steps
COMPILE_OPTIMIZER = True   # CUDA: one compiled graph for all updates. On an H100 it costs ~24s of start-up
                           # and saves ~2.4ms a step (~0.7% more tokens in the budget) over eager updates

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    window_pattern: str


def norm(x):
    # RMSNorm without a learnable weight: the per-layer scalars and the next matrix do that job
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx, n_layer):
    # every other layer, counted back from the last one (which always has one)
    return (n_layer - 1 - layer_idx) % 2 == 0


def window_sizes(config):
    """Attention window per layer, in tokens (a query sees itself and window-1 tokens back)."""
    pattern = config.window_pattern.upper()
    assert pattern and set(pattern) <= {"S", "L"}, f"WINDOW_PATTERN must use only S and L, got {config.window_pattern!r}"
    full, half = config.sequence_len, config.sequence_len // 2
    sizes = [full if pattern[i % len(pattern)] == "L" else half for i in range(config.n_layer)]
    sizes[-1] = full  # the last layer always sees the whole context
    return sizes


def band_mask(seq_len, window, device):
    """Boolean (T, T) mask, True where query i may attend key j: causal and fewer than `window` back."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j < window)


def apply_rotary(x, cos, sin):
    # x: (B, T, H, D); rotate the pair (first half, second half) of each head by a position-dependent angle
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def fused_causal(backend):
    """Causal attention, (B, H, T, D) layout, by one SDPA back-end's own op. Calling the op rather than
    scaled_dot_product_attention inside sdpa_kernel() keeps the back-end choice out of the compiled graph:
    a graph that holds that context manager is never served from AOTAutograd's cache, so every warm start
    would trace and partition the whole model again."""
    if backend == SDPBackend.CUDNN_ATTENTION:
        return lambda q, k, v: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, is_causal=True)[0]
    if backend == SDPBackend.FLASH_ATTENTION:
        return lambda q, k, v: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, is_causal=True)[0]
    raise ValueError(f"no fused causal op for {backend}")


class Attention:
    """How attention is computed. Picked once at start-up, shared by every layer.

    full:   "sdpa" (causal SDPA; with `sdpa_backends`, the first one's fused op), "flash_attn" (installed package) or "masked"
    banded: "flex" (FlexAttention with block masks built once), "flash_attn" or "masked" (SDPA + boolean band mask)
    """

    def __init__(self, full="masked", banded="masked", sdpa_backends=None, flash_attn_func=None):
        self.full, self.banded = full, banded
        self.sdpa_backends = sdpa_backends  # list of SDPBackend, or None for PyTorch's own choice
        self.flash_attn_func = flash_attn_func
        self.seq_len = 0       # the length the masks below were built for
        self.block_masks = {}  # window -> BlockMask (FlexAttention)
        self.band_masks = {}   # window -> bool (T, T) tensor (masked SDPA)

    def exportable(self):
        """The plan evaluate.py can load: FlexAttention's block masks and the flash_attn package's kernel cannot be
        saved, so their layers switch to SDPA with the same band masks (the same attention, computed another way)."""
        self.banded = "masked" if self.banded in ("flex", "flash_attn") else self.banded
        # SDPA's own op, not a back-end's fused one: those return symbolic sizes, which the evaluator refuses (their
        # expressions would be parsed by eval); the evaluator's SDPA call picks the fused kernel at run time anyway
        self.full, self.sdpa_backends = "sdpa", None
        return self

    def name(self):
        full = self.full
        if full == "sdpa" and self.sdpa_backends:
            full = "+".join(b.name.lower().replace("_attention", "") for b in self.sdpa_backends)
        return f"{self.banded}+{full}"

    def prepare(self, windows, seq_len, device):
        """Build every mask once, up front: nothing is allocated per step."""
        self.seq_len = seq_len
        for w in set(windows):
            self.band_masks[w] = band_mask(seq_len, w, device)
            if self.banded == "flex" and w < seq_len:
                def mask_mod(b, h, q_idx, kv_idx, w=w):
                    return (kv_idx <= q_idx) & (q_idx - kv_idx < w)
                self.block_masks[w] = create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)

    def __call__(self, q, k, v, window):
        # q, k, v: (B, T, H, D) -> (B, T, H, D)
        T = q.size(1)
        banded = window < T
        kind = self.banded if banded else self.full
        if kind == "flash_attn":
            left = window - 1 if banded else -1
            return self.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kind == "flex" and T == self.seq_len:
            y = flex_attention(q, k, v, block_mask=self.block_masks[window])
        elif banded:
            # a band mask is Toeplitz, so the top-left corner of the prebuilt one serves any shorter T
            mask = self.band_masks[window][:T, :T] if T <= self.seq_len else band_mask(T, window, q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif kind == "sdpa" and self.sdpa_backends:
            y = fused_causal(self.sdpa_backends[0])(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, attention):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.attention = attention
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # value embedding gate: a per-head mixing weight computed from the first few channels of the input
        self.gate_channels = min(32, config.n_embd)
        has_ve = has_value_embedding(layer_idx, config.n_layer)
        self.ve_gate = nn.Linear(self.gate_channels, self.n_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos, sin, window):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            # ResFormer-style value residual; gate in (0, 2), exactly 1 at init (zero weights)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        # fused kernels want one dtype; autocast may leave the normed q, k in fp32 beside a bf16 v
        y = self.attention(q.to(v.dtype), k.to(v.dtype), v, window)
        return self.c_proj(y.reshape(B, T, C))


class FeedForward(nn.Module):
    """Widen 4x, square the positive part (ReLU², sparse and cheap), narrow back."""

    def __init__(self, config):
        super().__init__()
        hidden = 4 * config.n_embd
        self.up = nn.Linear(config.n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx, attention):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx, attention)
        self.ffn = FeedForward(config)

    def forward(self, x, ve, cos, sin, window):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.ffn(norm(x))


class GPT(nn.Module):
    def __init__(self, config, attention=None):
        super().__init__()
        self.config = config
        self.attention = attention or Attention()
        self.windows = window_sizes(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i, self.attention) for i in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # per-layer mixing: x <- resid_lambda * x + x0_lambda * x0 (x0 = the normed token embedding)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, config.n_embd)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        cos, sin = self._rotary_tables(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _rotary_tables(seq_len, head_dim, base=10000.0):
        inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_weights(self, low_precision=None):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = (3 / self.config.n_embd) ** 0.5  # uniform with std 1/sqrt(n_embd)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.ffn.up):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.ffn.down.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        if low_precision is not None:
            # embeddings are only gathered from: storing them in bf16 halves their memory traffic
            self.wte.to(low_precision)
            for ve in self.value_embeds.values():
                ve.to(low_precision)
            self.cos, self.sin = self.cos.to(low_precision), self.sin.to(low_precision)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per matmul weight, plus attention over each layer's window."""
        gathered = self.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul = 6 * (self.num_params() - gathered - scalars)
        T = self.config.sequence_len
        attention = sum(12 * self.config.n_embd * min(w, T) for w in self.windows)
        return matmul + attention

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        assert T <= self.cos.size(1), f"sequence length {T} exceeds the model's {self.cos.size(1)}"
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.windows[i])
        logits = self.lm_head(norm(x)).float()
        logits = 15 * torch.tanh(logits / 15)  # soft cap: logits stay in (-15, 15)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

# ---------------------------------------------------------------------------
# Optimizer: Muon for the blocks' matrices, AdamW for everything else
# ---------------------------------------------------------------------------

# Polar Express (Amsel et al., 2025): per-iteration coefficients of the odd polynomial
# a*X + b*(XX^T)X + c*(XX^T)^2 X that drives all singular values of X towards 1 in a few steps.
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def orthogonalize(G, steps=5, dtype=torch.bfloat16):
    """Approximate the orthogonal polar factor U V^T of G (..., m, n). Singular values end up near 1."""
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the wide orientation: the Gram matrix is then the small one
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # spectral norm <= Frobenius norm < 1
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def muon_update(params, grads, momentum_buf, variance_buf, momentum, lr, wd, beta2, ns_steps, ns_dtype):
    """One Muon step for a list of same-shape matrices, stacked so every kernel runs once per group."""
    g = torch.stack(grads)
    p = torch.stack(params)
    momentum_buf.lerp_(g, 1 - momentum)
    g = g.lerp(momentum_buf, momentum)  # Nesterov
    u = orthogonalize(g, ns_steps, ns_dtype).float()
    # NorMuon: normalise each output row (or column, for wide matrices) by a running RMS of its update,
    # then rescale so the whole update keeps the norm the orthogonalization gave it
    red_dim = -1 if u.size(-2) >= u.size(-1) else -2
    variance_buf.lerp_(u.square().mean(dim=red_dim, keepdim=True), 1 - beta2)
    scaled = u * variance_buf.clamp_min(1e-10).rsqrt()
    u = scaled * (u.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # cautious weight decay: decay only coordinates where the update already points towards zero
    decay = wd * p * ((u * p) >= 0)
    p = p - lr * (u + decay)
    torch._foreach_copy_(params, list(p.to(params[0].dtype).unbind(0)))


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    param.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt() + eps
    param.add_(exp_avg / denom * (-lr / (1 - beta1 ** step)))


def update_all(work, ns_dtype):
    """Every group's update in one function: compiled, it is one graph (one compilation at start-up)."""
    for kind, params, grads, state, h in work:
        if kind == "muon":
            muon_update(params, grads, state["momentum_buf"], state["variance_buf"], h["momentum"], h["lr"],
                        h["wd"], h["beta2"], h["ns_steps"], ns_dtype)
        else:
            for p, g, s in zip(params, grads, state):
                adamw_update(p, g, s["exp_avg"], s["exp_avg_sq"], h["step"], h["lr"], h["beta1"], h["beta2"], h["eps"], h["wd"])


class MuonAdamW(torch.optim.Optimizer):
    """Groups carry kind='muon' (a list of same-shape 2-D params, updated stacked) or kind='adamw'.

    Compiled, hyperparameters enter as 0-d CPU tensors refilled every step: the graph is traced once and
    a schedule that changes lr/momentum every step never triggers a recompile. Eager, they are floats.
    """

    def __init__(self, param_groups, compile_updates=False, ns_dtype=torch.bfloat16):
        super().__init__(param_groups, defaults={})
        self.compiled = compile_updates
        self._update = torch.compile(update_all, dynamic=False, fullgraph=True) if compile_updates else update_all
        self.ns_dtype = ns_dtype
        self.steps = 0
        self._hyper = [{} for _ in self.param_groups]  # per group: name -> 0-d tensor (compiled only)

    def _values(self, i, values):
        if not self.compiled:
            return values  # eager: plain floats work on every device
        for name, value in values.items():
            if name not in self._hyper[i]:
                self._hyper[i][name] = torch.tensor(0.0)
            self._hyper[i][name].fill_(value)
        return self._hyper[i]

    def _muon_state(self, params):
        state = self.state[params[0]]
        if not state:
            n, (rows, cols) = len(params), params[0].shape
            state["momentum_buf"] = torch.zeros(n, rows, cols, device=params[0].device)
            state["variance_buf"] = torch.zeros((n, rows, 1) if rows >= cols else (n, 1, cols), device=params[0].device)
        return state

    def _adamw_state(self, p):
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self):
        self.steps += 1
        work = []
        for i, group in enumerate(self.param_groups):
            params = group["params"]
            assert all(p.grad is not None for p in params), "every parameter is expected to get a gradient each step"
            grads = [p.grad for p in params]
            if group["kind"] == "muon":
                rows, cols = params[0].shape
                lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # keep the update's RMS per input comparable
                h = self._values(i, dict(lr=lr, momentum=group["momentum"], wd=group["weight_decay"], beta2=group["beta2"]))
                work.append(("muon", params, grads, self._muon_state(params), dict(h, ns_steps=group["ns_steps"])))
            else:
                h = self._values(i, dict(step=self.steps, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                                         eps=group["eps"], wd=group["weight_decay"]))
                work.append(("adamw", params, grads, [self._adamw_state(p) for p in params], h))
        self._update(work, self.ns_dtype)


def build_optimizer(model, compile_updates, ns_dtype):
    # AdamW rates were tuned at model dim 768; scale them by 1/sqrt(dim/768) for other widths
    scale = (model.config.n_embd / 768) ** -0.5
    adam = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adam, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(adam, params=[model.wte.weight] + list(model.value_embeds.parameters()), lr=EMBEDDING_LR * scale),
        dict(adam, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(adam, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    matrices = list(model.blocks.parameters())
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=MATRIX_LR,
                           momentum=0.95, beta2=0.95, ns_steps=5, weight_decay=WEIGHT_DECAY))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())), "a parameter has no optimizer group"
    optimizer = MuonAdamW(groups, compile_updates=compile_updates, ns_dtype=ns_dtype)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer

# ---------------------------------------------------------------------------
# Hardware plumbing: device, precision, compile caches, attention plans, peak FLOPs, memory
# (agents rarely need to touch this; the research lives above and in the loop below)
# ---------------------------------------------------------------------------

# Dense bf16 tensor-core peak, FLOP/s, for MFU. Matched as substrings of the device name, in order.
PEAK_BF16_FLOPS = [
    ("GH200", 989.5e12), ("H100", 989.5e12), ("H200", 989.5e12), ("H800", 989.5e12), ("H20", 148e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12), ("A10G", 70e12),
]


def detect_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_flops(device):
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), 0.0)


def use_persistent_compile_cache():
    """Keep torch.compile's caches (Inductor's compiled graphs and autotuning, Triton's kernels) beside the data,
    not in /tmp: a later experiment with the same graphs then loads them instead of compiling again.
    $TORCHINDUCTOR_CACHE_DIR and $TRITON_CACHE_DIR, if set, win. Returns the Inductor cache folder."""
    inductor = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir(), "compile", "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_dir(), "compile", "triton"))
    # only now: importing Inductor's config writes its /tmp default into the environment when none is set
    import torch._functorch.config
    import torch._inductor.config
    torch._inductor.config.fx_graph_cache = True          # compiled graphs, keyed by graph and config
    torch._functorch.config.enable_autograd_cache = True  # the forward/backward split around them
    return inductor


def compile_cache_line():
    """What the compile caches served so far: a warm start should show hits, no misses and no bypasses."""
    from torch._dynamo.utils import counters
    fx, aot = counters["inductor"], counters["aot_autograd"]
    return (f"compile cache: graphs {counters['stats']['unique_graphs']} | inductor hit {fx['fxgraph_cache_hit']} "
            f"miss {fx['fxgraph_cache_miss']} bypass {fx['fxgraph_cache_bypass']} | autograd hit "
            f"{aot['autograd_cache_hit']} miss {aot['autograd_cache_miss']} bypass {aot['autograd_cache_bypass']}")


def time_cuda(fn, warmup=3, iters=10):
    for _ in range(warmup):  # cuDNN builds and caches its execution plan over the first calls
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def pick_sdpa_backend(B, H, T, D, dtype, device):
    """Time causal SDPA forward+backward at the real shape on each fused back-end; return the fastest.

    cuDNN's kernel is usually the faster one on Hopper; PyTorch's flash kernel (FA2) on Ampere. Measuring
    costs well under a second and keeps us right on whatever card and library versions we meet.
    """
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    timings = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        def fwd_bwd(attend=fused_causal(backend)):
            attend(q, k, v).sum().backward()
        try:
            timings[backend] = time_cuda(fwd_bwd)
        except Exception as e:  # back-end unsupported on this card / build / shape
            print(f"sdpa {backend.name}: unavailable ({type(e).__name__})")
    del q, k, v
    if not timings:
        return None
    print("sdpa timings (fwd+bwd ms): " + ", ".join(f"{b.name}={ms:.2f}" for b, ms in timings.items()))
    return [min(timings, key=timings.get)]


def import_flash_attn():
    """flash-attn's function if a package is installed (never downloaded), else None."""
    for module in ("flash_attn_interface", "flash_attn"):  # FA3 (Hopper build), then FA2
        try:
            return getattr(__import__(module), "flash_attn_func")
        except Exception:
            continue
    return None


def attention_plans(device, sdpa_backends):
    """Candidate (Attention, compile?) pairs, fastest first; the first that survives a training step wins."""
    if device.type != "cuda":
        return [(Attention("masked", "masked"), False)]  # torch.compile is only relied on with CUDA
    plans = []
    fa = import_flash_attn()
    if fa is not None:
        plans.append((Attention("flash_attn", "flash_attn", flash_attn_func=fa), True))
    plans.append((Attention("sdpa", "flex", sdpa_backends), True))
    if sdpa_backends:
        plans.append((Attention("sdpa", "flex"), True))  # in case pinning the back-end is what broke
    plans.append((Attention("sdpa", "masked"), True))
    plans.append((Attention("masked", "masked"), False))  # last resort: eager, PyTorch's default kernels
    return plans


def available_memory_bytes():
    """Memory the kernel can still hand out (MemAvailable), or None where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def cpu_training_bytes(config, batch_size, num_params):
    """A lower bound on the memory of one fp32 forward+backward on the CPU: weights, gradients and two optimizer
    states; each layer's attention probabilities (B*H*T*T, kept for the backward) and a few residual-size
    activations; the logits before and after the soft cap."""
    B, T, C, H = batch_size, config.sequence_len, config.n_embd, config.n_head
    per_layer = B * H * T * T + 8 * B * T * C
    return 4 * (4 * num_params + config.n_layer * per_layer + 2 * B * T * config.vocab_size)


def check_cpu_memory(config, batch_size, num_params):
    """Refuse, with what to lower, a CPU run that cannot fit: the kernel's OOM killer would end it silently."""
    needed, available = cpu_training_bytes(config, batch_size, num_params), available_memory_bytes()
    if available is not None and needed > available:
        sys.exit(f"train.py: on the CPU this run needs at least {needed / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB "
                 f"are available: lower DEVICE_BATCH_SIZE, MAX_SEQ_LEN or DEPTH (README: Smaller computers)")


def prefetch(loader, depth=4):
    """Run a loader on a background thread. While the GPU works through queued kernels the main thread
    has little to do, so tokenizing (whose Rust core drops the GIL) and packing the next batches beside it
    keeps the GPU from waiting on the host."""
    ready = queue.Queue(maxsize=depth)

    def produce():
        try:
            for item in loader:
                ready.put(item)
        except BaseException as e:  # hand the error to the consumer instead of dying silently
            ready.put(e)

    threading.Thread(target=produce, name="prefetch", daemon=True).start()
    while True:
        item = ready.get()
        if isinstance(item, BaseException):
            raise item
        yield item

# ---------------------------------------------------------------------------
# Schedules (progress = training time / TIME_BUDGET)
# ---------------------------------------------------------------------------

def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    t = (1.0 - progress) / WARMDOWN_RATIO  # 1 -> 0 across the warm-down
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * t


def muon_momentum(step):
    return 0.85 + 0.10 * min(step / 300, 1.0)  # low momentum while the loss moves fast early on

# ---------------------------------------------------------------------------
# Training, in steps: set up, build the model, train for the budget, save for evaluation, summarize
# ---------------------------------------------------------------------------

@dataclass
class Run:
    """What the steps below share: the device and precision, the model's shape, the tokenizer."""
    device: torch.device
    bf16: bool
    seed: int
    config: GPTConfig
    tokenizer: Tokenizer
    grad_accum: int

    @property
    def use_cuda(self):
        return self.device.type == "cuda"

    def autocast(self):
        return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def sync(self):
        if self.use_cuda:
            torch.cuda.synchronize()
        elif self.device.type == "mps":
            torch.mps.synchronize()


class StartupClock:
    """Where start-up time goes: lap(name) books the seconds since the last lap under name, in order."""

    def __init__(self):
        self.phases = {"imports": T_IMPORTED - T_PROCESS_START}
        self.last = T_IMPORTED

    def lap(self, name):
        now = time.time()
        self.phases[name] = now - self.last
        self.last = now

    def line(self):
        return "startup: " + " | ".join(f"{name} {s:.1f}s" for name, s in self.phases.items()) + \
            f" | total {self.last - T_PROCESS_START:.1f}s"


def fail(message):
    print(f"\n{message}")
    print("FAIL", flush=True)
    sys.exit(1)


def set_up():
    seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
    torch.manual_seed(seed)
    device = detect_device()
    bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        print(f"compile cache: {use_persistent_compile_cache()}")
    print(f"device: {device.type}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''} | "
          f"precision: {'bf16' if bf16 else 'fp32'} | seed: {seed}")
    tokenizer = Tokenizer.from_directory()
    model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM  # round up to whole heads
    config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=DEPTH,
                       n_head=model_dim // HEAD_DIM, n_embd=model_dim, window_pattern=WINDOW_PATTERN)
    print(f"model config: {asdict(config)}")
    tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    if TOTAL_BATCH_SIZE % tokens_per_pass:
        sys.exit(f"train.py: TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of "
                 f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({tokens_per_pass})")
    if device.type == "cpu":
        with torch.device("meta"):
            check_cpu_memory(config, DEVICE_BATCH_SIZE, GPT(config).num_params())
    return Run(device, bf16, seed, config, tokenizer, TOTAL_BATCH_SIZE // tokens_per_pass)


def build_model(run, x, y):
    """Build the model under each attention plan until one survives a full forward+backward (the compile, so a
    working first plan costs nothing extra); weights are re-initialised from the same seed for each try, so the
    run doesn't depend on which plan won. Returns (model, train_model, attention, compiled), the step's loss
    and gradients kept as micro-step 0 of step 0."""
    # fused SDPA kernels need 16-bit inputs: only worth timing where we train in bf16
    sdpa_backends = None
    if run.bf16:
        sdpa_backends = pick_sdpa_backend(DEVICE_BATCH_SIZE, run.config.n_head, MAX_SEQ_LEN, HEAD_DIM, torch.bfloat16, run.device)
    for attention, compiled in attention_plans(run.device, sdpa_backends):
        torch.manual_seed(run.seed)
        with torch.device(run.device):
            model = GPT(run.config, attention)
        model.init_weights(low_precision=torch.bfloat16 if run.bf16 else None)
        attention.prepare(model.windows, MAX_SEQ_LEN, run.device)
        train_model = torch.compile(model, dynamic=False, fullgraph=True) if compiled else model
        try:
            loss = micro_step(run, train_model, x, y)
            return model, train_model, attention, compiled, loss
        except torch.OutOfMemoryError as e:
            # every other plan needs at least as much memory: say what to change instead of trying them all
            sys.exit(f"train.py: CUDA out of memory in the first step with DEVICE_BATCH_SIZE={DEVICE_BATCH_SIZE}: "
                     f"lower it (TOTAL_BATCH_SIZE is kept by gradient accumulation) or shrink the model. {str(e)[:200]}")
        except Exception as e:
            print(f"attention {attention.name()} ({'compiled' if compiled else 'eager'}) failed: {type(e).__name__}: {str(e)[:300]}")
            del model, train_model, attention
            gc.collect()
            if compiled:
                torch._dynamo.reset()
            if run.use_cuda:
                torch.cuda.empty_cache()
    sys.exit("train.py: no attention back-end could run a training step (errors above)")


def micro_step(run, train_model, x, y):
    """Forward and backward of one micro-batch; returns the mean loss, detached. (Per-token losses, then their
    mean: the graph that the measured figures and the warm compile caches hold.)"""
    with run.autocast():
        loss = train_model(x, y, reduction="none").mean()
    (loss / run.grad_accum).backward()
    return loss.detach()


def train(run, model, train_model, optimizer, train_loader, first_loss, x, y, untimed_steps, clock):
    """The loop: steps until TIME_BUDGET seconds of training have passed after the untimed warm-up steps.
    Returns (steps, training seconds, the wall-clock time the budget started)."""
    flops_per_token, peak = model.flops_per_token(), peak_flops(run.device)
    bad_loss = torch.zeros((), dtype=torch.bool, device=run.device)  # sticky flag: checked at log steps only
    step, training_time, budget_start = 0, 0.0, None
    pending = first_loss  # build_model already ran micro-step 0 of step 0: reuse its loss and gradients
    log_t, log_step = time.time(), 0
    while True:
        t_step = time.time()
        loss_sum = torch.zeros((), device=run.device)
        for _ in range(run.grad_accum):
            loss, pending = (pending, None) if pending is not None else (micro_step(run, train_model, x, y), None)
            loss_sum += loss.float()
            x, y, epoch = next(train_loader)
        train_loss = loss_sum / run.grad_accum
        bad_loss |= ~torch.isfinite(train_loss) | (train_loss > 100)

        progress = min(training_time / TIME_BUDGET, 1.0)
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        step += 1
        if step == 1:
            run.sync()
            clock.lap("compile optimizer + first update" if optimizer.compiled else "first update")

        if step == untimed_steps:
            # warm-up over: compiled, autotuned, allocator settled. Freeze what exists so the cyclic GC
            # (pauses of hundreds of ms) has nothing to scan, and start the clock.
            run.sync()
            gc.collect()
            gc.freeze()
            gc.disable()
            clock.lap("warm-up steps")
            budget_start = log_t = clock.last
            log_step = step
            print(clock.line(), flush=True)
        elif step > untimed_steps:
            training_time = time.time() - budget_start  # host clock; the GPU lags by at most a step or so
        done = step > untimed_steps and training_time >= TIME_BUDGET

        if step % LOG_EVERY == 0 or done or step <= untimed_steps:
            run.sync()
            if bad_loss.item():
                fail(f"step {step}: loss is NaN, infinite or above 100 ({train_loss.item():.4g})")
            now = time.time()
            if step > untimed_steps:
                training_time = now - budget_start
            dt = (now - log_t) / max(step - log_step, 1) if step > untimed_steps else now - t_step
            log_t, log_step = now, step
            tok_per_sec = TOTAL_BATCH_SIZE / dt
            mfu = 100 * flops_per_token * tok_per_sec / peak if peak else 0.0
            remaining = max(0.0, TIME_BUDGET - training_time)
            print(f"step {step:05d} ({100 * progress:.1f}%) | loss {train_loss.item():.6f} | lrm {lrm:.2f} | "
                  f"dt {dt * 1000:.0f}ms | tok/s {tok_per_sec:,.0f} | mfu {mfu:.1f}% | epoch {epoch} | "
                  f"remaining {remaining:.0f}s", flush=True)
        if done:
            break
    run.sync()
    return step, time.time() - budget_start, budget_start


def save_for_evaluation(run, model, attention):
    """Save the trained model as MODEL_FILE for evaluate.py: the weights as trained, the attention in a plan that can
    be saved, the training's precision. Returns (seconds, megabytes)."""
    t0 = time.time()
    attention.exportable()
    size = save_model(model, DEVICE_BATCH_SIZE, MODEL_FILE, autocast_dtype=torch.bfloat16 if run.bf16 else None)
    return time.time() - t0, size / 2**20


def summarize(run, model, steps, untimed_steps, training_time, startup_seconds, export_seconds, model_mb):
    flops_per_token, peak = model.flops_per_token(), peak_flops(run.device)
    timed_steps = steps - untimed_steps
    mfu = 100 * flops_per_token * TOTAL_BATCH_SIZE * timed_steps / training_time / peak if peak and training_time > 0 else 0.0
    if run.use_cuda:
        peak_vram_mb = torch.cuda.max_memory_allocated(run.device) / 1024**2
    elif run.device.type == "mps":
        peak_vram_mb = torch.mps.driver_allocated_memory() / 1024**2
    else:
        peak_vram_mb = 0.0
    print("---")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {time.time() - T_PROCESS_START:.1f}")
    print(f"startup_seconds:  {startup_seconds:.1f}")
    print(f"export_seconds:   {export_seconds:.1f}")
    print(f"model_mb:         {model_mb:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {steps * TOTAL_BATCH_SIZE / 1e6:.1f}")
    print(f"num_steps:        {steps}")
    print(f"num_params_M:     {model.num_params() / 1e6:.1f}")
    print(f"depth:            {DEPTH}")


def main():
    clock = StartupClock()
    run = set_up()
    clock.lap("set-up")
    train_loader = make_dataloader(run.tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
    if run.use_cuda:  # elsewhere the model computes on the same cores the loader would use
        train_loader = prefetch(train_loader)
    x, y, _ = next(train_loader)
    clock.lap("data")

    model, train_model, attention, compiled, first_loss = build_model(run, x, y)
    run.sync()
    clock.lap("compile model + first micro-step" if compiled else "first micro-step")
    print(f"attention: {attention.name()} | compiled: {compiled} | first step done at {time.time() - T_PROCESS_START:.1f}s")
    if compiled:
        print(compile_cache_line())
    print(f"parameters: {model.num_params():,} | flops/token: {model.flops_per_token():.3e} | grad accumulation: {run.grad_accum}")
    optimizer = build_optimizer(model, compile_updates=compiled and COMPILE_OPTIMIZER,
                                ns_dtype=torch.bfloat16 if run.bf16 else torch.float32)
    # compiled runs spend their first steps compiling and autotuning; eager ones need just one to settle
    untimed_steps = UNTIMED_STEPS if compiled else 1
    print(f"time budget: {TIME_BUDGET}s (after {untimed_steps} untimed warm-up steps)")

    steps, training_time, budget_start = train(run, model, train_model, optimizer, train_loader, first_loss, x, y,
                                               untimed_steps, clock)
    export_seconds, model_mb = save_for_evaluation(run, model, attention)
    summarize(run, model, steps, untimed_steps, training_time, budget_start - T_PROCESS_START, export_seconds, model_mb)
    if "AUTORESEARCH_TASK" not in os.environ:
        # by hand: score it as the harness would, in a fresh process (this one's memory goes back first)
        sys.stdout.flush()
        evaluator = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate.py")
        os.execv(sys.executable, [sys.executable, evaluator, MODEL_FILE])


if __name__ == "__main__":
    main()
