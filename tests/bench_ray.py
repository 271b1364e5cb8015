"""The Ray executor's cost per iteration against the local one, on a trivial task (its mutator and runner take
milliseconds, so what is measured is the engine and Ray: snapshot, scheduling, worker, child process, landing).

Not collected by default (no test_ prefix). Run:  python tests/bench_ray.py [--address HOST:PORT] [--gpus 1]
Without --address it starts a two-node cluster on loopback (one fake GPU each, tests/ray_cluster.py) and stops
it after. Each mode runs a session of `--short` and one of `--long` iterations; the difference over the extra
iterations is the time per iteration, free of the session's start-up (pytest, ray.init), which is printed
apart. Prints greppable lines, e.g.  local_s_per_iteration: 0.35  and  ray_overhead_s_per_iteration: 0.9
The mutator always makes a worse change: each iteration runs the whole path, and the workspace stays as it is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoresearch_helpers import REPO_ROOT, plugin_args, write_task  # noqa: E402


def session_s(iterations: int, gpus: int, *args: str) -> float:
    """Wall seconds of one `pytest --autoresearch` session of `iterations` iterations in a fresh repository."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pytest.ini").write_text("[pytest]\n")
        write_task(root, "bench", step=-1, spec={"runner": {"gpus": gpus}})
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-q", "-p",
                        "no:cacheprovider", "-p", "no:xdist", "--autoresearch-iterations", str(iterations), *args],
                       cwd=root,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True, capture_output=True)
        return time.perf_counter() - start


def per_iteration(short: int, long: int, gpus: int, *args: str) -> tuple[float, float]:
    """(seconds per iteration, seconds of start-up): from a short and a long session."""
    a, b = session_s(short, gpus, *args), session_s(long, gpus, *args)
    each = (b - a) / (long - short)
    return each, a - short * each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing cluster (default: a two-node one on loopback)")
    parser.add_argument("--gpus", type=int, default=1, help="runner.gpus of the Ray runs (default 1)")
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=12)
    args = parser.parse_args()
    cluster = None
    if args.address is None:
        from ray_cluster import start_cluster
        cluster = start_cluster({"head": (2, 1), "two": (2, 1)})
    address = args.address or cluster.address
    try:
        local, local_start = per_iteration(args.short, args.long, 0)
        ray1, ray1_start = per_iteration(args.short, args.long, args.gpus, "--autoresearch-executor", "ray",
                                         "--autoresearch-ray-address", address, "--autoresearch-parallel", "1")
        ray_n, _ = per_iteration(args.short, args.long, args.gpus, "--autoresearch-executor", "ray",
                                 "--autoresearch-ray-address", address)
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"local_s_per_iteration: {local:.3f}")
    print(f"local_startup_s: {local_start:.2f}")
    print(f"ray_parallel_1_s_per_iteration: {ray1:.3f}")
    print(f"ray_startup_s: {ray1_start:.2f}")
    print(f"ray_overhead_s_per_iteration: {ray1 - local:.3f}")
    print(f"ray_default_parallel_s_per_iteration: {ray_n:.3f}")


if __name__ == "__main__":
    main()
