"""Time the banded (S-layer) attention of the default train.py on a CUDA GPU, by every exact method we have
(not a test: run it by hand; BENCHMARKS.md §5). Forward + backward at the real shape, checked against a
reference, plus full causal attention as the speed a perfect banded kernel would beat.

Greppable lines: `method: NAME | fwd+bwd ms | max |Δout| | max |Δgrad|`, or `method: NAME | failed: ...`; the Δs
are against flex on plain inputs (not meaningful for the methods that QK-norm first). Also tried on 2026-12-02
(BENCHMARKS.md §5): USE_TMA, backward blocks 64x64 with 3 stages, masked SDPA on the efficient back-end.
Usage: python tests/bench_attention.py
"""

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import train

B, H, T, D = train.DEVICE_BATCH_SIZE, 4, train.MAX_SEQ_LEN, train.HEAD_DIM
WINDOW = T // 2


def band(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (q_idx - kv_idx < WINDOW)


def flex_method(block_mask, kernel_options=None):
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, kernel_options=kernel_options)


MODEL_LAYOUT = set()  # methods called on (B, H, T, D) views of (B, T, H, D) memory


def in_model_layout(method):
    MODEL_LAYOUT.add(method)
    return method


def flex_as_in_the_model(block_mask, qk_norm, prologue_fusion=True):
    """Called on inputs as train.py hands them over, (B, H, T, D) views of (B, T, H, D) tensors (see MODEL_LAYOUT),
    optionally QK-normed in the same compiled graph (which Inductor may fuse into the kernel as a prologue)."""
    def attend(q, k, v):
        if qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        return flex_attention(q, k, v, block_mask=block_mask)
    compiled = torch.compile(attend, dynamic=False)

    def run(q, k, v):
        with torch._inductor.config.patch(prologue_fusion=prologue_fusion):
            return compiled(q, k, v)
    return run


def model_attention_path(block_mask, cos, sin, contiguous, prologue_fusion=True):
    """train.py's whole path around the S layers' attention, from the projections' (B, T, H, D) memory: rotary,
    QK-norm, flex, and the output reshaped for c_proj. With `contiguous`, q, k, v are laid out (B, H, T, D)
    before flex (the norm's kernel writes them so), which may stop Inductor fusing the norm in as a prologue."""
    def attend(q, k, v):
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # back to the projections' views
        q, k = train.norm(train.apply_rotary(q, cos, sin)), train.norm(train.apply_rotary(k, cos, sin))
        q, k, v = q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2), v.transpose(1, 2)
        if contiguous:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        y = flex_attention(q, k, v, block_mask=block_mask).transpose(1, 2).reshape(B, T, H * D)
        return y.view(B, T, H, D).transpose(1, 2)
    compiled = torch.compile(attend, dynamic=False)

    def run(q, k, v):
        with torch._inductor.config.patch(prologue_fusion=prologue_fusion):
            return compiled(q, k, v)
    return run


def masked_sdpa(backends, mask):
    def attend(q, k, v):
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attend


def split_halves(backends, second_half_mask):
    """Exact for WINDOW == T/2: the first half's queries see a plain causal prefix (fast fused causal kernel);
    the second half's see a band over keys 1..T-1, computed with a mask."""
    def attend(q, k, v):
        h = T // 2
        with sdpa_kernel(backends):
            first = F.scaled_dot_product_attention(q[:, :, :h], k[:, :, :h], v[:, :, :h], is_causal=True)
            second = F.scaled_dot_product_attention(q[:, :, h:], k[:, :, 1:], v[:, :, 1:], attn_mask=second_half_mask)
        return torch.cat([first, second], dim=2)
    return attend


def causal_full(backends):
    def attend(q, k, v):
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend


def main():
    device = torch.device("cuda")
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16)
    i = torch.arange(T, device=device)
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < WINDOW)
    second_half_mask = mask[T // 2:, 1:].contiguous()
    block_mask = create_block_mask(band, None, None, T, T, device=device)

    # the same values in (B, T, H, D) memory, the layout the model's projections produce
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))

    def run(method):
        model_layout = method in MODEL_LAYOUT
        inputs = (qt, kt, vt) if model_layout else (q, k, v)
        for t in inputs:
            t.grad = None
        out = method(*(t.transpose(1, 2) for t in inputs) if model_layout else inputs)
        out.backward(grad_out)
        grads = [t.grad.transpose(1, 2) if model_layout else t.grad for t in inputs]
        return out.detach(), torch.cat(grads)

    reference_out, reference_grad = run(flex_method(block_mask))
    cudnn = [SDPBackend.CUDNN_ATTENTION]
    angles = torch.outer(torch.arange(T, device=device).float(), 1e-4 ** (torch.arange(D // 2, device=device) / (D // 2)))
    cos, sin = (f(angles).bfloat16()[None, :, None, :] for f in (torch.cos, torch.sin))
    methods = {
        "flex (default kernel options)": flex_method(block_mask),
        "flex on (B, T, H, D) memory, as in the model": in_model_layout(flex_as_in_the_model(block_mask, False)),
        "flex on (B, T, H, D) memory + QK-norm, prologue fusion on": in_model_layout(flex_as_in_the_model(block_mask, True)),
        "flex on (B, T, H, D) memory + QK-norm, prologue fusion off": in_model_layout(
            flex_as_in_the_model(block_mask, True, prologue_fusion=False)),
        "model path: rotary + QK-norm + flex + reshape, as train.py": in_model_layout(
            model_attention_path(block_mask, cos, sin, contiguous=False)),
        "model path, q k v made contiguous (B, H, T, D) before flex": in_model_layout(
            model_attention_path(block_mask, cos, sin, contiguous=True)),
        "model path, prologue fusion off": in_model_layout(
            model_attention_path(block_mask, cos, sin, contiguous=False, prologue_fusion=False)),
        "flex fwd 128x128": flex_method(block_mask, {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8}),
        "sdpa cudnn + band mask": masked_sdpa(cudnn, mask),
        "halves: cudnn causal + cudnn masked": split_halves(cudnn, second_half_mask),
        "reference only, not banded: cudnn causal over T": causal_full(cudnn),
    }
    for name, method in methods.items():
        try:
            out, grad = run(method)
            ms = train.time_cuda(lambda: run(method), warmup=3, iters=10)
        except Exception as e:
            print(f"method: {name} | failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        d_out = (out.float() - reference_out.float()).abs().max().item()
        d_grad = (grad.float() - reference_grad.float()).abs().max().item()
        print(f"method: {name} | fwd+bwd {ms:.2f} ms | max |Δout| {d_out:.3g} | max |Δgrad| {d_grad:.3g}", flush=True)
        del out, grad
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
