"""A command's output, read line by line in time linear in its length.

Why: the runner's stdout is matched by regexes in pytest after the runner has exited, outside every timeout,
and a regex that backtracks takes time quadratic in a line, or worse: `\\d+\\.?\\d*` tries every split of a run
of digits, so `a: ` + 40,000 digits + `x` took ~50 s, and a 2 MiB line (what the log's head keeps) would have
taken ~40 hours. Two rules hold it: the engine's own patterns are unambiguous (a character can be matched in one
way only, so a failed match backtracks a bounded number of steps per character); and no pattern, the task's own
included, is applied to a line longer than MATCHED_LINE_CHARS. A task's pattern (scorer.pattern,
policy.early_stop.pattern) may still backtrack on its own: the bound caps its cost per line, and a pattern whose
cost is exponential (a repeated group that holds an unbounded repeat, `(a+)+b`) is refused when the task loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:  # the parser behind re.compile: re._parser from Python 3.11, sre_parse before
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse  # type: ignore[no-redef]

# A score, metric or progress line is ~100 characters (train.py's longest); 1 KiB leaves it room ten times over,
# and keeps a task's backtracking pattern cheap: a quadratic one like `(\d+)x` costs ~7 ms on a 1 KiB line (and
# ~0.13 s on a 4 KiB one), so ~30 s on the 4 MiB of stdout a run keeps, however its lines are cut.
MATCHED_LINE_CHARS = 1024
# a number as Python's float() reads it, unambiguously: digits, then an optional fraction, then an exponent
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"

_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)} - {None}


def matched_lines(text: str) -> Iterator[str]:
    """The lines of text that patterns are applied to: every line of at most MATCHED_LINE_CHARS characters."""
    return (line for line in text.splitlines() if len(line) <= MATCHED_LINE_CHARS)


def nested_repeat(pattern: str) -> bool:
    """Whether the regex repeats a group that itself holds an unbounded repeat (`(a+)+`, `(?:x|y*){2,}`): the
    ways to share a run of characters out between the two grow exponentially, and a line that nearly matches
    tries them all. (A group repeated at most once, `(a+)?`, or a bounded repeat inside, `(a{1,3})+`, is fine.)"""
    return _nested(sre_parse.parse(pattern))


def _nested(items: Any) -> bool:
    for op, av in items:
        if op in _REPEATS and av[1] > 1 and _unbounded(av[2]):
            return True
        if any(_nested(child) for child in _children(op, av)):
            return True
    return False


def _unbounded(items: Any) -> bool:
    return any((op in _REPEATS and av[1] == sre_parse.MAXREPEAT) or any(_unbounded(c) for c in _children(op, av))
               for op, av in items)


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-patterns of one parsed item (a group, a repeat, the branches of an alternation, a look-around)."""
    if op in _REPEATS:
        return [av[2]]
    if op is sre_parse.SUBPATTERN:
        return [av[3]]
    if op is sre_parse.BRANCH:
        return list(av[1])
    if op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
        return [av[1]]
    if op is getattr(sre_parse, "ATOMIC_GROUP", None):
        return [av]
    if op is sre_parse.GROUPREF_EXISTS:
        return [branch for branch in av[1:] if branch is not None]
    return []


def nested_repeat_problem(raw: str) -> str | None:
    """Why a task's pattern is refused (the message after its key), else None; call it on a valid regex."""
    if not nested_repeat(raw):
        return None
    return (f"regex {raw!r} repeats a group that holds an unbounded repeat (like (a+)+): on a line that nearly "
            f"matches it takes time exponential in the line's length; write it without the nesting")
