"""runner.budget: the seconds of training a run may use, enforced from outside the runner. A run is killed at
min(runner.timeout, budget + runner.startup_allowance), whatever it prints or believes its budget to be.

task.yaml:
    runner:
      budget: prepare.py:TIME_BUDGET   # seconds, or FILE:NAME, a top-level constant of a protected file
      startup_allowance: 120           # seconds on top of it: imports, compilation, saving the model

FILE:NAME is read with ast, never imported or run (the file is the task's, but running it could do anything);
NAME's value must be an int or float literal, or + - * / // of them (5 * 60). Loading the task reads it from
the workspace's FILE; each run reads it again from its sealed copy of FILE (seal.py), so that a candidate
which rewrites FILE in its folder cannot move it."""

from __future__ import annotations

import ast
import math
import operator
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .seal import SealedFile, seal

OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv}  # no **: 9 ** 9 ** 9 would take the engine's memory before it is a number
NUMBER_FORMS = "an int or float literal, or + - * / // of them"


@dataclass(frozen=True)
class Budget:
    allowance: float  # runner.startup_allowance
    seconds: float | None = None  # runner.budget as a number; None: read from FILE:NAME at each run
    file: str | None = None
    name: str | None = None

    def limit(self, sealed: Mapping[str, SealedFile], timeout: float,
              screen_seconds: float | None = None) -> tuple[float, str | None]:
        """(the run's time limit, the crash reason of a run killed at it) where the budget ends the run before
        runner.timeout, else (timeout, None): the timeout's own reason stands. screen_seconds: a screen run's
        training budget (policy.screen), in the budget's place. ValueError "FILE...: why" when the sealed FILE
        holds no budget."""
        if screen_seconds is not None:
            training, origin = screen_seconds, " of the screen (policy.screen.seconds)"
        else:
            training = self.seconds if self.seconds is not None else self._sealed_seconds(sealed)
            origin = f" from {self.file}:{self.name}" if self.file is not None else ""
        limit = training + self.allowance
        if limit >= timeout:
            return timeout, None
        return limit, (f"runner ran past its time limit of {limit:g}s (training budget {training:g}s{origin} "
                       f"+ start-up allowance {self.allowance:g}s)")

    def _sealed_seconds(self, sealed: Mapping[str, SealedFile]) -> float:
        if self.file not in sealed:
            raise ValueError(f"{self.file}: not in the run folder as a regular file")
        return constant(sealed[self.file].data, self.file, self.name)


def budget_source(value: str, rootdir: Path, is_protected: Callable[[str], bool]) -> tuple[str, str]:
    """(FILE, NAME) of runner.budget's `FILE:NAME`, its constant read from the workspace's FILE now; ValueError
    saying what is wrong."""
    file, _, name = value.rpartition(":")
    file = file.removeprefix("./")
    if not name.isidentifier():
        raise ValueError(f"{name!r} is not a constant's name (FILE:NAME, e.g. prepare.py:TIME_BUDGET)")
    parts = PurePosixPath(file).parts
    if not file or PurePosixPath(file).is_absolute() or ".." in parts or not is_protected(file):
        raise ValueError(f"{file!r} is not a protected file (FILE:NAME must name a constant of one of the task's "
                         f"protected files)")
    if not os.path.lexists(rootdir / file):
        raise ValueError(f"{file}: no such file")
    if (found := seal(rootdir, [file]).get(file)) is None:
        raise ValueError(f"{file}: not a regular file")
    constant(found.data, file, name)
    return file, name


def constant(source: bytes, file: str, name: str) -> float:
    """The value of `name` in `file`'s Python source, a positive number: its last top-level binding, evaluated
    from its literals alone. ValueError saying what is wrong, naming file (and name)."""
    try:
        tree = ast.parse(source, file)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ValueError(f"{file} is not valid Python: {getattr(e, 'msg', None) or e}{where}") from None
    value: ast.AST | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, bound = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, bound = [node.target], node.value
        elif isinstance(node, ast.AugAssign):
            targets, bound = [node.target], node  # `X += 1`: X's value is no longer a literal's
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            value = bound
    if value is None:
        raise ValueError(f"{file} has no top-level constant {name}")
    try:
        number = float(_arithmetic(value))
    except (ValueError, ArithmeticError, RecursionError):
        raise ValueError(f"{file}:{name} is not a number ({NUMBER_FORMS})") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{file}:{name} is {number:g}, not a number of seconds > 0")
    return number


def _arithmetic(node: ast.AST) -> float:
    """The value of a literal arithmetic expression; ValueError for anything else (a name, a call, a string)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _arithmetic(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not literal arithmetic")
