"""The cost of checking the workspace's protected files (guard.py) per iteration, on a repo with a few large ones.

Not collected by default (no test_ prefix). Run:  python tests/bench_protected.py [--files 3] [--mib 100]
Prints greppable lines, e.g.  protected_check_s: 0.21  (guard.check: hashing every protected file of the
workspace, and git HEAD), protected_copy_check_s: 0.19 (hashing them again in the runner's fresh copy) and,
for scale, sandbox_copy_s: 0.9 (one copy of the repository, which every iteration makes twice anyway).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoresearch_helpers import REPO_ROOT, write_task  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from pytest_autoresearch.engine import Engine  # noqa: E402
from pytest_autoresearch.guard import check, copy_hashes  # noqa: E402
from pytest_autoresearch.sandbox import copy_tree  # noqa: E402
from pytest_autoresearch.storage import Storage  # noqa: E402
from pytest_autoresearch.task import load_task  # noqa: E402


def make_repo(root: Path, files: int, mib: int) -> None:
    """The task, a git repository, and `files` protected data files of `mib` MiB each (random bytes)."""
    write_task(root, spec={"protected": ["prepare.py", "data/*.bin"]})
    (root / "prepare.py").write_text("TIME_BUDGET = 300\n")
    (root / "data").mkdir()
    for i in range(files):
        with open(root / "data" / f"shard{i}.bin", "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def median_s(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "repo"
        make_repo(root, args.files, args.mib)
        task = load_task(root / "experiments/t/task.yaml", root)
        engine = Engine(rootdir=root, storage=Storage(root / "work"), worker="main", commit=False)
        checked, stopped = check(engine, task)  # records them: every later call compares
        assert stopped is None and len(checked.hashes) == args.files + 1
        copy = Path(folder) / "copy"

        def copy_repo():
            shutil.rmtree(copy, ignore_errors=True)
            return copy_tree(root, copy, engine.storage_in_tree)

        manifest = copy_repo()
        print(f"protected_files: {args.files} x {args.mib} MiB + prepare.py")
        print(f"protected_check_s: {median_s(lambda: check(engine, task), args.repeats):.3f}")
        print(f"protected_copy_check_s: {median_s(lambda: copy_hashes(task, copy, manifest), args.repeats):.3f}")
        print(f"sandbox_copy_s: {median_s(copy_repo, args.repeats):.3f}")


if __name__ == "__main__":
    main()
