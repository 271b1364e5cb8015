"""Checks by content (issue 11): a protected file rewritten to the same size with its mtime put back is still
a change to a protected file."""

from __future__ import annotations

from autoresearch_helpers import records, write_task

# the mutator bumps its artifact, then forges the protected runner: same length, same mtime, a huge score
FORGE = '''import os, pathlib
value = pathlib.Path("experiments/t/value.txt")
value.write_text(str(int(value.read_text()) + 1) + "\\n")
runner = pathlib.Path("experiments/t/score.py")
stat, old = runner.stat(), runner.read_text()
forged = 'print("score: 99999")\\n'
runner.write_text(forged + "#" * (len(old) - len(forged) - 1) + "\\n")
os.utime(runner, ns=(stat.st_atime_ns, stat.st_mtime_ns))
assert runner.stat().st_size == stat.st_size and runner.stat().st_mtime_ns == stat.st_mtime_ns
'''


def test_a_protected_runner_forged_to_the_same_size_and_mtime_is_rejected(pytester, research):
    write_task(pytester.path, mutate=FORGE, spec={"protected": ["experiments/t/score.py"]})
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected", judged
    assert "experiments/t/score.py" in judged["reason"] and judged["score"] is None
