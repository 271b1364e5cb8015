"""Keeps survive kill -9 at any instant: a real inner pytest session is SIGKILLed at a seeded random point of
its file replacements (the keep's renames, the record's neighbours, the state files), then run again; after
every rerun the workspace is exactly a baseline or a candidate, each landed keep has exactly one record, no
temp file is left and results.jsonl parses line by line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance  # minutes: CI runs it in a step of its own (-m acceptance)

KILLS = 100
SEED = 20261201

# Patched into the inner session only (the mutator and runner are separate processes): SIGKILL this process
# just before or right after its K-th file replacement or removal in the repository (renames of a keep, the
# journal, state files, the results and their key). Those in the scratch copies under $TMPDIR are not counted:
# removing a sandbox unlinks every file of it, which would put every kill point before the keep.
KILLER = '''
import os, signal
_at, _root = os.environ.get("KILL_AT"), os.getcwd() + os.sep
if _at:
    _at, _when, _count = int(_at), os.environ["KILL_WHEN"], [0]
    def _deadly(real, target_arg):
        def call(*args, **kwargs):
            target = args[target_arg] if len(args) > target_arg else None
            if kwargs.get("dir_fd") is not None or not os.path.abspath(os.fspath(target)).startswith(_root):
                return real(*args, **kwargs)  # a scratch copy's (rmtree works through dir_fd)
            _count[0] += 1
            if _count[0] == _at and _when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if _count[0] == _at and _when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call
    os.replace, os.unlink = _deadly(os.replace, 1), _deadly(os.unlink, 0)
'''
MUTATE = '''
from pathlib import Path
for name in ("a.txt", "b.txt"):  # two artifacts that move together: a half-applied keep shows as a != b
    p = Path(name)
    p.write_text(f"{int(p.read_text()) + 1}\\n")
'''
SCORE = '''
from pathlib import Path
a, b = (int(Path(n).read_text()) for n in ("a.txt", "b.txt"))
print(f"score: {a + b if a == b else -1}")
'''


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("0\n")
    (tmp_path / "b.txt").write_text("0\n")
    (tmp_path / "conftest.py").write_text(KILLER)
    task = tmp_path / "experiments" / "bump"
    task.mkdir(parents=True)
    (task / "mutate.py").write_text(MUTATE)
    (task / "score.py").write_text(SCORE)
    (task / "task.yaml").write_text(
        "name: bump\nartifacts: [a.txt, b.txt]\nprotected: [conftest.py]\n"
        f"mutator: {{command: {sys.executable} experiments/bump/mutate.py, timeout: 30}}\n"
        f"runner: {{command: {sys.executable} experiments/bump/score.py, timeout: 30}}\n"
        "scorer: {metric: score, direction: maximize}\npolicy: {kind: greedy}\n")
    return tmp_path


def research(repo: Path, **env: str) -> subprocess.CompletedProcess:
    # only our plugin: other installed plugins (xdist, hypothesis) would double each session's start-up
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "pytest_autoresearch.plugin", "--autoresearch", "-q",
                           "-p", "no:cacheprovider", "experiments/bump"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env}, timeout=120)


def check(repo: Path) -> int:
    """The invariants after a clean run; returns the number of keeps on record."""
    a, b = ((repo / n).read_text() for n in ("a.txt", "b.txt"))
    assert a == b, f"half-applied keep: a.txt {a!r}, b.txt {b!r}"
    lines = (repo / "work" / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line a whole record
    keeps = [r["iteration"] for r in records if r["status"] == "keep"]
    assert len(keeps) == len(set(keeps)), f"a keep recorded twice: {keeps}"
    assert int(a) == len(keeps), f"workspace at {a.strip()} after {len(keeps)} recorded keeps"
    leftovers = [str(p.relative_to(repo)) for p in repo.rglob("*.tmp")]
    assert not leftovers, f"temp files survived a rerun: {leftovers}"
    return len(keeps)


@pytest.mark.slow
def test_a_session_killed_anywhere_in_landing_a_keep_leaves_nothing_half_done(repo: Path) -> None:
    rng = random.Random(SEED)
    killed = half_applied = 0
    for _ in range(KILLS):
        done = research(repo, KILL_AT=str(rng.randint(1, 8)), KILL_WHEN=rng.choice(["before", "after"]))
        killed += done.returncode == -signal.SIGKILL
        half_applied += (repo / "a.txt").read_text() != (repo / "b.txt").read_text()
        rerun = research(repo)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        check(repo)
    assert killed >= KILLS * 0.8, f"only {killed} of {KILLS} sessions were killed: the kill points miss the keep"
    recovered = [r for r in map(json.loads, (repo / "work/results.jsonl").read_text().splitlines())
                 if "landed after its process was killed" in r["reason"]]
    assert recovered, "no kill ever fell between a keep's journal and its record"
    print(f"\nkill -9: {killed} of {KILLS} sessions killed; {half_applied} left a half-applied workspace, "
          f"{len(recovered)} keeps landed by the rerun; {check(repo)} keeps, each recorded once; 0 temp files")


@pytest.mark.slow
def test_a_sequential_session_killed_anywhere_resumes_from_its_kept_runs(repo: Path) -> None:
    """Under the sequential policy the baseline is the last keep's own runs: after any kill and rerun, each
    candidate is judged against exactly those runs, and the baseline is scored once (no run lost or counted
    twice in what judges the next candidate)."""
    task = repo / "experiments" / "bump" / "task.yaml"
    task.write_text(task.read_text().replace("policy: {kind: greedy}",
                                             "policy: {kind: sequential, noise_sd: 0.1, pool_noise: false}"))
    rng = random.Random(SEED + 21)
    for _ in range(KILLS // 5):
        research(repo, KILL_AT=str(rng.randint(1, 8)), KILL_WHEN=rng.choice(["before", "after"]))
        rerun = research(repo)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        check(repo)
    records = [json.loads(line) for line in (repo / "work/results.jsonl").read_text().splitlines()]
    baselines = [r for r in records if r["status"] == "baseline"]
    assert len(baselines) == 1 and len(baselines[0]["scores"]) == 1
    standing = baselines[0]["scores"]  # what judges the next candidate
    for record in sorted((r for r in records if r["status"] != "baseline"), key=lambda r: r["iteration"]):
        assert record["baseline_scores"] == standing, f"iteration {record['iteration']} judged against {record}"
        if record["status"] == "keep":
            standing = record["scores"]
    assert check(repo) >= KILLS // 5  # every candidate is a clear winner: a keep per session at least
