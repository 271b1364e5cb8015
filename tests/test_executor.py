"""The executor seam without a cluster (the default run; tests/test_ray.py runs the Ray executor on one): the
options' one-line errors, no Ray imported unless asked for, the repository snapshot the nodes get, the task's
setup: key."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import io
from pathlib import Path

import pytest

from autoresearch_helpers import REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.engine import Engine
from pytest_autoresearch.offsite import SNAPSHOT_LIMIT_BYTES, SnapshotTooLarge, snapshot_repo
from pytest_autoresearch.storage import Storage
from pytest_autoresearch.task import TaskError, load_task

# an inner session's conftest that hides Ray (as in an environment without the extra) and notes, at the end,
# whether anything imported it
NO_RAY = '''
import os, sys
if os.environ.get("HIDE_RAY"):
    sys.modules["ray"] = None  # `import ray` raises ImportError
def pytest_unconfigure(config):
    with open(os.environ["RAY_SEEN"], "w") as f:
        f.write(str(sys.modules.get("ray") is not None))
'''


def inner(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-p", "no:cacheprovider",
                           *args], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_ADDRESS": "", **env})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(NO_RAY)
    write_task(tmp_path, spec={"protected": ["conftest.py"]})
    return tmp_path


def test_a_local_session_imports_no_ray(repo, tmp_path):
    done = inner(repo, RAY_SEEN=str(tmp_path / "seen"))
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "seen").read_text() == "False"
    assert [r["status"] for r in records(repo)] == ["baseline", "keep"]


def test_without_ray_the_executor_says_what_to_install(repo, tmp_path):
    done = inner(repo, "--autoresearch-executor", "ray", "--autoresearch-ray-address", "127.0.0.1:9", HIDE_RAY="1",
                 RAY_SEEN=str(tmp_path / "seen"))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "ERROR: --autoresearch-executor ray needs Ray: pip install 'pytest-autoresearch[ray]'" in done.stderr
    assert records(repo) == []


@pytest.mark.parametrize("args, message", [
    (["--autoresearch-parallel", "2"], "--autoresearch-parallel needs --autoresearch-executor ray (with xdist: -n N)"),
    (["--autoresearch-executor", "ray", "--autoresearch-parallel", "0"], "--autoresearch-parallel must be >= 1, got 0"),
    (["--autoresearch-executor", "ray", "-n", "2"],
     "--autoresearch-executor ray runs iterations on the cluster from one pytest process: drop -n (xdist)"),
    (["--autoresearch-executor", "ray"], "--autoresearch-executor ray needs a cluster: --autoresearch-ray-address "
                                         "HOST:PORT or RAY_ADDRESS (start one with `ray start --head`"),
], ids=["parallel-without-ray", "parallel-0", "with-xdist", "no-address"])
def test_executor_options_that_cannot_work_are_one_line_errors(repo, tmp_path, args, message):
    done = inner(repo, *args, RAY_SEEN=str(tmp_path / "seen"))
    assert done.returncode == 4 and f"ERROR: {message}" in done.stderr, done.stdout + done.stderr
    assert records(repo) == []


def test_an_address_where_no_cluster_answers_is_a_one_line_error_at_once(repo, tmp_path):
    pytest.importorskip("ray")
    done = inner(repo, "--autoresearch-executor", "ray", "--autoresearch-ray-address", "127.0.0.1:9",
                 RAY_SEEN=str(tmp_path / "seen"))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "ERROR: --autoresearch-ray-address 127.0.0.1:9: no Ray cluster answers there" in done.stderr
    assert records(repo) == []


def engine_of(root: Path) -> Engine:
    return Engine(rootdir=root, storage=Storage(root / "work"), worker="main", commit=False)


def test_the_snapshot_is_what_a_sandbox_copies_addressed_by_content(tmp_path):
    root = tmp_path / "repo"
    write_task(root)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "link").symlink_to("run.sh")
    for left_out in (".git/HEAD", "work/results.jsonl", ".venv/pyvenv.cfg", "pkg/__pycache__/m.pyc"):
        (root / left_out).parent.mkdir(parents=True, exist_ok=True)
        (root / left_out).write_text("x")
    first = snapshot_repo(engine_of(root), tmp_path / "scratch1")
    with tarfile.open(fileobj=io.BytesIO(first.tar)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"repo/run.sh", "repo/empty", "repo/link", "repo/experiments/t/task.yaml"} <= set(members)
    assert not any(part in name for name in members for part in (".git", "work/", ".venv", "__pycache__"))
    assert members["repo/run.sh"].mode & 0o111 and members["repo/link"].issym()
    os.utime(root / "run.sh", (1, 1))  # touched, not changed: the same content, the same digest
    assert snapshot_repo(engine_of(root), tmp_path / "scratch2").digest == first.digest
    (root / "run.sh").write_text("#!/bin/sh\necho changed\n")
    assert snapshot_repo(engine_of(root), tmp_path / "scratch3").digest != first.digest


def test_a_repository_over_the_snapshot_limit_is_refused_naming_its_largest_files(tmp_path):
    root = tmp_path / "repo"
    write_task(root)
    with open(root / "checkpoint.bin", "wb") as f:  # sparse: its size counts, no disk is used
        f.truncate(SNAPSHOT_LIMIT_BYTES + (1 << 20))
    with pytest.raises(SnapshotTooLarge) as error:
        snapshot_repo(engine_of(root), tmp_path / "scratch")
    assert f"over its {SNAPSHOT_LIMIT_BYTES >> 20} MiB limit (largest: checkpoint.bin (257 MiB)" in str(error.value)
    assert "keep data outside the repository" in str(error.value) and not (tmp_path / "scratch").exists()


def test_setup_is_a_command_with_a_timeout(tmp_path):
    folder = write_task(tmp_path, spec={"setup": {"command": "python prepare.py", "timeout": 60}})
    task = load_task(folder / "task.yaml", tmp_path)
    assert (task.setup_command, task.setup_timeout) == ("python prepare.py", 60)
    write_task(tmp_path, spec={"setup": "python prepare.py"})
    with pytest.raises(TaskError, match=r"^experiments/t/task.yaml: setup: must be a mapping"):
        load_task(folder / "task.yaml", tmp_path)
