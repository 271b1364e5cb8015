"""Harness overhead per iteration: pytest item time minus mutator_s and runner_s.

Not collected by default (no test_ prefix). Run:  python tests/bench_overhead.py [--iterations 10]
Prints greppable lines, e.g.  overhead_small_repo_s: 0.012  and  overhead_5000_files_s: 0.41
Two repos: a tiny one (just the task) and one with 5,000 small files beside it (what every sandbox copies).
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
from autoresearch_helpers import REPO_ROOT, plugin_args, write_task  # noqa: E402

FILLER_FILES = 5000
FILES_PER_FOLDER = 100


def make_repo(root: Path, filler: int) -> None:
    (root / "pytest.ini").write_text("[pytest]\n")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    for label, filler in (("small_repo", 0), ("5000_files", FILLER_FILES)):
        with tempfile.TemporaryDirectory() as tmp:
            make_repo(Path(tmp), filler)
            samples = overhead(Path(tmp), args.iterations)
        print(f"overhead_{label}_s: {statistics.median(samples):.3f}")
        print(f"overhead_{label}_max_s: {max(samples):.3f}")


if __name__ == "__main__":
    main()
