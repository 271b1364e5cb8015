"""UPPER_CASE module-level constants in Python source: find them with `ast`, rewrite their value text in place.

This module knows only source text: which top-level `NAME = literal` lines are editable, what value each holds
(literals and small arithmetic such as `2**19` or `40 * 524288`), how a new value is written in the style of
the old text, and how to swap that text in without disturbing the rest of the line. Which value to try next
is the search's business (`hparams`).
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# prepare.py's fixed constants: a train.py that redefined them would move the goalposts, not improve.
NEVER_TOUCH = frozenset({"MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE"})
# Not research choices: hardware facts, seeds (a new seed only mines the noise), logging cadence, and
# UNTIMED steps (they don't count against the time budget: more of them is free training, not progress).
NEVER_TOUCH_WORDS = frozenset({"FLOPS", "SEED", "VERSION", "EVERY", "UNTIMED"})
NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
POW2_TEXT_RE = re.compile(r"2\s*\*\*\s*\d+")

Value = bool | int | float | str


@dataclass(frozen=True)
class Constant:
    name: str
    value: Value
    text: str  # exact source text of the value
    line: int  # 0-based line index
    start: int  # byte offsets of the value text within its line
    end: int


class Edit(Protocol):
    """One constant's new value and the text that writes it (hparams' Move is one)."""

    @property
    def const(self) -> Constant: ...
    @property
    def new(self) -> Value: ...
    @property
    def text(self) -> str: ...


def name_words(name: str) -> set[str]:
    """The `_`-separated words of a NAME, each also without trailing digits (BETA2 -> BETA2, BETA)."""
    parts = name.split("_")
    return set(parts) | {p.rstrip("0123456789") for p in parts}


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# ---------------------------------------------------------------------------
# Reading constants and values
# ---------------------------------------------------------------------------

_BINOPS = {ast.Pow: operator.pow, ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub,
           ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv}


def literal_value(node: ast.AST) -> Value | None:
    """Value of a literal or of small arithmetic on numbers (`2**19`, `40 * 524288`); None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = literal_value(node.operand)
        return -v if is_number(v) else None
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = literal_value(node.left), literal_value(node.right)
        if not (is_number(a) and is_number(b)) or (isinstance(node.op, ast.Pow) and abs(b) > 64):
            return None
        try:
            v = _BINOPS[type(node.op)](a, b)
        except (ArithmeticError, ValueError):
            return None
        return v if is_number(v) else None
    return None


def eval_text(text: str) -> Value | None:
    """`literal_value` of a value's source text; None when it is not one."""
    try:
        return literal_value(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError:
        return None


def find_constants(source: str) -> list[Constant]:
    """Editable constants: one-line top-level `NAME = literal` assigned once and not imported."""
    tree = ast.parse(source)
    lines = source.split("\n")
    imported = {(a.asname or a.name).split(".")[0] for node in tree.body
                if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    stores = Counter(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if not isinstance(target, ast.Name) or not NAME_RE.fullmatch(target.id):
            continue
        name, value = target.id, node.value
        if (name in imported or name in NEVER_TOUCH or name_words(name) & NEVER_TOUCH_WORDS or stores[name] != 1
                or value.lineno != value.end_lineno):
            continue
        v = literal_value(value)
        if v is None:
            continue
        raw = lines[value.lineno - 1].encode()
        text = raw[value.col_offset:value.end_col_offset].decode()
        found.append(Constant(name, v, text, value.lineno - 1, value.col_offset, value.end_col_offset))
    return found


def first_positive_int(paths: Iterable[Path], name: str) -> int | None:
    """The first positive int assigned to top-level `name` in the first of `paths` that parses; None if none."""
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == name):
                value = literal_value(node.value)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


# ---------------------------------------------------------------------------
# Writing values back
# ---------------------------------------------------------------------------

def render(const: Constant, new: Value) -> str:
    """Source text for `new` in the style of the constant's old text (its quotes, `2**k`, a float's `.0`)."""
    if isinstance(new, str):
        quote = const.text[0] if const.text[:1] in ("'", '"') else '"'
        return f"{quote}{new}{quote}"
    if isinstance(new, int) and not isinstance(new, bool) and POW2_TEXT_RE.fullmatch(const.text) and is_pow2(new):
        return re.sub(r"\d+$", str(new.bit_length() - 1), const.text)
    if isinstance(new, float):
        text = f"{new:.3g}"  # exact: new values are already rounded to 3 significant digits
        return text if any(ch in text for ch in ".e") else text + ".0"
    return repr(new)


def apply_moves(source: str, moves: tuple[Edit, ...]) -> str:
    """The source with each move's value text replaced; raises if the result is not the intended Python."""
    lines = source.split("\n")
    for m in sorted(moves, key=lambda m: m.const.start, reverse=True):
        raw = lines[m.const.line].encode()
        rest = raw[m.const.end:]
        aligned = re.match(rb"( +)#", rest)
        if aligned:  # keep a trailing comment in its column where the spaces allow
            pad = len(aligned[1])
            rest = b" " * max(min(pad, 2), pad - len(m.text.encode()) + len(m.const.text.encode())) + rest[pad:]
        lines[m.const.line] = (raw[:m.const.start] + m.text.encode() + rest).decode()
    edited = "\n".join(lines)
    values = {c.name: c.value for c in find_constants(edited)}  # ast.parse inside: SyntaxError if broken
    for m in moves:
        if m.const.name not in values or values[m.const.name] != m.new:
            raise RuntimeError(f"hparams: rewriting {m.const.name} to {m.text} did not yield {m.new!r}")
    return edited
