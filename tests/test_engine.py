"""Engine modules one at a time: task validation, globs, limits, sandbox copies, results, GPUs, workspace."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoresearch_helpers import write_task
from pytest_autoresearch import gpus
from pytest_autoresearch.engine import Engine
from pytest_autoresearch.storage import Storage
from pytest_autoresearch.landing import rebase
from pytest_autoresearch.limits import Change, Verdict, count_lines, diff_artifacts
from pytest_autoresearch.policies import Decision
from pytest_autoresearch.results import Record, ResultsStore
from pytest_autoresearch.scorers import extract_metrics
from pytest_autoresearch.scorers.stdout import extract_score
from pytest_autoresearch.sandbox import Link, copy_tree, hash_contents, scan
from pytest_autoresearch.task import TaskError, load_task
from pytest_autoresearch.workspace import apply_contents


def task_at(tmp_path: Path, **spec):
    folder = write_task(tmp_path, spec=spec)
    return load_task(folder / "task.yaml", tmp_path)


# ----------------------------------------------------------------------------
# task.yaml


def test_defaults(tmp_path):
    task = task_at(tmp_path)
    assert (task.name, task.max_files, task.max_lines, task.gpus, task.policy.kind) == ("t", None, None, 0, "greedy")
    assert task.scorer.pattern.pattern == r"^score:\s*(\S+)" and task.runner_timeout == 30.0
    assert not task.workspace_mode and task_at(tmp_path, mutator="workspace").workspace_mode


@pytest.mark.parametrize("spec, message", [
    ({"scorer": {"direction": None}}, "scorer.direction: missing required key"),
    ({"mutation": {"max_lines": 1.5}}, "mutation.max_lines: must be an integer >= 0, got 1.5"),
    ({"mutator": "agent"}, "mutator: must be 'workspace' or a mapping"),
    ({"name": "bad name"}, "name: must be a string of letters"),
    ({"scorer": {"pattern": "score: \\S+"}}, "scorer.pattern: regex 'score: \\\\S+' needs a group"),
    ({"artifacts": []}, "artifacts: must be a non-empty list"),
    ({"extra": 1}, "extra: unknown key"),
    ({"policy": {"kind": "noise-aware", "confidence": 2}}, "policy.confidence: must be a number strictly between"),
    ({"mutator": {"prompt": "nope.md"}}, "mutator.prompt: 'nope.md' is not a file (paths are relative to the repository root)"),
    ({"mutator": {"prompt": "/etc/hosts"}}, "mutator.prompt: '/etc/hosts' is an absolute path"),
    ({"mutator": {"prompt": ""}}, "mutator.prompt: must be a repo-relative path of a prompt file, got ''"),
])
def test_errors_are_one_line_naming_file_and_key(tmp_path, spec, message):
    with pytest.raises(TaskError) as excinfo:
        task_at(tmp_path, **spec)
    assert str(excinfo.value).startswith(f"experiments/t/task.yaml: {message}")
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("glob, path, matches", [
    ("src/*.py", "src/a.py", True), ("src/*.py", "src/sub/a.py", False), ("src/**/*.py", "src/a.py", True),
    ("src/**/*.py", "src/x/y/a.py", True), ("src/", "src/x/y", True), ("a?.txt", "ab.txt", True),
    ("a?.txt", "a/.txt", False), ("[ab].md", "b.md", True), ("[!ab].md", "b.md", False), ("x.md", "x.md", True),
    ("f[0-9].py", "f5.py", True), ("f[0-9].py", "f-.py", False),  # a range, not the characters 0, - and 9
    ("f[!a].py", "fb.py", True), ("f[!a].py", "f/.py", False), ("f[/].py", "f/.py", False),  # classes stay in a folder
])
def test_artifact_globs(tmp_path, glob, path, matches):
    assert task_at(tmp_path, artifacts=[glob]).is_artifact(path) is matches


def test_protected_wins_over_artifacts(tmp_path):
    task = task_at(tmp_path, artifacts=["*.py"], protected=["prepare.py"])
    assert task.is_artifact("train.py") and not task.is_artifact("prepare.py")


# ----------------------------------------------------------------------------
# limits


def test_count_lines_matches_a_unified_diff():
    assert count_lines(b"a\nb\nc\n", b"a\nB\nc\nd\n") == 3  # -b +B +d
    assert count_lines(None, b"1\n2\n") == 2 and count_lines(b"1\n", None) == 1
    assert count_lines(b"x", Link("y")) == 2
    assert count_lines(b"a\nb\n", b"a\r\nb\r\n") == 4  # new line endings change every line
    assert count_lines(b"a", b"a\n") == 2  # as diff's "\\ No newline at end of file": -a +a


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=12), st.lists(st.sampled_from(["a", "b", "c"]), max_size=12))
def test_count_lines_properties(a, b):
    old, new = "".join(x + "\n" for x in a).encode(), "".join(x + "\n" for x in b).encode()
    n = count_lines(old, new)
    assert (n == 0) == (a == b)
    assert n % 2 == (len(a) + len(b)) % 2  # every unmatched line of either side counts once
    assert abs(len(a) - len(b)) <= n <= len(a) + len(b)


def test_diff_artifacts_kinds():
    changes = diff_artifacts({"a": b"1\n", "b": b"2\n"}, {"a": b"1\n", "b": b"3\n", "c": b"4\n"})
    assert changes == [Change("b", "changed", 2), Change("c", "added", 1)]


# ----------------------------------------------------------------------------
# sandbox


def test_copy_tree_skips_work_vcs_venvs_and_caches(tmp_path):
    src = tmp_path / "src"
    for rel in ["a.py", "pkg/b.py", "work/results.jsonl", ".git/HEAD", "pkg/__pycache__/b.pyc", "myenv/pyvenv.cfg",
                "node_modules/x.js", "pkg/work/kept.txt"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    os.symlink("a.py", src / "link.py")
    manifest = copy_tree(src, tmp_path / "dst")
    assert set(manifest) == {"a.py", "pkg/b.py", "pkg/work/kept.txt", "link.py"}
    assert manifest["link.py"] == Link("a.py") and scan(tmp_path / "dst") == manifest
    (tmp_path / "dst" / "a.py").write_text("changed")
    assert scan(tmp_path / "dst")["a.py"] != manifest["a.py"]


def test_hash_contents_depends_on_paths_and_bytes():
    h = hash_contents({"a": b"1"})
    assert h == hash_contents({"a": b"1"}) != hash_contents({"b": b"1"}) != hash_contents({"a": b"2"})
    assert hash_contents({"a": Link("x")}) != hash_contents({"a": b"x"})


# ----------------------------------------------------------------------------
# workspace


def test_apply_contents_writes_links_and_deletes(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    (tmp_path / "run.sh").write_text("echo")
    os.chmod(tmp_path / "run.sh", 0o755)
    apply_contents(tmp_path, {"new/a.txt": b"A", "old.txt": None, "l": Link("new/a.txt"), "run.sh": b"echo 2"})
    assert (tmp_path / "new/a.txt").read_bytes() == b"A" and not (tmp_path / "old.txt").exists()
    assert os.readlink(tmp_path / "l") == "new/a.txt" and os.access(tmp_path / "run.sh", os.X_OK)
    assert sorted(p.name for p in tmp_path.rglob("*tmp")) == []


def test_apply_contents_changes_nothing_when_staging_fails(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    with pytest.raises(OSError):
        apply_contents(tmp_path, {"a.txt": b"A", "blocker/b.txt": b"B"})
    assert (tmp_path / "a.txt").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "blocker"]


# ----------------------------------------------------------------------------
# results


def record(task="t", iteration=1, status="keep", **kw) -> Record:
    return Record(task=task, iteration=iteration, status=status, metric="score", direction="maximize",
                  started_at="2026-01-01T00:00:00+00:00", worker="main", **kw)


def test_results_append_and_scores_by_hash(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append(record(iteration=0, status="baseline", baseline_hash="b0", scores=[1.0], score=1.0))
    store.append(record(iteration=1, status="keep", baseline_hash="b0", candidate_hash="c1", scores=[2.0], score=2.0))
    assert store.scores_for("t", "b0") == [1.0] and store.scores_for("t", "c1") == [2.0]
    assert store.scores_for("t", "zz") == [] and store.scores_for("other", "b0") == []
    assert all(json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines())


def test_keep_scores_stand_in_for_a_baseline_only_when_reuse_is_asked(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append(record(iteration=1, status="keep", candidate_hash="c1", scores=[2.0, 3.0], score=2.5))
    assert store.scores_for("t", "c1") == [2.0, 3.0] and store.scores_for("t", "c1", reuse_kept=False) == []
    store.append(record(iteration=0, status="baseline", baseline_hash="c1", scores=[1.0, 2.0], score=1.5))
    assert store.scores_for("t", "c1", reuse_kept=False) == [1.0, 2.0] == store.scores_for("t", "c1")


def test_runner_seeds_differ_between_a_candidate_and_its_rescoring_under_noise_aware(tmp_path):
    def runner_seed(task, iteration, run):  # the seed rule is the policy's own
        return task.policy.runner_seed(iteration, run)
    greedy, noisy = task_at(tmp_path), task_at(tmp_path, policy={"kind": "noise-aware", "repeats": 3})
    assert [runner_seed(greedy, i, 0) for i in (0, 1, 7)] == [42, 42, 42]  # upstream: every run seeded alike
    assert [runner_seed(noisy, 0, r) for r in range(3)] == [42, 43, 44]
    seeds = [{runner_seed(noisy, i, r) for r in range(3)} for i in range(4)]
    assert all(a.isdisjoint(b) for k, a in enumerate(seeds) for b in seeds[k + 1:])


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_append_starts_fresh(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    store.append(record(iteration=1))
    with open(path, "a") as f:
        f.write('{"task": "t", "iter')
    with pytest.warns(UserWarning, match=r"r.jsonl:2: skipping a line that is not a whole JSON record"):
        assert [r["iteration"] for r in store.records()] == [1]
    store.append(record(iteration=2))
    lines = path.read_text().splitlines()
    assert lines[1] == '{"task": "t", "iter' and json.loads(lines[2])["iteration"] == 2
    assert [r["iteration"] for r in store.records()] == [1, 2]  # warned once per line, not at every read


def test_results_refuse_nan(tmp_path):
    with pytest.raises(ValueError):
        ResultsStore(tmp_path / "r.jsonl").append(record(score=float("nan")))


def test_reserved_iterations_are_unique_across_threads(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append(record(iteration=4))
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(ResultsStore(tmp_path / "r.jsonl").reserve_iteration("t")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(5, 13))


# ----------------------------------------------------------------------------
# runner output


def test_extract_score_takes_the_last_matching_line(tmp_path):
    task = task_at(tmp_path)
    assert extract_score(task.scorer.pattern, "score: 1\nnoise\nscore: 2.5\n", "score") == (2.5, None)
    assert extract_score(task.scorer.pattern, "score: abc\n", "score")[1] == "no metric: score 'abc' is not a number"
    assert extract_score(task.scorer.pattern, "score: nan\n", "score")[1] == "no metric: score is nan"
    assert extract_score(task.scorer.pattern, "", "score")[0] is None


def test_extract_metrics_reads_key_number_lines():
    out = "val_bpb:          0.997900\npeak_vram_mb:     45060.2\nstep 10 loss 3.2\nnum_params_M: 50.3\r\ndepth: 8\n"
    assert extract_metrics(out) == {"val_bpb": 0.9979, "peak_vram_mb": 45060.2, "num_params_M": 50.3, "depth": 8.0}


# ----------------------------------------------------------------------------
# GPUs


def lease(tmp_path, worker, count):
    with gpus.gpu_lease(tmp_path / "locks", worker, count, poll_s=0.01) as (devices, _):
        return devices


def test_a_free_gpu_lease_is_the_workers_own_slice(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert [lease(tmp_path, w, 1) for w in ("gw0", "gw1", "gw3", "gw4", "main")] == ["0", "1", "3", "0", "0"]
    assert lease(tmp_path, "gw1", 2) == "2,3"
    with pytest.raises(RuntimeError, match="runner.gpus is 5 but only 4 GPU"):
        lease(tmp_path, "gw0", 5)


def test_with_every_gpu_leased_a_run_waits_for_one_instead_of_sharing(tmp_path, monkeypatch):
    import threading
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    got = {}
    with gpus.gpu_lease(tmp_path / "locks", "gw0", 1) as (first, _), \
            gpus.gpu_lease(tmp_path / "locks", "gw2", 1) as (second, _):  # gw2 prefers 0: it is taken
        assert (first, second) == ("0", "1")

        def third():
            with gpus.gpu_lease(tmp_path / "locks", "gw4", 1, poll_s=0.01) as (devices, waited):
                got.update(devices=devices, waited=waited)
        waiter = threading.Thread(target=third)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not got  # both GPUs held: it waits
    waiter.join(5)
    assert got["devices"] in ("0", "1") and got["waited"] >= 0.3


def test_device_count_without_a_driver_is_a_number():
    assert gpus.device_count() >= 0


@pytest.mark.parametrize(("visible", "expected"), [("", 0), ("3", 1), ("0,1,2", 1)])
def test_runner_gpus_auto_is_one_gpu_where_one_is_visible_and_none_otherwise(tmp_path, monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert task_at(tmp_path, runner={"gpus": "auto"}).gpus == expected


def test_runner_gpus_of_another_word_is_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match=r"runner\.gpus: must be an integer >= 0 or 'auto', got 'all'"):
        task_at(tmp_path, runner={"gpus": "all"})


@pytest.mark.gpu
def test_device_count_through_the_driver_library_agrees_with_torch():
    import torch
    assert gpus.device_count() == torch.cuda.device_count() > 0


# ----------------------------------------------------------------------------
# stale keeps under xdist


def _rebase(engine, task, record, decision, verdict, baseline, current):
    return rebase(engine, task, record.scores, decision, verdict.candidate, baseline, current)


def test_stale_keep_is_rebased_only_without_conflict_and_when_still_better(tmp_path):
    task = task_at(tmp_path, artifacts=["experiments/t/*.txt"])
    engine = Engine(rootdir=tmp_path, storage=Storage(tmp_path / "work", tmp_path / "r.jsonl"), worker="gw0",
                    commit=False)
    store = engine.storage.results
    baseline = {"experiments/t/value.txt": b"1\n", "experiments/t/other.txt": b"x\n"}
    newer = {**baseline, "experiments/t/other.txt": b"y\n"}  # another worker's keep, scored 5
    store.append(record(iteration=0, status="baseline", baseline_hash=hash_contents(newer), scores=[5.0], score=5.0))
    keep = Decision("keep", "better", None)
    mine = Verdict((Change("experiments/t/value.txt", "changed", 2),), {"experiments/t/value.txt": b"9\n"})
    rec = record(scores=[9.0], score=9.0)
    assert _rebase(engine, task, rec, keep, mine, baseline, newer).verdict == "keep"
    rec.scores = [4.0]
    assert _rebase(engine, task, rec, keep, mine, baseline, newer).reason.startswith("stale: does not beat")
    conflicting = {**newer, "experiments/t/value.txt": b"2\n"}
    store.append(record(iteration=0, status="baseline", baseline_hash=hash_contents(conflicting), scores=[1.0]))
    rec.scores = [9.0]
    assert _rebase(engine, task, rec, keep, mine, baseline, conflicting).reason.startswith("stale: conflicts")
    unscored = {**newer, "experiments/t/new.txt": b"z\n"}
    assert "not scored yet" in _rebase(engine, task, rec, keep, mine, baseline, unscored).reason


def test_stale_noise_aware_keep_is_judged_against_the_newer_keeps_scores_until_rescored(tmp_path):
    task = task_at(tmp_path, artifacts=["experiments/t/*.txt"],
                   policy={"kind": "noise-aware", "repeats": 3, "confidence": 0.95})
    engine = Engine(rootdir=tmp_path, storage=Storage(tmp_path / "work", tmp_path / "r.jsonl"), worker="gw0",
                    commit=False)
    store = engine.storage.results
    baseline = {"experiments/t/value.txt": b"1\n", "experiments/t/other.txt": b"x\n"}
    newer = {**baseline, "experiments/t/other.txt": b"y\n"}  # gw1 kept this; nobody re-scored it yet
    store.append(record(iteration=2, status="keep", candidate_hash=hash_contents(newer), scores=[5.0, 5.1, 4.9]))
    mine = Verdict((Change("experiments/t/value.txt", "changed", 2),), {"experiments/t/value.txt": b"9\n"})
    keep = Decision("keep", "better", None)
    rec = record(iteration=3, scores=[9.0, 9.2, 8.9])
    rebased = _rebase(engine, task, rec, keep, mine, baseline, newer)
    assert rebased.verdict == "keep" and rebased.reason.endswith("(its keep's own scores)")
    rec.scores = [5.1, 4.9, 5.2]  # no better than the newer keep
    assert _rebase(engine, task, rec, keep, mine, baseline, newer).reason.startswith(
        "stale: does not beat the current best 5 (its keep's own scores)")
    store.append(record(iteration=0, status="baseline", baseline_hash=hash_contents(newer), scores=[4.0, 4.1, 3.9]))
    rec.scores = [5.1, 4.9, 5.2]  # re-scored afresh, the newer keep is 4: now mine beats it
    rebased = _rebase(engine, task, rec, keep, mine, baseline, newer)
    assert rebased.verdict == "keep" and "own scores" not in rebased.reason


def test_write_atomic_gives_new_files_the_usual_mode_and_keeps_existing_modes(tmp_path):
    from pytest_autoresearch.files import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.md", "report\n")
        script = tmp_path / "run.sh"
        script.write_text("old\n")
        script.chmod(0o755)
        write_atomic(script, b"new\n")
    finally:
        os.umask(old)
    assert (tmp_path / "new.md").stat().st_mode & 0o777 == 0o644
    assert script.stat().st_mode & 0o777 == 0o755 and script.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
