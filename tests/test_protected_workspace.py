"""The workspace's protected files between iterations: a command that reaches the real workspace (a path it was
handed, or its parents' working folders under /proc) and rewrites prepare.py there is caught before any runner
scores the forgery, and the task stops at its next iteration with one line naming the file; a change the user
committed is theirs. Real inner sessions, in mutator and in workspace mode, and under xdist."""

from __future__ import annotations

import json

import pytest

from autoresearch_helpers import MUTATE_ADD, PY, REPO_ROOT, plugin_args, records, write_task

pytest_plugins = ["pytester"]

BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)
EVALUATION = "TIME_BUDGET = 300\n"
FORGED = "TIME_BUDGET = 300\nprint('val_bpb: 0.0')\n"
# the runner notes the prepare.py it scores with (in $SEEN), then prints value.txt's number as the score
NOTING_SCORE = '''import os, pathlib
with open(os.environ["SEEN"], "a") as f:
    f.write(repr(pathlib.Path("prepare.py").read_text()) + "\\n")
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''
# a mutator handed the workspace's path ($WORKSPACE) rewrites the protected prepare.py there, then makes a candidate
FORGE_BY_PATH = f'''import os, pathlib
pathlib.Path(os.environ["WORKSPACE"], "prepare.py").write_text({FORGED!r})
''' + BUMP
# ...or finds it without help: the nearest parent process whose working folder is not its own sandbox
FORGE_THROUGH_PROC = f'''import os, pathlib
mine, pid = os.getcwd(), os.getppid()
while pid > 1:
    folder = os.readlink(f"/proc/{{pid}}/cwd")
    if folder != mine and os.path.exists(os.path.join(folder, "prepare.py")):
        pathlib.Path(folder, "prepare.py").write_text({FORGED!r})
        break
    pid = int(open(f"/proc/{{pid}}/stat").read().rpartition(")")[2].split()[1])
''' + BUMP
STOP = ("*protected file prepare.py changed in the workspace since the last landing (iteration 1): the task stops; "
        "if you changed it on purpose, commit it or remove work/autoresearch/protected/t.json*")


@pytest.fixture
def seen(tmp_path, monkeypatch):
    """The prepare.py texts the runners scored with, in order."""
    path = tmp_path / "seen.txt"
    monkeypatch.setenv("SEEN", str(path))
    return lambda: [eval(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("mutate", [FORGE_BY_PATH, FORGE_THROUGH_PROC], ids=["handed-path", "proc-parents"])
def test_a_mutator_that_forges_the_workspaces_protected_file_is_not_scored_and_the_task_stops(
        pytester, research, monkeypatch, seen, mutate):
    monkeypatch.setenv("WORKSPACE", str(pytester.path))
    (pytester.path / "prepare.py").write_text(EVALUATION)
    write_task(pytester.path, mutate=mutate, score=NOTING_SCORE, spec={"protected": ["prepare.py"]})
    result = research("--autoresearch-iterations", "3", "-rs")
    assert (pytester.path / "prepare.py").read_text() == FORGED  # the forgery happened...
    assert seen() == [EVALUATION]  # ...and no runner scored with it: the baseline's run only
    baseline, rejected = records(pytester.path)  # iteration 1 rejected; 2 stopped the task, 3 never ran
    assert baseline["status"] == "baseline" and rejected["status"] == "rejected"
    assert rejected["reason"] == ("protected file prepare.py changed in the workspace during the iteration: "
                                  "its copy is not the file checked as the iteration began")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*t[[]2[]]*", STOP.replace("[", "[[]")])
    assert "2 failed" in result.stdout.lines[-1] and "1 skipped" in result.stdout.lines[-1]
    result.stdout.fnmatch_lines(["*= autoresearch =*", "t: " + STOP.lstrip("*")])  # the summary says it too
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"  # nothing landed


@pytest.mark.parametrize("change", ["changed", "added", "removed"])
def test_a_protected_file_changed_between_sessions_stops_the_task_and_nothing_runs(pytester, research, seen,
                                                                                  change):
    (pytester.path / "data").mkdir()
    (pytester.path / "data/val.bin").write_text("answers\n")
    write_task(pytester.path, score=NOTING_SCORE, spec={"protected": ["data/*"]})
    (pytester.path / "prepare.py").write_text(EVALUATION)
    research()
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep"]
    state = json.loads((pytester.path / "work/autoresearch/protected/t.json").read_text())
    assert set(state["files"]) == {"data/val.bin"} and state["iteration"] == 1
    {"changed": lambda: (pytester.path / "data/val.bin").write_text("other answers\n"),
     "added": lambda: (pytester.path / "data/new.bin").write_text("more\n"),
     "removed": lambda: (pytester.path / "data/val.bin").unlink()}[change]()
    runs = len(seen())
    result = research("--autoresearch-iterations", "2")
    named = {"changed": "data/val.bin", "added": "data/new.bin (new)", "removed": "data/val.bin (removed)"}[change]
    result.stdout.fnmatch_lines([f"*protected file {named} changed in the workspace since the last landing "
                                 f"(iteration 1): the task stops*"])
    assert result.ret == 1 and len(records(pytester.path)) == 2 and len(seen()) == runs  # nothing ran
    assert (pytester.path / "experiments/t/value.txt").read_text() == "2\n"


def test_a_protected_change_the_user_commits_is_accepted(pytester, research, commit_all, seen):
    (pytester.path / "prepare.py").write_text(EVALUATION)
    write_task(pytester.path, score=NOTING_SCORE, spec={"protected": ["prepare.py"]})
    commit_all("init")
    research()
    (pytester.path / "prepare.py").write_text("TIME_BUDGET = 30\n")  # the user's own change...
    result = research()
    result.stdout.fnmatch_lines(["*protected file prepare.py changed in the workspace since the last landing*"])
    commit_all("a shorter budget")  # ...which becomes theirs once committed
    result = research()
    assert result.ret == 0 and records(pytester.path)[-1]["status"] == "keep"
    assert seen()[-1] == "TIME_BUDGET = 30\n"


def test_our_own_commit_of_a_keep_is_no_decision_about_protected_files(pytester, research, monkeypatch, commit_all):
    monkeypatch.setenv("WORKSPACE", str(pytester.path))
    (pytester.path / "prepare.py").write_text(EVALUATION)
    # iteration 1 keeps (and commits it); iteration 2's mutator forges prepare.py
    mutate = ('import os, pathlib\nif os.environ["AUTORESEARCH_ITERATION"] == "2":\n'
              f'    pathlib.Path(os.environ["WORKSPACE"], "prepare.py").write_text({FORGED!r})\n' + BUMP)
    write_task(pytester.path, mutate=mutate, spec={"protected": ["prepare.py"]})
    commit_all("init")
    result = research("--autoresearch-iterations", "3", "--autoresearch-commit")
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "keep", "rejected"]
    result.stdout.fnmatch_lines(["*protected file prepare.py changed in the workspace since the last landing "
                                 "(iteration 2)*"])


def test_in_workspace_mode_a_protected_change_stops_the_task_and_the_edit_stays(pytester, research):
    (pytester.path / "prepare.py").write_text(EVALUATION)
    write_task(pytester.path, spec={"mutator": "workspace", "protected": ["prepare.py"]})
    research()
    (pytester.path / "experiments/t/value.txt").write_text("5\n")  # the agent's edit...
    (pytester.path / "prepare.py").write_text(FORGED)  # ...and its rewrite of the evaluation
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*protected file prepare.py changed in the workspace since the last landing "
                                 "(iteration 1): the task stops*"])
    assert [r["status"] for r in records(pytester.path)] == ["baseline", "discard"]
    assert (pytester.path / "experiments/t/value.txt").read_text() == "5\n"  # nothing in the workspace changed
    assert (pytester.path / "prepare.py").read_text() == FORGED


def test_under_xdist_a_forgery_stops_the_task_and_no_runner_scores_it(pytester, monkeypatch, seen):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("WORKSPACE", str(pytester.path))
    pytester.makeini("[pytest]\n")
    (pytester.path / "prepare.py").write_text(EVALUATION)
    # iterations 1 and 2 keep (the controller records the hashes as each lands); iteration 3's mutator forges
    mutate = ('import os, pathlib\nif os.environ["AUTORESEARCH_ITERATION"] == "3":\n'
              f'    pathlib.Path(os.environ["WORKSPACE"], "prepare.py").write_text({FORGED!r})\n' + BUMP)
    write_task(pytester.path, mutate=mutate, score=NOTING_SCORE, spec={"protected": ["prepare.py"]})
    result = pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", "-n", "2",
                                           "--autoresearch-iterations", "8", timeout=240)
    assert result.ret == 1, result.stdout.str()
    assert FORGED not in seen()
    result.stdout.fnmatch_lines(["*protected file prepare.py changed in the workspace since the last landing*"])
    judged = [r for r in records(pytester.path) if r["status"] != "baseline"]
    assert 3 <= len(judged) < 8 and any(r["status"] == "rejected" for r in judged)
