"""Checks by content and against the real layout (issue 11): what a mutator leaves is judged by its bytes, not
by (size, mtime); the runner scores a fresh copy of the checked candidate, not the sandbox a leftover helper can
still write; a link is judged against the workspace as it really is, work/ included. Real inner sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_helpers import MUTATE_ADD, PY, records, write_task

pytest_plugins = ["pytester"]

BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)
# rewrites a file to the same size with a different first line, then puts its mtime back: (size, mtime) unchanged
SAME_SIZE_SAME_MTIME = '''
def forge(path, first_line):
    import os, pathlib
    path = pathlib.Path(path)
    stat, old = path.stat(), path.read_text()
    path.write_text(first_line + "#" * (len(old) - len(first_line) - 1) + "\\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
'''


@pytest.mark.parametrize("forged, protected", [
    ("experiments/t/score.py", ["experiments/t/score.py"]),  # the runner, listed as protected
    ("experiments/t/valid.txt", []),  # a validation file, in neither artifacts nor protected
], ids=["protected-runner", "outside-file"])
def test_a_file_forged_to_the_same_size_and_mtime_is_rejected(pytester, research, forged, protected):
    folder = write_task(pytester.path, mutate=BUMP + SAME_SIZE_SAME_MTIME + f'forge({forged!r}, \'print("score: 99999")\\n\')\n',
                        spec={"protected": protected} if protected else None)
    (folder / "valid.txt").write_text("validation answers, which the runner could read\n")
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected", judged
    kind = "protected file changed" if protected else "changed outside artifacts"
    assert judged["reason"] == f"{kind}: {forged}" and judged["score"] is None


# ----------------------------------------------------------------------------
# A helper left behind rewrites the sandbox's runner after the checks: the runner never runs there

# waits for the trigger file (the sandbox and the mutator's pid), then for the mutator to end, then forges the
# sandbox's runner a moment later: after the checks, before the (slow to start) runner reads it
ACCOMPLICE = '''import os, pathlib, sys, time
trigger = pathlib.Path(sys.argv[1])
while not trigger.exists():
    time.sleep(0.005)
sandbox, pid = trigger.read_text().split()
while os.path.exists(f"/proc/{pid}") and " Z " not in open(f"/proc/{pid}/stat").read():
    time.sleep(0.002)
time.sleep(float(sys.argv[2]))
try:
    pathlib.Path(sandbox, "experiments/t/score.py").write_text('print("score: 99999")\\n')
    outcome = "forged"
except FileNotFoundError:
    outcome = "sandbox gone"
pathlib.Path(sys.argv[1] + ".done").write_text(outcome)
'''


@pytest.mark.parametrize("how", ["setsid-child", "outside-the-reaper"])
def test_a_helper_that_forges_the_runner_after_the_mutator_ended_is_not_scored(pytester, research, tmp_path, how):
    """setsid-child: the mutator starts the helper itself (the reaper kills it with the mutator); outside-the-
    reaper: a helper it did not start (as if left by an earlier one through a system service) gets the sandbox's
    path from it: only a fresh copy for the runner holds then."""
    (pytester.path / "accomplice.py").write_text(ACCOMPLICE)
    trigger = tmp_path / "trigger"
    helper = None
    if how == "setsid-child":
        start = (f"import subprocess\nsubprocess.Popen(['setsid', {sys.executable!r}, 'accomplice.py', {str(trigger)!r},"
                 f" '0.3'], cwd={str(pytester.path)!r}, start_new_session=True)\n")
    else:
        helper = subprocess.Popen([sys.executable, "accomplice.py", str(trigger), "0.3"], cwd=pytester.path)
        start = ""
    tell = f"pathlib.Path({str(trigger)!r}).write_text(os.getcwd() + ' ' + str(os.getpid()))\n"
    write_task(pytester.path, mutate=BUMP + start + tell,
               spec={"protected": ["experiments/t/score.py"],
                     "runner": {"command": f"sleep 1.5 && {PY} experiments/t/score.py"}})
    try:
        research()
    finally:
        if helper is not None:
            helper.wait(timeout=30)
    if how == "outside-the-reaper":
        # it forged the sandbox the mutator ran in, or found it removed already
        assert Path(str(trigger) + ".done").read_text() in ("forged", "sandbox gone")
    judged = records(pytester.path)[-1]
    # the candidate's own score; or, on a machine slow enough that the forgery lands before the checks, rejected
    assert (judged["status"], judged["score"]) in (("keep", 2.0), ("rejected", None)), judged
    assert (pytester.path / "experiments/t/score.py").read_text().startswith("import pathlib")


# the runner's copy is made beside the sandbox while the mutator runs: a mutator that finds it and forges it there
# (same size, mtime put back), or adds a file to it, must not be scored
INTO_THE_RUNNERS_COPY = SAME_SIZE_SAME_MTIME + '''
import pathlib, time
copy = pathlib.Path("..", "candidate")
deadline = time.time() + 20
while not (copy / "experiments/t/z-last.txt").exists() and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.2)  # the copy's last file is written
{forgery}
'''


@pytest.mark.parametrize("forgery", [
    "forge(copy / 'experiments/t/score.py', 'print(\"score: 99999\")\\n')",
    "(copy / 'sitecustomize.py').write_text('print(\"score: 99999\")\\n')",
], ids=["forged-runner", "added-file"])
def test_a_mutator_that_writes_the_runners_copy_while_it_is_made_is_rejected(pytester, research, forgery):
    folder = write_task(pytester.path, mutate=BUMP + INTO_THE_RUNNERS_COPY.format(forgery=forgery),
                        spec={"protected": ["experiments/t/score.py"]})
    (folder / "z-last.txt").write_text("the mutator waits for this file in the copy, then a moment more\n")
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected" and judged["score"] is None, judged
    assert judged["reason"].startswith("the runner's copy was written while the mutator ran: "), judged["reason"]


# ----------------------------------------------------------------------------
# Links, judged against the workspace as it is (work/ and the folders never copied included)

LINK = '''import os
os.symlink({target!r}, "params.txt")
'''


@pytest.mark.parametrize("target", ["work/results.jsonl", "work", ".git/config", "../outside.txt",
                                    "experiments/../../outside.txt", "/etc/passwd"],
                         ids=["storage-file", "storage", "git", "parent", "climbing", "absolute"])
def test_a_link_out_of_the_sandbox_or_into_the_storage_is_rejected(pytester, research, target):
    (pytester.path / ".git").mkdir()
    (pytester.path / ".git" / "config").write_text("[core]\n")
    write_task(pytester.path, mutate=BUMP + LINK.format(target=target),
               spec={"artifacts": ["experiments/t/value.txt", "params.txt"]})
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected", judged
    assert judged["reason"] == "link points outside the sandbox: params.txt"
    assert not os.path.lexists(pytester.path / "params.txt")


def test_a_link_to_a_file_of_the_repository_is_kept(pytester, research):
    write_task(pytester.path, mutate=BUMP + LINK.format(target="experiments/t/value.txt"),
               spec={"artifacts": ["experiments/t/value.txt", "params.txt"]})
    research()
    assert records(pytester.path)[-1]["status"] == "keep"
    assert os.readlink(pytester.path / "params.txt") == "experiments/t/value.txt"


# ----------------------------------------------------------------------------
# Globs and names with a newline

NEWLINE_NAME = "experiments/t/data/a\nb.txt"


@pytest.mark.parametrize("spec, status", [
    ({"artifacts": ["experiments/t/"], "protected": ["experiments/t/data/"]}, "rejected"),  # was kept: unprotected
    ({"artifacts": ["experiments/t/value.txt", "experiments/t/data/"]}, "keep"),  # was rejected: no artifact
], ids=["protected", "artifact"])
def test_a_folder_glob_covers_a_name_with_a_newline(pytester, research, spec, status):
    folder = write_task(pytester.path, mutate=BUMP + f"open({NEWLINE_NAME!r}, 'a').write('more\\n')\n", spec=spec)
    (folder / "data").mkdir()
    (pytester.path / NEWLINE_NAME).write_text("data\n")
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == status, judged
    if status == "rejected":
        assert judged["reason"] == f"protected file changed: {NEWLINE_NAME}"
