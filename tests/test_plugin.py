"""The autoresearch pytest plugin end to end: real inner pytest sessions, real mutator/runner subprocesses."""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET

import pytest

from autoresearch_helpers import PY, RENDEZVOUS_SCORE, REPO_ROOT, plugin_args, records, write_task

pytest_plugins = ["pytester"]

RECORD_KEYS = {"task", "iteration", "status", "metric", "score", "scores", "baseline_score", "baseline_scores",
               "direction", "baseline_hash", "candidate_hash", "files_changed", "lines_changed", "reason",
               "description", "log", "started_at", "duration_s", "mutator_s", "runner_s", "worker", "commit",
               "metrics", "statistic"}


def value(pytester: pytest.Pytester, name: str = "t") -> str:
    return (pytester.path / "experiments" / name / "value.txt").read_text()


# ----------------------------------------------------------------------------
# keep / discard / no change


def test_keep_writes_the_candidate_and_records_every_field(pytester, research):
    write_task(pytester.path, step=2)
    result = research("-v")
    result.assert_outcomes()  # kept items count as neither passed nor failed
    assert result.ret == 0
    result.stdout.fnmatch_lines(["experiments/t/task.yaml::t[[]1[]] KEPT 3 (+2 vs 1)*", "*1 kept*"])
    assert value(pytester) == "3\n"
    baseline, keep = records(pytester.path)
    assert set(keep) >= RECORD_KEYS and set(baseline) >= RECORD_KEYS
    assert (baseline["status"], baseline["iteration"], baseline["score"]) == ("baseline", 0, 1.0)
    assert keep["status"] == "keep" and keep["iteration"] == 1 and keep["worker"] == "main"
    assert (keep["score"], keep["baseline_score"], keep["scores"]) == (3.0, 1.0, [3.0])
    assert keep["baseline_hash"] == baseline["baseline_hash"] != keep["candidate_hash"]
    assert (keep["files_changed"], keep["lines_changed"], keep["description"]) == (1, 2, "add 2")
    assert keep["log"] == "work/logs/t/1.log" and (pytester.path / keep["log"]).is_file()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", keep["started_at"])
    assert keep["metrics"] == {"score": 3.0} and keep["commit"] is None


def test_discard_leaves_the_workspace_untouched(pytester, research):
    write_task(pytester.path, step=-1)
    result = research("-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*t[[]1[]] DISCARDED 0 (-1 vs 1)*", "*1 discarded*"])
    assert value(pytester) == "1\n"
    assert records(pytester.path)[-1]["status"] == "discard"


def test_fail_on_discard_fails_the_item(pytester, research):
    write_task(pytester.path, step=-1)
    result = research("--autoresearch-fail-on-discard")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*discarded (--autoresearch-fail-on-discard): not better*"])


def test_no_change_is_discarded_without_running(pytester, research):
    write_task(pytester.path, mutate="pass\n")
    result = research("-v")
    assert result.ret == 0
    last = records(pytester.path)[-1]
    assert (last["status"], last["reason"], last["score"], last["runner_s"]) == ("discard", "no change", None, 0.0)


def test_minimize_direction_keeps_the_lower_score(pytester, research):
    write_task(pytester.path, step=-1, spec={"scorer": {"direction": "minimize"}})
    research()
    assert value(pytester) == "0\n" and records(pytester.path)[-1]["status"] == "keep"


# ----------------------------------------------------------------------------
# Rejections: each names the path or the count; the workspace is untouched


REJECTIONS = {
    "outside-artifacts": ("open('notes.txt', 'w').write('x')", {}, "changed outside artifacts: notes.txt"),
    "protected": ("open('prepare.py', 'a').write('#')", {"protected": ["prepare.py"]},
                  "protected file changed: prepare.py"),
    "link-escaping": ("import os; os.symlink('/etc/passwd', 'experiments/t/leak.txt')",
                      {"artifacts": ["experiments/t/*.txt"]}, "link points outside the sandbox: experiments/t/leak.txt"),
    "max-files": ("[open(f'experiments/t/{i}.txt', 'w').write('1') for i in range(3)]",
                  {"artifacts": ["experiments/t/*.txt"], "mutation": {"max_files": 2}}, "3 files changed > max_files 2"),
    "max-lines": ("open('experiments/t/value.txt', 'w').write('2\\n' * 50)", {"mutation": {"max_lines": 40}},
                  "51 lines changed > max_lines 40"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejection_names_the_path_or_count(pytester, research, case):
    code, spec, reason = REJECTIONS[case]
    (pytester.path / "prepare.py").write_text("PREPARED = 1\n")
    write_task(pytester.path, mutate=code + "\n", spec=spec)
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*rejected: {reason}*"])
    last = records(pytester.path)[-1]
    assert last["status"] == "rejected" and last["reason"].startswith(reason) and last["runner_s"] == 0.0
    assert value(pytester) == "1\n" and not (pytester.path / "notes.txt").exists()
    assert (pytester.path / "prepare.py").read_text() == "PREPARED = 1\n"


# ----------------------------------------------------------------------------
# Crashes: the failure report carries the reason, the log path and the log's last lines


def test_mutator_timeout_kills_its_process_group(pytester, research):
    pidfile = pytester.path / "child.pid"
    mutate = (f"import subprocess, sys\n"
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pidfile)!r}, 'w').write(str(child.pid))\nimport time; time.sleep(60)\n")
    write_task(pytester.path, mutate=mutate, spec={"mutator": {"timeout": 1}})
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crash: mutator timed out after 1s*"])
    child = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed with its group (then reaped by init), not left running
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)
    assert records(pytester.path)[-1]["status"] == "crash"


def test_runner_crash_shows_the_traceback(pytester, research):
    score = ('import pathlib, os\nv = pathlib.Path(os.environ["VALUE_FILE"]).read_text().strip()\n'
             'if v != "1":\n    raise RuntimeError("exploded at value " + v)\nprint("score:", v)\n')
    write_task(pytester.path, score=score)
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crash: runner exited with code 1*", "*log: work/logs/t/1.log (last * lines)*",
                                 "*RuntimeError: exploded at value 2*"])
    assert value(pytester) == "1\n"


def test_missing_metric_is_a_crash(pytester, research):
    write_task(pytester.path, score='print("score: 1") if open("experiments/t/value.txt").read() == "1\\n" '
                                    'else print("nothing")\n')
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crash: no metric: no line of the runner's stdout matches*"])


# ----------------------------------------------------------------------------
# Baselines are scored once per content hash


def test_baseline_scored_once_and_reused_by_hash(pytester, research):
    write_task(pytester.path, step=-1)
    research("--autoresearch-iterations", "2")
    research()
    recs = records(pytester.path)
    assert [r["status"] for r in recs] == ["baseline", "discard", "discard", "discard"]
    assert {r["baseline_hash"] for r in recs} == {recs[0]["baseline_hash"]}
    assert [r["iteration"] for r in recs] == [0, 1, 2, 3]


def test_kept_candidate_scores_serve_as_the_next_baseline(pytester, research):
    write_task(pytester.path, step=1)
    research("--autoresearch-iterations", "3")
    recs = records(pytester.path)
    assert [r["status"] for r in recs] == ["baseline", "keep", "keep", "keep"]
    assert [r["baseline_score"] for r in recs[1:]] == [1.0, 2.0, 3.0]
    assert recs[2]["baseline_hash"] == recs[1]["candidate_hash"]


def test_noise_aware_policy_scores_baseline_repeats_times_with_seeds(pytester, research):
    # score = 10 + 5 * (value != 1) + seed % 2, and the seed is echoed as a metric
    score = ('import os\nseed = int(os.environ["AUTORESEARCH_SEED"])\nprint("seed:", seed)\n'
             'print("score:", 10 + seed % 2 + (open("experiments/t/value.txt").read() != "1\\n") * 5)\n')
    write_task(pytester.path, score=score, step=0, mutate=MUTATE_FIVE,
               # one look, each decision's own samples: the seeds below are those of 3 runs a side
               spec={"policy": {"kind": "noise-aware", "repeats": 3, "confidence": 0.9, "max_repeats": 3,
                                "pool_noise": False}})
    research("--autoresearch-iterations", "2")
    baseline, keep, rescored, second = records(pytester.path)
    assert baseline["scores"] == [10.0, 11.0, 10.0]  # baseline runs: seeds 42, 43, 44
    assert keep["status"] == "keep" and keep["scores"] == [16.0, 15.0, 16.0]  # iteration 1: seeds 45, 46, 47
    assert keep["statistic"]["n_candidate"] == 3 and keep["statistic"]["test"] == "welch_t"
    # winner's curse: the kept content is scored afresh as the new baseline, not credited with its winning scores
    assert (rescored["status"], rescored["baseline_hash"]) == ("baseline", keep["candidate_hash"])
    assert rescored["scores"] == [15.0, 16.0, 15.0] and rescored["metrics"]["seed"] == 44.0
    assert second["baseline_scores"] == rescored["scores"] and second["metrics"]["seed"] == 50.0  # 42 + 3*2 + 2


MUTATE_FIVE = 'import pathlib\npathlib.Path("experiments/t/value.txt").write_text("5\\n" if pathlib.Path("experiments/t/value.txt").read_text() == "1\\n" else "6\\n")\n'


# ----------------------------------------------------------------------------
# Workspace mode: the agent's own edit is the candidate


def test_workspace_mode_keeps_then_restores(pytester, research):
    write_task(pytester.path, spec={"mutator": "workspace"})
    research()  # first run: the workspace as found becomes the baseline
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "discard"]
    (pytester.path / "experiments/t/value.txt").write_text("5\n")  # the agent's improving edit
    research()
    assert records(pytester.path)[-1]["status"] == "keep" and value(pytester) == "5\n"
    (pytester.path / "experiments/t/value.txt").write_text("4\n")  # a worse edit
    result = research("-v")
    result.stdout.fnmatch_lines(["*DISCARDED 4 (-1 vs 5)*"])
    assert value(pytester) == "5\n"  # restored to the last kept state
    assert [r["status"] for r in records(pytester.path)][-1] == "discard"


def test_workspace_mode_rejection_restores_artifacts(pytester, research):
    write_task(pytester.path, spec={"mutator": "workspace", "mutation": {"max_lines": 1}})
    research()
    (pytester.path / "experiments/t/value.txt").write_text("7\n8\n9\n")
    result = research()
    result.stdout.fnmatch_lines(["*rejected: 4 lines changed > max_lines 1*"])
    assert value(pytester) == "1\n"


def test_workspace_mode_baseline_from_git_head_ignores_untracked_protected_files(pytester, research, commit_all):
    write_task(pytester.path, spec={"mutator": "workspace", "protected": ["data/*"]})
    commit_all("init")
    (pytester.path / "data").mkdir()
    (pytester.path / "data/cache.bin").write_bytes(b"never committed")  # protected, but not in HEAD
    (pytester.path / "experiments/t/value.txt").write_text("5\n")  # the agent's edit against HEAD's 1
    research()
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep"] and value(pytester) == "5\n"
    (pytester.path / "data/cache.bin").write_bytes(b"changed")  # from now on it is held fixed
    (pytester.path / "experiments/t/value.txt").write_text("6\n")
    research().stdout.fnmatch_lines(["*protected file data/cache.bin changed in the workspace since the last "
                                     "landing (iteration 1): the task stops*"])


def test_workspace_mode_a_new_commit_is_a_new_baseline_and_the_summary_says_so(pytester, research, commit_all):
    write_task(pytester.path, spec={"mutator": "workspace"})
    commit_all("init")  # value 1
    (pytester.path / "experiments/t/value.txt").write_text("5\n")
    research()
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep"]
    # the user shrinks the task for a small computer and commits it: judged against that, not the old keep
    (pytester.path / "experiments/t/value.txt").write_text("2\n")
    commit_all("my own baseline")
    (pytester.path / "experiments/t/value.txt").write_text("3\n")
    result = research()
    last = records(pytester.path)[-1]
    assert last["status"] == "keep" and last["baseline_score"] == 2 and last["baseline_from"].startswith("git HEAD ")
    result.stdout.fnmatch_lines(["t: new baseline from git HEAD *, committed since the last run*"])
    (pytester.path / "experiments/t/value.txt").write_text("4\n")
    result = research()  # HEAD unchanged since: the keep of 3 is the baseline, and nothing is said
    assert records(pytester.path)[-1]["baseline_score"] == 3 and records(pytester.path)[-1]["baseline_from"] is None
    assert "new baseline from" not in result.stdout.str()


def test_workspace_mode_our_own_commit_of_a_keep_is_not_a_new_baseline(pytester, research, commit_all):
    write_task(pytester.path, spec={"mutator": "workspace"})
    commit_all("init")
    (pytester.path / "experiments/t/value.txt").write_text("5\n")
    research("--autoresearch-commit")
    (pytester.path / "experiments/t/value.txt").write_text("6\n")
    result = research("--autoresearch-commit")
    assert records(pytester.path)[-1]["baseline_from"] is None and "new baseline from" not in result.stdout.str()


def test_reset_forgets_the_stored_workspace_baseline_and_keeps_the_results(pytester, research, commit_all):
    write_task(pytester.path, spec={"mutator": "workspace"})
    commit_all("init")  # value 1
    (pytester.path / "experiments/t/value.txt").write_text("5\n")
    research()  # kept, not committed: the stored baseline is now 5
    (pytester.path / "experiments/t/value.txt").write_text("3\n")
    assert research().ret == 0 and records(pytester.path)[-1]["status"] == "discard"  # 3 < 5
    (pytester.path / "experiments/t/value.txt").write_text("3\n")
    research("--autoresearch-reset")  # judged against HEAD's 1 again
    statuses = [r["status"] for r in records(pytester.path)]
    assert statuses == ["baseline", "keep", "discard", "keep"] and records(pytester.path)[-1]["baseline_score"] == 1


def dead_pid() -> int:
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("edited_since", [False, True])
def test_a_killed_restore_is_finished_but_an_edit_made_since_is_kept(pytester, research, monkeypatch, edited_since):
    from dataclasses import asdict

    from pytest_autoresearch.results import Record
    from pytest_autoresearch.workspace import Journal
    write_task(pytester.path, spec={"mutator": "workspace"})
    research()  # baseline 1
    # a process killed while restoring the baseline after judging the edit "7": its journal, no record
    record = Record(task="t", iteration=99, status="discard", metric="score", direction="maximize",
                    started_at="2026-12-01T00:00:00+00:00", worker="main", reason="worse")
    journal = Journal(pytester.path / "work" / "autoresearch", "t", 99)
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", dead_pid)
        journal.write(asdict(record), {"experiments/t/value.txt": b"1\n"}, {"experiments/t/value.txt": b"7\n"})
    (pytester.path / "experiments/t/value.txt").write_text("5\n" if edited_since else "7\n")
    research()
    recovered = next(r for r in records(pytester.path) if r["iteration"] == 99)
    assert "landed after its process was killed" in recovered["reason"]
    assert not journal.path.exists()
    if edited_since:  # the agent's new edit survives and is judged: 5 beats 1
        assert "edited since the kill: experiments/t/value.txt" in recovered["reason"]
        assert value(pytester) == "5\n" and records(pytester.path)[-1]["status"] == "keep"
    else:  # the restore is finished: nothing is left to judge
        assert value(pytester) == "1\n" and records(pytester.path)[-1]["reason"] == "no change"


# ----------------------------------------------------------------------------
# Names and paths as a user types them


def test_a_dot_slash_glob_means_the_same_path(pytester, research):
    write_task(pytester.path, spec={"artifacts": ["./experiments/t/value.txt"]})
    research()
    assert records(pytester.path)[-1]["status"] == "keep" and value(pytester) == "2\n"


def test_a_glob_that_matches_no_file_warns_when_the_task_loads(pytester, research):
    write_task(pytester.path, spec={"artifacts": ["experiments/t/value.txt", "src/*.py"], "protected": ["data/"]})
    result = research("-W", "default")
    result.stdout.fnmatch_lines(["*TaskWarning: experiments/t/task.yaml: artifacts: 'src/*.py' matches no file*",
                                 "*TaskWarning: experiments/t/task.yaml: protected: 'data/' matches no file*"])
    assert records(pytester.path)[-1]["status"] == "keep"  # a warning, not an error


def test_run_from_a_parent_folder_works_in_the_folder_holding_experiments(pytester, research):
    project = pytester.path / "project"
    write_task(project)
    (pytester.path / "unrelated").mkdir()
    (pytester.path / "unrelated" / "big.bin").write_bytes(b"x" * 1000)
    result = research("project/experiments/t")
    result.stdout.fnmatch_lines([f"autoresearch: tasks run in {project} (the folder holding experiments/)"])
    assert records(project)[-1]["status"] == "keep" and (project / "experiments/t/value.txt").read_text() == "2\n"
    assert not (pytester.path / "work").exists()


def test_an_internal_error_fails_its_item_with_the_real_error_not_an_internalerror(pytester, research):
    write_task(pytester.path, spec={"artifacts": ["experiments/t/*.txt"]})
    os.close(os.open(os.path.join(os.fsencode(pytester.path), b"experiments/t/\xff.txt"), os.O_CREAT | os.O_WRONLY))
    result = research()
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # not INTERNAL_ERROR
    result.stdout.fnmatch_lines(["*UnicodeEncodeError*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# ----------------------------------------------------------------------------
# Command line, reports, inertness


def test_junitxml_carries_the_score(pytester, research):
    write_task(pytester.path, step=3)
    research("--junitxml=report.xml")
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "report.xml").iter("property")}
    assert props["score"] == "4.0" and props["baseline_score"] == "1.0" and props["status"] == "keep"


def test_terminal_summary_table(pytester, research):
    write_task(pytester.path, "up", step=1)
    write_task(pytester.path, "down", step=-1)
    result = research("--autoresearch-iterations", "2")
    result.stdout.fnmatch_lines(["*= autoresearch =*", "task*iters*kept*disc*crash*rej*baseline*best*delta",
                                 "down*2*0*2*0*0*1*1*+0", "up*2*2*0*0*0*1*3*+2", "results: work/results.jsonl"])


def test_results_option_and_explicit_paths(pytester, research):
    write_task(pytester.path, "a")
    write_task(pytester.path, "b")
    research("experiments/b", "--autoresearch-results", "out/r.jsonl")
    lines = (pytester.path / "out/r.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"task": "b"' in line for line in lines)


def test_inert_without_the_flag(pytester, monkeypatch):
    write_task(pytester.path)
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    result = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "work").exists()


def test_only_task_files_are_collected_under_autoresearch(pytester, research):
    write_task(pytester.path)
    (pytester.path / "experiments" / "test_inside.py").write_text("def test_x():\n    assert False\n")
    result = research("-v")
    assert result.ret == 0
    assert "test_inside" not in result.stdout.str()


def test_commit_records_the_hash(pytester, research, commit_all):
    write_task(pytester.path, step=1)
    commit_all("init")
    monkeypatch_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                       "GIT_COMMITTER_EMAIL": "t@t"}
    os.environ.update(monkeypatch_env)
    try:
        research("--autoresearch-commit")
    finally:
        for key in monkeypatch_env:
            os.environ.pop(key)
    keep = records(pytester.path)[-1]
    log = pytester.run("git", "log", "-1", "--format=%H%n%s%n%b").stdout.lines
    assert keep["commit"] == log[0] and re.match(r"[0-9a-f]{40}$", log[0])
    assert log[1] == "autoresearch t #1: score 1 -> 2" and "add 1" in log
    assert pytester.run("git", "status", "--porcelain", "experiments").stdout.lines == []


# ----------------------------------------------------------------------------
# Bad task.yaml files: one line naming the file and key; the other tasks still run


BAD_TASKS = {
    "missing-key": ({"runner": None}, "experiments/missing-key/task.yaml: runner: missing required key"),
    "wrong-type": ({"runner": {"timeout": "soon"}}, "experiments/wrong-type/task.yaml: runner.timeout: must be a number > 0, got 'soon'"),
    "unknown-key": ({"scorer": {"metrik": "x"}}, "experiments/unknown-key/task.yaml: scorer.metrik: unknown key*"),
    "glob-escapes": ({"artifacts": ["../outside/*.py"]}, "experiments/glob-escapes/task.yaml: artifacts: '../outside/*.py' escapes the repository*"),
    "absolute-path": ({"protected": ["/etc/passwd"]}, "experiments/absolute-path/task.yaml: protected: '/etc/passwd' is an absolute path*"),
    "bad-regex": ({"scorer": {"pattern": "score: (\\S+"}}, "experiments/bad-regex/task.yaml: scorer.pattern: bad regex*"),
    "bad-policy": ({"policy": {"kind": "greedy", "repeats": 3}}, "experiments/bad-policy/task.yaml: policy.repeats: not valid for kind greedy*"),
}


def test_bad_task_files_fail_with_one_line_while_others_run(pytester, research):
    for name, (spec, _) in BAD_TASKS.items():
        write_task(pytester.path, name, spec=spec)
    write_task(pytester.path, "broken-yaml", raw="artifacts: [\n")
    write_task(pytester.path, "good", step=1)
    result = research("-v")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*experiments/good/task.yaml::good[[]1[]] KEPT*"])
    out = result.stdout.lines
    for name, (_, message) in BAD_TASKS.items():
        # the failure section holds exactly the one line, no traceback
        result.stdout.fnmatch_lines([f"_* experiments/{name}/task.yaml _*", message.replace("[", "[[]"), "[_=]*"])
        result.stdout.fnmatch_lines([f"FAILED experiments/{name}/task.yaml::invalid - *"])
    assert "Traceback" not in result.stdout.str() and "TaskError" not in result.stdout.str()
    result.stdout.fnmatch_lines(["experiments/broken-yaml/task.yaml: yaml: not valid YAML*"])
    assert len([line for line in out if line.startswith("FAILED ")]) == len(BAD_TASKS) + 1


# ----------------------------------------------------------------------------
# xdist: parallel iterations stay consistent


def test_xdist_with_more_workers_than_gpus_never_runs_two_on_one_gpu(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # a fake list of two GPUs for three workers
    pytester.makeini("[pytest]\n")
    runs = pytester.path / "runs.txt"
    score = ('import os, time\n'
             'device, start = os.environ.get("CUDA_VISIBLE_DEVICES"), time.time()\n'
             'time.sleep(0.4)\n'
             f'with open({str(runs)!r}, "a") as f: f.write(" ".join(map(str, (device, start, time.time()))) + "\\n")\n'
             'print("score: 1")\n')
    write_task(pytester.path, score=score, spec={"runner": {"gpus": 1}})
    result = pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "3",
                                           "--autoresearch-iterations", "6", timeout=240)
    assert result.ret == 0, result.stdout.str()
    spans = [(d, float(a), float(b)) for d, a, b in (line.split() for line in runs.read_text().splitlines())]
    assert {d for d, _, _ in spans} == {"0", "1"} and len(spans) >= 7  # a baseline run and six candidates
    for i, (d1, a1, b1) in enumerate(spans):
        for d2, a2, b2 in spans[i + 1:]:
            assert d1 != d2 or b1 <= a2 or b2 <= a1, f"two runs on GPU {d1} at once"
    judged = [r for r in records(pytester.path) if r["status"] != "baseline"]
    assert any(r["gpu_wait_s"] > 0 for r in judged)  # the third worker waited, and the record says so


def test_xdist_parallel_iterations_keep_results_and_workspace_consistent(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini("[pytest]\n")
    mutate = ('import os, pathlib\np = pathlib.Path("experiments/t/value.txt")\n'
              'n = int(os.environ["AUTORESEARCH_ITERATION"])\n'
              'p.write_text(f"{int(p.read_text()) + (n % 3) - 1}\\n")\n')
    write_task(pytester.path, mutate=mutate)
    result = pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "2",
                                           "--autoresearch-iterations", "8", timeout=240)
    assert result.ret == 0, result.stdout.str()
    lines = (pytester.path / "work" / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is one valid JSON record
    judged = [r for r in recs if r["status"] != "baseline"]
    assert sorted(r["iteration"] for r in judged) == list(range(1, 9))  # none lost, none duplicated
    assert {r["worker"] for r in judged} == {"gw0", "gw1"}
    scores_by_hash = {}
    for r in recs:
        if r["status"] in ("baseline", "keep"):
            scores_by_hash.setdefault(r["candidate_hash"] or r["baseline_hash"], r["score"])
    assert len([r for r in recs if r["status"] == "baseline"]) == len({r["baseline_hash"] for r in recs if r["status"] == "baseline"})
    kept = [r for r in judged if r["status"] == "keep"]
    best = max([r["score"] for r in kept] + [1.0])
    assert int(value(pytester)) == best  # the workspace holds the best kept candidate, never a stale one
    assert all(r["score"] > r["baseline_score"] for r in kept)


def test_xdist_workers_share_out_the_runs_of_a_new_baseline(pytester, monkeypatch, tmp_path):
    rendezvous = tmp_path / "markers"
    rendezvous.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("RENDEZVOUS", str(rendezvous))
    pytester.makeini("[pytest]\n")
    write_task(pytester.path, score=RENDEZVOUS_SCORE,  # 3 baseline runs, one for each worker
               spec={"policy": {"kind": "noise-aware", "repeats": 3, "confidence": 0.95, "max_repeats": 3}})
    result = pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "3",
                                           "--autoresearch-iterations", "3", timeout=240)
    assert result.ret == 0, result.stdout.str()
    met = sorted((tmp_path / "met.txt").read_text().split("\n")[:-1])
    assert met == ["42 True", "43 True", "44 True"]  # each run once, none of them alone
    recs = records(pytester.path)
    baselines = [r for r in recs if r["status"] == "baseline"]
    assert len(baselines) == 1 and baselines[0]["scores"] == [1.0, 1.0, 1.0]
    assert baselines[0]["reason"].startswith("baseline scored; runs by gw")
    assert sorted(p.name for p in (pytester.path / "work/logs/t").glob("baseline-*")) == [
        f"baseline-{baselines[0]['baseline_hash']}-run{r}.log" for r in (1, 2, 3)]
    assert sorted(r["iteration"] for r in recs if r["status"] != "baseline") == [1, 2, 3]


# The runner notes each baseline run's seed in TALLY; the baseline's third run (seed 44) crashes while FLAG exists.
TALLY_SCORE = '''import os, pathlib, sys
if os.environ["AUTORESEARCH_ITERATION"] == "0":
    with open(os.environ["TALLY"], "a") as f:
        f.write(os.environ["AUTORESEARCH_SEED"] + "\\n")
    if os.environ["AUTORESEARCH_SEED"] == "44" and os.path.exists(os.environ["FLAG"]):
        sys.exit("run 3 fails")
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''


@pytest.mark.parametrize("changed", [None, "protected", "evaluator"])
def test_baseline_runs_that_finished_are_not_run_again_under_the_same_setup(pytester, research, monkeypatch,
                                                                           tmp_path, changed):
    tally, flag = tmp_path / "tally.txt", tmp_path / "flag"
    flag.write_text("")
    monkeypatch.setenv("TALLY", str(tally))
    monkeypatch.setenv("FLAG", str(flag))
    spec = {"protected": ["prepare.py"],
            "policy": {"kind": "noise-aware", "repeats": 3, "confidence": 0.95, "max_repeats": 3}}
    write_task(pytester.path, score=TALLY_SCORE, spec=spec)
    (pytester.path / "prepare.py").write_text("TIME_BUDGET = 300\n")
    research()
    assert [r["status"] for r in records(pytester.path)] == ["crash"]
    assert records(pytester.path)[0]["reason"].startswith("baseline: runner exited with code 1")
    flag.unlink()
    if changed == "protected":  # the evaluation changed: runs measured under the old one no longer count
        (pytester.path / "prepare.py").write_text("TIME_BUDGET = 30\n")
        (pytester.path / "work/autoresearch/protected/t.json").unlink()  # the user's change, accepted as the stop says
    if changed == "evaluator":  # scored by an evaluator now, not from the runner's own lines
        evaluate = f"{PY} -c 'print(\"score:\", open(\"model.txt\").read().strip())'"
        saving = TALLY_SCORE + 'pathlib.Path("model.txt").write_text(pathlib.Path("experiments/t/value.txt").read_text())\n'
        write_task(pytester.path, score=saving, spec={**spec, "evaluator": {"command": evaluate, "receives": "model.txt"}})
    research()
    baseline = [r for r in records(pytester.path) if r["status"] == "baseline"]
    assert len(baseline) == 1 and baseline[0]["scores"] == [1.0, 1.0, 1.0]
    rerun = ["42", "43", "44"] if changed else ["44"]
    assert tally.read_text().split() == ["42", "43", "44", *rerun]


def test_a_fresh_results_file_scores_the_baseline_afresh(pytester, research, tmp_path):
    write_task(pytester.path, step=0, spec={"policy": {"kind": "noise-aware", "repeats": 2, "confidence": 0.95,
                                                       "max_repeats": 2}})  # baselines of 2 runs
    research()
    (pytester.path / "experiments/t/score.py").write_text('print("score: 10")\n')  # a new runner, same command
    research("--autoresearch-results", str(tmp_path / "fresh.jsonl"))
    fresh = [json.loads(line) for line in (tmp_path / "fresh.jsonl").read_text().splitlines()]
    assert fresh[0]["status"] == "baseline" and fresh[0]["scores"] == [10.0, 10.0]


def test_gpu_task_without_gpus_crashes_cleanly(pytester, research, monkeypatch):
    from pytest_autoresearch.gpus import device_count
    if device_count() > 0:
        pytest.skip("this machine has GPUs")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    write_task(pytester.path, spec={"runner": {"gpus": 1}})
    result = research()
    result.stdout.fnmatch_lines(["*crash: runner.gpus is 1 but only 0 GPU(s) are visible*"])
    assert "Traceback" not in result.stdout.str()


def test_patience_skips_the_remaining_iterations(pytester, research):
    write_task(pytester.path, step=-1)
    result = research("--autoresearch-iterations", "5", "--autoresearch-patience", "2", "-rs")
    result.stdout.fnmatch_lines(["*patience: 2 iterations in a row without a keep*", "*3 skipped*2 discarded*"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "discard", "discard"]


def test_iterations_zero_loops_until_patience_runs_out(pytester, research):
    mutate = ('import pathlib, os\np = pathlib.Path("experiments/t/value.txt")\n'
              'p.write_text(str(int(p.read_text()) + (1 if os.environ["AUTORESEARCH_ITERATION"] in "12" else -1)))\n')
    write_task(pytester.path, mutate=mutate)
    result = research("--autoresearch-iterations", "0", "--autoresearch-patience", "3", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*t[[]loop-1[]]*", "t*5*2*3*0*0*1*3*+2"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep", "keep", "discard", "discard", "discard"]
    assert value(pytester) == "3"
