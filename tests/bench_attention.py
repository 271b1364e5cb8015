"""Time the banded (S-layer) attention of the default train.py on a CUDA GPU, by every exact method we have
(not a test: run it by hand; BENCHMARKS.md §5). Forward + backward at the real shape, checked against a
reference, plus full causal attention as the speed a perfect banded kernel would beat.

Greppable lines: `method: NAME | fwd+bwd ms | max |Δout| | max |Δgrad|`, or `method: NAME | failed: ...`.
Usage: python tests/bench_attention.py
"""

import torch
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

    def run(method):
        q.grad = k.grad = v.grad = None
        out = method(q, k, v)
        out.backward(grad_out)
        return out.detach(), torch.cat([q.grad, k.grad, v.grad])

    reference_out, reference_grad = run(flex_method(block_mask))
    cudnn, efficient, flash = [SDPBackend.CUDNN_ATTENTION], [SDPBackend.EFFICIENT_ATTENTION], [SDPBackend.FLASH_ATTENTION]
    methods = {
        "flex (default kernel options)": flex_method(block_mask),
        "flex USE_TMA": flex_method(block_mask, {"USE_TMA": True}),
        "flex fwd 128x128": flex_method(block_mask, {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8}),
        "flex bwd 64x64 stages 3": flex_method(block_mask, {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64,
                                                            "bwd_BLOCK_N2": 64, "bwd_num_stages": 3, "bwd_num_warps": 4}),
        "sdpa cudnn + band mask": masked_sdpa(cudnn, mask),
        "sdpa efficient + band mask": masked_sdpa(efficient, mask),
        "halves: cudnn causal + cudnn masked": split_halves(cudnn, second_half_mask),
        "halves: cudnn causal + efficient masked": split_halves(cudnn + efficient, second_half_mask),
        "reference only, not banded: cudnn causal over T": causal_full(cudnn),
        "reference only, not banded: flash causal over T": causal_full(flash),
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
