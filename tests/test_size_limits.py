"""Size limits (issue 11): a candidate's changed files are held to mutation.max_bytes by their sizes before any
byte of them is read, so a huge file costs the inner pytest no memory; a huge file outside the artifacts is
rejected unread too. The files are sparse (truncate): 2 GB on paper, nothing on disk, made in a moment."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from autoresearch_helpers import MUTATE_ADD, REPO_ROOT, records, write_task
from pytest_autoresearch.task import DEFAULT_MAX_BYTES

pytest_plugins = ["pytester"]

HUGE_BYTES = 2 * 1024 ** 3  # the repro: a 2 GB artifact drove pytest to 8.2 GB RSS
RSS_CAP_MB = 150  # the inner pytest's peak while it judges one (about 60 MB is pytest and the engine alone)
BUMP = MUTATE_ADD.format(path="experiments/t/value.txt", step=1)
GROW = 'import os\nos.truncate({path!r}, {size}) if os.path.exists({path!r}) else open({path!r}, "wb").truncate({size})\n'

# the inner session in a process of its own, printing its peak RSS: VmHWM, not getrusage's ru_maxrss (that one
# also counts the pages of the big test process it was forked from)
MEASURED = ("import re, sys, pytest\ncode = pytest.main(sys.argv[1:])\n"
            "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(f'peak rss: {int(peak) // 1024} MB')\nsys.exit(code)\n")


def peak_rss_mb(pytester: pytest.Pytester) -> int:
    pytester.makeini("[pytest]\n")
    done = subprocess.run([sys.executable, "-c", MEASURED, "-p", "pytest_autoresearch.plugin", "--autoresearch",
                           "-p", "no:cacheprovider"], cwd=pytester.path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]  # 1: the item of a rejected candidate fails
    return int(re.search(r"peak rss: (\d+) MB", done.stdout).group(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("path, reason", [
    ("experiments/t/value.txt", f"{HUGE_BYTES:,} bytes in changed files > mutation.max_bytes {DEFAULT_MAX_BYTES:,}: "
                                f"experiments/t/value.txt ({HUGE_BYTES:,})"),
    ("experiments/t/big.bin", "changed outside artifacts: experiments/t/big.bin"),
], ids=["artifact", "outside"])
def test_a_2_gb_file_is_rejected_unread_and_pytest_stays_small(pytester, path, reason):
    write_task(pytester.path, mutate=BUMP + GROW.format(path=path, size=HUGE_BYTES))
    peak_mb = peak_rss_mb(pytester)
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected" and judged["reason"] == reason, judged
    print(f"peak rss with a {HUGE_BYTES:,}-byte {path}: {peak_mb} MB")
    assert peak_mb < RSS_CAP_MB
    assert (pytester.path / "experiments/t/value.txt").read_text() == "1\n"


def test_max_bytes_counts_every_changed_file(pytester, research):
    """Two files of 60 bytes each against max_bytes 100: neither alone is too much, both together are."""
    write_task(pytester.path, mutate=BUMP + "open('experiments/t/a.txt', 'w').write('a' * 60)\n"
                                            "open('experiments/t/b.txt', 'w').write('b' * 60)\n",
               spec={"artifacts": ["experiments/t/value.txt", "experiments/t/a.txt", "experiments/t/b.txt"],
                     "mutation": {"max_bytes": 100}})
    research()
    judged = records(pytester.path)[-1]
    assert judged["status"] == "rejected", judged
    assert judged["reason"] == ("122 bytes in changed files > mutation.max_bytes 100: experiments/t/a.txt (60), "
                                "experiments/t/b.txt (60), experiments/t/value.txt (2)")


@pytest.mark.parametrize("value", [0, -5, None, 1.5, "8MB", True])
def test_max_bytes_must_be_a_positive_integer(pytester, research, value):
    write_task(pytester.path, spec={"mutation": {"max_bytes": value}})
    result = research()
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*experiments/t/task.yaml: mutation.max_bytes: must be an integer >= 1 (bytes; "
                                 f"there is no unlimited), got {value!r}"])
    assert records(pytester.path) == []
