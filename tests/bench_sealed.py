"""The sealed evaluation against the in-process one it replaced, on the same trained weights (BENCHMARKS.md §11).

Usage (in the repository, data prepared): python tests/bench_sealed.py [STEPS]

Trains train.py's default model for STEPS optimizer steps (a step count, not the time budget, so that both
evaluations see the same weights), then scores it twice:
  in-process: prepare.evaluate_bpb through the compiled training graph, as train.py did before sealing
  sealed:     train.save_for_evaluation (the export), then `python evaluate.py model.export` in a fresh process
and prints `key: value` lines: both val_bpb, their difference, the in-process seconds, the export's seconds and
megabytes, the evaluator's wall-clock and its own eval_seconds. On a CPU it runs whatever sizes prepare.py and
train.py hold (the README's toy sizes in BENCHMARKS).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import train  # noqa: E402
from prepare import evaluate_bpb, make_dataloader  # noqa: E402


class InProcess(nn.Module):
    """The compiled training graph as evaluate_bpb calls a model, with grad mode on so that no second graph is
    compiled: what train.py's evaluation was before it was sealed."""

    def __init__(self, model, train_model):
        super().__init__()
        self.model, self.train_model = model, train_model

    def forward(self, x, y, reduction="none"):
        with torch.enable_grad():
            return self.train_model(x, y, reduction=reduction).detach()


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    os.chdir(REPO)
    run = train.set_up()
    loader = make_dataloader(run.tokenizer, train.DEVICE_BATCH_SIZE, train.MAX_SEQ_LEN, "train")
    x, y, _ = next(loader)
    model, train_model, attention, compiled, _ = train.build_model(run, x, y)
    optimizer = train.build_optimizer(model, compile_updates=False, ns_dtype=torch.bfloat16 if run.bf16 else torch.float32)
    for step in range(steps):
        for micro in range(run.grad_accum):
            if step or micro:  # build_model ran micro-step 0 of step 0
                train.micro_step(run, train_model, x, y)
            x, y, _ = next(loader)
        optimizer.step()
        model.zero_grad(set_to_none=True)
    run.sync()
    print(f"trained: {steps} steps | attention: {attention.name()} | compiled: {compiled}", flush=True)

    t0 = time.time()
    with run.autocast():
        in_process = evaluate_bpb(InProcess(model, train_model) if compiled else model, run.tokenizer,
                                  train.DEVICE_BATCH_SIZE)
    run.sync()
    in_process_seconds = time.time() - t0
    export_seconds, model_mb = train.save_for_evaluation(run, model, attention)
    del optimizer, train_model, model
    if run.use_cuda:
        torch.cuda.empty_cache()  # the evaluator is another process on the same GPU

    t0 = time.time()
    done = subprocess.run([sys.executable, "evaluate.py", train.MODEL_FILE], capture_output=True, text=True)
    evaluator_wall = time.time() - t0
    print(done.stdout.strip())
    if done.returncode:
        sys.exit(f"evaluator failed ({done.returncode}): {done.stderr[-2000:]}")
    sealed = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("val_bpb:", "eval_seconds:")))
    sealed_bpb = float(sealed["val_bpb"])
    print(f"in_process_val_bpb:  {in_process:.6f}")
    print(f"sealed_val_bpb:      {sealed_bpb:.6f}")
    print(f"difference:          {sealed_bpb - in_process:+.6f}")
    print(f"in_process_seconds:  {in_process_seconds:.1f}")
    print(f"export_seconds:      {export_seconds:.1f}")
    print(f"model_mb:            {model_mb:.1f}")
    print(f"evaluator_wall_s:    {evaluator_wall:.1f}")
    print(f"sealed_eval_seconds: {float(sealed['eval_seconds']):.1f}")


if __name__ == "__main__":
    main()
