"""A command's output is read in time linear in its length: a runner's hostile line (a long run of digits that
nearly matches a metric, score or progress pattern) costs nothing noticeable, where a backtracking regex once
took ~50 s for 40,000 digits, after the runner had exited and outside every timeout; a pattern of the task that
takes exponential time on its own is refused when the task loads. Real inner sessions, and the readers alone."""

from __future__ import annotations

import re
import time

import pytest

from autoresearch_helpers import PY, REPO_ROOT, plugin_args, records, write_task
from pytest_autoresearch.early_stop import build as build_early_stop
from pytest_autoresearch.lines import MATCHED_LINE_CHARS, nested_repeat
from pytest_autoresearch.scorers import METRIC_LINE, extract_metrics
from pytest_autoresearch.scorers.stdout import extract_score

pytest_plugins = ["pytester"]

LINE_CHARS = 2 << 20  # the log's head keeps 2 MiB: the longest line that reaches the readers whole
SESSION_TIMEOUT_S = 60  # the old readers took ~40 hours on one such line: a hang fails here, never stalls CI
PROGRESS = r"\((?P<progress>[\d.]+)%\) \| loss (?P<value>[\d.]+)"  # train.py's progress lines

# (head, the character repeated LINE_CHARS times, tail) of each hostile line
HOSTILE = {
    "metric-digits": ("a: ", "1", "x"),  # `\d+\.?\d*` tried every split of the digits: quadratic
    "score-prefix": ("score: ", "1", "x"),  # the score pattern's prefix, then no number
    "exponent-digits": ("a: 1e", "1", "x"),
    "progress-digits": ("(", "1", "% | loss 1"),  # early_stop's pattern, nearly
    "spaces": ("a: 1", " ", "x"),
}


def hostile(shape: str) -> str:
    head, filler, tail = HOSTILE[shape]
    return head + filler * LINE_CHARS + tail


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_a_hostile_2_mib_line_costs_the_session_nothing(pytester, monkeypatch, shape):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini("[pytest]\n")
    head, filler, tail = HOSTILE[shape]
    runner = ('import sys\n'
              f'sys.stdout.write({head!r} + {filler!r} * {LINE_CHARS} + {tail!r} + "\\n")\n'
              'for percent in (25, 50, 75, 100):\n'
              '    print(f"step ({percent}.0%) | loss {4 - percent / 100}")\n'
              'print("score:", open("experiments/t/value.txt").read().strip())\n')
    write_task(pytester.path, score=runner, spec={
        "runner": {"command": f"{PY} experiments/t/score.py"},
        "policy": {"kind": "noise-aware", "repeats": 2, "max_repeats": 2, "confidence": 0.9, "pool_noise": False,
                   "early_stop": {"pattern": PROGRESS}}})
    start = time.monotonic()
    try:
        result = pytester.runpytest_subprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider",
                                               timeout=SESSION_TIMEOUT_S)
    except pytester.TimeoutExpired:
        pytest.fail(f"the session did not finish within {SESSION_TIMEOUT_S} s of a {shape} line")
    assert result.ret in (0, 1), result.stdout.str()
    recorded = {r["iteration"]: r for r in records(pytester.path)}
    assert recorded[0]["status"] == "baseline" and recorded[0]["scores"] == [1.0, 1.0]
    assert recorded[1]["scores"] == [2.0, 2.0] and recorded[1]["metrics"]["score"] == 2.0
    assert time.monotonic() - start < SESSION_TIMEOUT_S


# ----------------------------------------------------------------------------
# The readers alone, on lines of any length


def timed(action) -> tuple[object, float]:
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_the_readers_take_a_hostile_line_in_linear_time(shape):
    text = hostile(shape) + "\nscore: 7\nloss: 0.5\n"
    found, seconds = timed(lambda: (extract_metrics(text), extract_score(re.compile(r"^score:\s*(\S+)"), text, "score"),
                                    [build_early_stop({"pattern": PROGRESS}).point(line) for line in text.splitlines()]))
    metrics, score, points = found
    assert metrics == {"score": 7.0, "loss": 0.5} and score == (7.0, None) and points == [None] * 3
    assert seconds < 2.0  # milliseconds here; the old metric regex took hours on the digits


@pytest.mark.parametrize("line", ["a: " + "1" * 10**6 + "x", "a: 1." + "1" * 10**6 + "x", "a: " + "1" * 10**6 + "e5x",
                                  "a" * 10**6 + "x", " " * 10**6 + "x", "a: -.1" + " " * 10**6 + "x"],
                         ids=["digits", "fraction", "exponent", "name", "indent", "trailing-spaces"])
def test_the_metric_line_regex_is_linear_even_past_the_length_bound(line):
    # the bound keeps lines this long from it; its own shape must not need the bound
    found, seconds = timed(lambda: METRIC_LINE.match(line))
    assert found is None and seconds < 1.0  # ~0.01 s; quadratic, 10**6 digits took hours


def test_a_line_past_the_bound_is_matched_by_no_pattern_and_one_within_it_is():
    pad = " " * (MATCHED_LINE_CHARS - len("score: 3"))
    within, past = "score: 3" + pad, "score: 4" + pad + " "
    assert len(within) == MATCHED_LINE_CHARS and len(past) == MATCHED_LINE_CHARS + 1
    assert extract_metrics(f"{within}\n{past}\n") == {"score": 3.0}
    assert extract_score(re.compile(r"^score:\s*(\S+)"), f"{within}\n{past}\n", "score") == (3.0, None)
    assert extract_score(re.compile(r"^score:\s*(\S+)"), f"{past}\n{past}\n", "score") == (
        None, "no metric: no line of the runner's stdout matches '^score:\\\\s*(\\\\S+)' (2 lines longer than 1,024 "
              "characters not read)")
    rule = build_early_stop({"pattern": PROGRESS})
    assert rule.point("(50.0%) | loss 2.5" + pad) is None and rule.point("(50.0%) | loss 2.5") == (50.0, 2.5)


@pytest.mark.parametrize("pattern, nested", [
    (r"(a+)+b", True), (r"(?:\d*)*x", True), (r"(x|y+){2,}", True), (r"((?:ab)+c)*", True), (r"(a+?)+", True),
    (r"(?P<v>(?:[\d.]+,)+)", True), (r"(?=(a+)+)", True),
    (r"^val_bpb:\s*(\S+)", False), (PROGRESS, False), (r"(a+)?b", False), (r"(ab){3}", False), (r"(a{1,3})+", False),
    (r"(?:a|b)+c", False),
])
def test_nested_unbounded_repeats_are_found(pattern, nested):
    assert nested_repeat(pattern) is nested


@pytest.mark.parametrize("spec, message", [
    ({"scorer": {"pattern": r"^score: ((\d+)+)$"}},
     r"experiments/t/task.yaml: scorer.pattern: regex '^score: ((\\d+)+)$' repeats a group that holds an unbounded "
     r"repeat*"),
    ({"policy": {"early_stop": {"pattern": r"\((?P<progress>(\d+\.?)+)%\) (?P<value>\S+)"}}},
     r"experiments/t/task.yaml: policy.early_stop.pattern: regex * repeats a group that holds an unbounded repeat*"),
], ids=["scorer", "early-stop"])
def test_a_pattern_with_nested_repeats_is_refused_at_load(pytester, research, spec, message):
    write_task(pytester.path, spec=spec)
    result = research()
    assert result.ret == 1 and records(pytester.path) == []
    result.stdout.fnmatch_lines([message.replace("[", "[[]")])
