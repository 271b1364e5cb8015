"""Harness overhead per iteration: pytest item time minus mutator_s and runner_s.

Not collected by default (no test_ prefix). Run:  python tests/bench_overhead.py [--iterations 10]
Prints greppable lines, e.g.  overhead_small_repo_s: 0.012  and  overhead_5000_files_s: 0.41
Two repos: a tiny one (just the task) and one with 5,000 small files beside it (what every sandbox copies), the
latter also with a mutator that takes 1 s (the runner's copy is then made while it runs).
Then the check by content alone on the 5,000 files (content_check_5000_files_s: hashing every file outside the
artifacts again after the mutator, against the hashes taken while copying) and the runner's fresh copy.
The mutator always makes a worse change, so each iteration runs the whole path (copy, mutate, limits,
run, decide, record) and the workspace stays as it is; iteration 1 (which also scores the baseline) is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoresearch_helpers import MUTATE_ADD, REPO_ROOT, plugin_args, write_task  # noqa: E402

FILLER_FILES = 5000
FILES_PER_FOLDER = 100


def make_repo(root: Path, filler: int, mutator_s: float = 0.0) -> None:
    (root / "pytest.ini").write_text("[pytest]\n")
    if mutator_s:  # a mutator that thinks for a while, as a model does: the runner's copy is made meanwhile
        write_task(root, "bench", mutate=MUTATE_ADD.format(path="experiments/bench/value.txt", step=-1) +
                   f"import time\ntime.sleep({mutator_s})\n")
    else:
        write_task(root, "bench", step=-1)
    for i in range(filler):
        folder = root / "src" / f"pkg{i // FILES_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" * 5)


def overhead(root: Path, iterations: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-q", "-p", "no:cacheprovider",
                    "--autoresearch-iterations", str(iterations), "--junitxml", "junit.xml"],
                   cwd=root, env=env, check=True, capture_output=True)
    item_s = {case.get("name"): float(case.get("time")) for case in ET.parse(root / "junit.xml").iter("testcase")}
    records = [json.loads(line) for line in (root / "work" / "results.jsonl").read_text().splitlines()]
    by_iteration = {r["iteration"]: r for r in records if r["status"] != "baseline"}
    return [item_s[f"bench[{k}]"] - by_iteration[k]["mutator_s"] - by_iteration[k]["runner_s"]
            for k in range(2, iterations + 1)]


def check_cost(root: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of limits.check_sandbox on a sandbox of root, and of the fresh copy the runner gets."""
    import shutil
    import time

    from pytest_autoresearch.limits import check_sandbox
    from pytest_autoresearch.sandbox import copy_tree, read_contents, scan
    from pytest_autoresearch.task import load_task

    task = load_task(root / "experiments" / "bench" / "task.yaml", root)
    checks, copies = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as scratch:
            sandbox, digests = Path(scratch) / "sandbox", {}
            manifest = copy_tree(root, sandbox, frozenset({"work"}), digests)
            baseline = read_contents(sandbox, [rel for rel in manifest if task.is_artifact(rel)])
            (sandbox / "experiments/bench/value.txt").write_text("0\n")  # what a mutator leaves
            start = time.perf_counter()
            verdict = check_sandbox(task, sandbox, manifest, scan(sandbox), digests, baseline, root)
            checks.append(time.perf_counter() - start)
            assert verdict.violation is None and verdict.files_changed == 1, verdict
            shutil.rmtree(sandbox)
            start = time.perf_counter()
            copy_tree(root, Path(scratch) / "candidate", frozenset({"work"}))
            copies.append(time.perf_counter() - start)
    return statistics.median(checks), statistics.median(copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    for label, filler, mutator_s in (("small_repo", 0, 0.0), ("5000_files", FILLER_FILES, 0.0),
                                     ("5000_files_1s_mutator", FILLER_FILES, 1.0)):
        with tempfile.TemporaryDirectory() as tmp:
            make_repo(Path(tmp), filler, mutator_s)
            samples = overhead(Path(tmp), args.iterations)
        print(f"overhead_{label}_s: {statistics.median(samples):.3f}")
        print(f"overhead_{label}_max_s: {max(samples):.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        make_repo(Path(tmp), FILLER_FILES)
        check_s, copy_s = check_cost(Path(tmp), 5)
    print(f"content_check_{FILLER_FILES}_files_s: {check_s:.3f}")
    print(f"fresh_copy_{FILLER_FILES}_files_s: {copy_s:.3f}")


if __name__ == "__main__":
    main()
