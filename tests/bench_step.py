"""Profile the default train.py's training step on a CUDA GPU (not a test: run it by hand; BENCHMARKS.md §5).

Prints greppable lines: the steady-state step time and tokens/s, the optimizer update compiled against eager,
and where a step's GPU time goes, by kind of kernel. Usage: python tests/bench_step.py  (data from prepare.py)
BENCH_INDUCTOR="prologue_fusion=False,coordinate_descent_tuning=True" sets Inductor options for the whole step
(values are Python literals), to try them without editing train.py.
"""

import ast
import collections
import os
import re
import time

import torch
from torch.profiler import ProfilerActivity, profile

import train

STEPS = 10           # timed steady-state steps
PROFILED_STEPS = 2
KINDS = [            # (kind, kernel-name pattern), first match wins
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|cublas"),
    ("flex attention", r"flex|triton_tem_fused"),
    ("sdpa (cudnn/flash)", r"cudnn|fmha|flash|sdpa"),
    ("cross-entropy", r"nll|log_softmax|cross_entropy"),
    ("optimizer", r"foreach|multi_tensor|_fused_adam|lerp"),
    ("fused elementwise/norm (inductor)", r"^triton_"),
    ("copies", r"copy|memcpy|memset|cat"),
]


def kind_of(name):
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.I)), "other")


def patch_inductor(spec):
    import torch._inductor.config as inductor
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        inductor.__setattr__(key.strip(), ast.literal_eval(value.strip()))
        print(f"inductor: {key.strip()} = {getattr(inductor, key.strip())!r}")


def main():
    patch_inductor(os.environ.get("BENCH_INDUCTOR", ""))
    run = train.set_up()
    loader = train.prefetch(train.make_dataloader(run.tokenizer, train.DEVICE_BATCH_SIZE, train.MAX_SEQ_LEN, "train"))
    x, y, _ = next(loader)
    t0 = time.time()
    model, train_model, attention, compiled, _ = train.build_model(run, x, y)
    run.sync()
    print(f"compile model + first micro-step: {time.time() - t0:.1f}s | attention: {attention.name()}")
    model.zero_grad(set_to_none=True)

    def step(optimizer):
        for _ in range(run.grad_accum):
            bx, by, _ = next(loader)
            train.micro_step(run, train_model, bx, by)
        optimizer.step()
        model.zero_grad(set_to_none=True)

    def time_updates(optimizer, n=20):
        for _ in range(run.grad_accum):  # gradients to update with
            bx, by, _ = next(loader)
            train.micro_step(run, train_model, bx, by)
        run.sync()
        t = time.time()
        for _ in range(n):
            optimizer.step()
        run.sync()
        model.zero_grad(set_to_none=True)
        return (time.time() - t) / n

    for compile_updates in (False, True):
        optimizer = train.build_optimizer(model, compile_updates=compile_updates, ns_dtype=torch.bfloat16)
        t = time.time()
        step(optimizer)
        run.sync()
        first = time.time() - t
        print(f"optimizer compiled={compile_updates}: first step {first:.1f}s | update {1000 * time_updates(optimizer):.2f}ms")

    for _ in range(3):
        step(optimizer)
    run.sync()
    t = time.time()
    for _ in range(STEPS):
        step(optimizer)
    run.sync()
    dt = (time.time() - t) / STEPS
    tok_s = train.TOTAL_BATCH_SIZE / dt
    peak = train.peak_flops(run.device)
    mfu = 100 * model.flops_per_token() * tok_s / peak if peak else 0.0
    print(f"step_ms: {1000 * dt:.1f} | tok/s: {tok_s:,.0f} | mfu: {mfu:.1f}% | "
          f"peak_vram_mb: {torch.cuda.max_memory_allocated() / 2**20:,.0f}")

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step(optimizer)
        run.sync()
    by_kind, by_name = collections.Counter(), collections.Counter()
    for event in prof.key_averages():
        if event.device_time_total > 0 and event.device_type == torch.autograd.DeviceType.CUDA:
            by_kind[kind_of(event.key)] += event.device_time_total
            by_name[event.key] += event.device_time_total
    total = sum(by_kind.values())
    print(f"gpu_ms_per_step: {total / 1000 / PROFILED_STEPS:.1f}")
    for kind, us in by_kind.most_common():
        print(f"kind: {kind:36s} {100 * us / total:5.1f}% {us / 1000 / PROFILED_STEPS:8.2f} ms/step")
    for name, us in by_name.most_common(25):
        print(f"kernel: {100 * us / total:5.1f}% {us / 1000 / PROFILED_STEPS:8.2f} ms/step  {name[:110]}")


if __name__ == "__main__":
    main()
