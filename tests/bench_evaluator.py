"""Where the sealed evaluation's time goes (BENCHMARKS.md §12): the default model of train.py, saved as train.py
saves it (weights as initialised: the cost does not depend on them), then evaluate.evaluate_file under
torch.profiler. Prints the evaluation's figures and the operators that took the most device time.

Usage (in the repository, data prepared): python tests/bench_evaluator.py [ROWS]
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import evaluate  # noqa: E402
import train  # noqa: E402


def main():
    run = train.set_up()
    attention = train.Attention(full="sdpa", banded="masked")
    torch.manual_seed(0)
    with torch.device(run.device):
        model = train.GPT(run.config, attention)
    model.init_weights(low_precision=torch.bfloat16 if run.bf16 else None)
    attention.prepare(model.windows, train.MAX_SEQ_LEN, run.device)
    t0 = time.time()
    evaluate.save_model(model, train.DEVICE_BATCH_SIZE, "/tmp/bench.export",
                        autocast_dtype=torch.bfloat16 if run.bf16 else None)
    print(f"export_seconds: {time.time() - t0:.1f}")
    del model
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.use_cuda else [])
    with profile(activities=activities) as prof:
        result = evaluate.evaluate_file("/tmp/bench.export")
    print(f"val_bpb: {result['val_bpb']:.6f} | eval_seconds: {result['eval_seconds']:.1f} | "
          f"load_seconds: {result['load_seconds']:.1f} | rows_checked: {result['rows_checked']}")
    sort = "cuda_time_total" if run.use_cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
