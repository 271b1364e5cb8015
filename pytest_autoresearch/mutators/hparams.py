"""LLM-free mutator: nudge one or two UPPER_CASE module-level constants of the artifact.

The engine runs `python -m pytest_autoresearch.mutators.hparams` in the sandbox root. It edits one `.py` file
matching AUTORESEARCH_ARTIFACTS (task.yaml glob rules; never one matching AUTORESEARCH_PROTECTED): the one
named train.py, else the first in sorted order. It rewrites only the value text of `NAME = value  # comment`
lines, and writes the description "NAME old → new[, NAME2 old → new]" to AUTORESEARCH_DESCRIPTION_FILE
(`parse_description` reads it back). results.jsonl says which changes were tried (never repeated, nor a kept
change undone) and which directions helped (tried again more often). Same AUTORESEARCH_SEED,
AUTORESEARCH_ITERATION and results -> same edit. Pairs of changes only where AUTORESEARCH_MAX_LINES >= 4 (each
changed constant is 2 diff lines), never two *BATCH* (or batch-triple) constants at once. What it knows of the artifact comes
from its task (`mutator.hparams` in AUTORESEARCH_TASK_FILE; train.py's rules where the task says nothing):
`choices` of str constants, and a `batch` triple: train.py needs TOTAL_BATCH_SIZE to be a multiple of
DEVICE_BATCH_SIZE * MAX_SEQ_LEN, and a move that would break that is never proposed (MAX_SEQ_LEN: the
artifact's own, else prepare.py's beside it, else `seq_len`, 2048). AUTORESEARCH_HPARAMS / AUTORESEARCH_HPARAMS_SKIP
(comma lists) restrict the names; by hand: --file, --seed, --results, --names, --skip. Exit 0, also when
nothing is left to try (then the file is unchanged); exit 2 with one line on stderr for bad input.

Step rules, first match wins:
  bool                                  toggled
  str                                   the task's choices only (train.py: WINDOW_PATTERN L, SL, SSL, SSSL, SSSSL)
  int written `2**k`, or named *BATCH*  x2 / ÷2 (a power of two stays one; `2**k` stays `2**k`)
  int named *DIM* and a power of two    x2 / ÷2
  int named *DEPTH*/*HEAD(S)*/*LAYER(S)*  ±1, never below 1 (left alone when below 1)
  other int                             ± max(1, |v| // 8); a positive value stays >= 1
  float                                 x or ÷ 1.25 or 1.5, 3 significant digits; 0.0 steps up to 0.05 or 0.1;
                                        ratios (*RATIO*, *FRAC*, *BETA*, ...) valued in [0, 1] stay there

Finding the constants and rewriting their value text is `constants`' job; this module is the search.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..results import read_records
from ..sandbox import Link, scan
from ..globs import glob_regex
from .constants import (POW2_TEXT_RE, Constant, Value, apply_moves, eval_text, find_constants, first_positive_int,
                        is_number, is_pow2, name_words, render)

COUNT_WORDS = frozenset({"DEPTH", "HEAD", "HEADS", "LAYER", "LAYERS"})
RATIO_WORDS = frozenset({"RATIO", "FRAC", "BETA", "DROPOUT", "MOMENTUM", "PROB"})
FACTORS = (1.25, 1.5)
ZERO_STEPS = (0.05, 0.1)  # a multiplicative step cannot leave 0.0 (e.g. WARMUP_RATIO = 0.0)
# How one outcome scales the weight of trying the same (name, direction) again.
OUTCOME_WEIGHT = {"keep": 2.0, "discard": 0.7, "rejected": 0.7, "crash": 0.4}
PAIR_PROBABILITY = 0.25
ARROW = " → "
RULE_KEYS = ("choices", "batch", "seq_len")
BATCH_KEYS = ("total", "device", "seq_len")

Change = tuple[str, object, object]  # (name, old value, new value)


class MutatorError(Exception):
    """Bad input (env, artifact, file): reported as one line, exit status 2."""


@dataclass(frozen=True)
class Rules:
    """What the mutator knows of its artifact beyond the text: task.yaml's `mutator.hparams`, else train.py's."""
    choices: Mapping[str, tuple[str, ...]]  # the values a str constant may take, in order
    batch: tuple[str, str, str]  # (total, device, seq_len): total must stay a multiple of device * seq_len
    seq_len: int  # the seq_len constant's value when neither the artifact nor prepare.py beside it sets one


# train.py: TOTAL_BATCH_SIZE (tokens) must be a multiple of DEVICE_BATCH_SIZE (sequences) * MAX_SEQ_LEN, and
# 2048 is prepare.py's MAX_SEQ_LEN
TRAIN_PY = Rules(choices={"WINDOW_PATTERN": ("L", "SL", "SSL", "SSSL", "SSSSL")},
                 batch=("TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "MAX_SEQ_LEN"), seq_len=2048)


def rules(spec: Any) -> Rules:
    """Rules from task.yaml's mutator.hparams mapping (None: train.py's); a key left out keeps train.py's.
    ValueError "mutator.hparams.<key>: message" on a bad value."""
    if spec is None:
        return TRAIN_PY
    if not isinstance(spec, Mapping):
        raise ValueError(f"mutator.hparams: must be a mapping with {', '.join(RULE_KEYS)}, got {type(spec).__name__}")
    for key in spec:
        if key not in RULE_KEYS:
            raise ValueError(f"mutator.hparams.{key}: unknown key (expected one of: {', '.join(RULE_KEYS)})")
    choices = spec.get("choices", TRAIN_PY.choices)
    if not isinstance(choices, Mapping):
        raise ValueError("mutator.hparams.choices: must map constant names to lists of values")
    for name, values in choices.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ValueError(f"mutator.hparams.choices.{name}: must be an UPPER_CASE constant name")
        if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"mutator.hparams.choices.{name}: must be a non-empty list of strings, got {values!r}")
    batch = spec.get("batch", dict(zip(BATCH_KEYS, TRAIN_PY.batch)))
    if not isinstance(batch, Mapping) or set(batch) != set(BATCH_KEYS) or not all(
            isinstance(batch[k], str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", batch[k]) for k in BATCH_KEYS):
        raise ValueError(f"mutator.hparams.batch: needs total, device and seq_len, each an UPPER_CASE constant "
                         f"name, got {batch!r}")
    seq_len = spec.get("seq_len", TRAIN_PY.seq_len)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"mutator.hparams.seq_len: must be an integer >= 1, got {seq_len!r}")
    return Rules({name: tuple(values) for name, values in choices.items()},
                 (batch["total"], batch["device"], batch["seq_len"]), seq_len)


def task_rules(task_file: str | None) -> Rules:
    """The rules of the task the engine runs this mutator for (AUTORESEARCH_TASK_FILE), train.py's without one
    (also when that file is not in the mutator's copy of the repository)."""
    if not task_file or not os.path.exists(task_file):
        return TRAIN_PY
    import yaml  # only here: by hand, without a task, the mutator needs no YAML
    try:
        with open(task_file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        mutator = data.get("mutator") if isinstance(data, dict) else None
        return rules(mutator.get("hparams") if isinstance(mutator, dict) else None)
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise MutatorError(f"{task_file}: {e}") from None


@dataclass(frozen=True)
class Move:
    const: Constant
    new: Value
    text: str
    direction: str

    @property
    def change(self) -> Change:
        return (self.const.name, self.const.value, self.new)


# ---------------------------------------------------------------------------
# Step rules
# ---------------------------------------------------------------------------

def direction(name: str, old: object, new: object, rules: Rules = TRAIN_PY) -> str:
    if isinstance(old, bool) or isinstance(new, bool):
        return "toggle"
    if isinstance(old, str) or isinstance(new, str):
        choices = rules.choices.get(name, ())
        if old in choices and new in choices:
            return "up" if choices.index(new) > choices.index(old) else "down"
        return "set"
    return "up" if new > old else "down"


def _new_values(const: Constant, rules: Rules) -> list:
    v, words = const.value, name_words(const.name)
    if isinstance(v, bool):
        return [not v]
    if isinstance(v, str):
        choices = rules.choices.get(const.name, ())
        return list(choices) if v in choices else []
    if isinstance(v, int):
        if POW2_TEXT_RE.fullmatch(const.text) or "BATCH" in words or ("DIM" in words and is_pow2(v)):
            return ([v * 2] + ([v // 2] if v % 2 == 0 else [])) if v > 0 else []
        if words & COUNT_WORDS:  # a count below 1 (e.g. -1 for "auto") is a flag, not a size to step
            return [v + 1] + ([v - 1] if v > 1 else []) if v >= 1 else []
        step = max(1, abs(v) // 8)
        return [v + step] + ([v - step] if v - step >= 1 or v < 1 else [])
    if v == 0.0:
        news = list(ZERO_STEPS)
    else:
        news = [float(f"{x:.3g}") for f in FACTORS for x in (v * f, v / f)]
    if words & RATIO_WORDS and 0.0 <= v <= 1.0:
        news = [min(1.0, max(0.0, x)) for x in news]
    return [x for x in news if math.isfinite(x)]


def candidate_moves(const: Constant, rules: Rules = TRAIN_PY) -> list[Move]:
    moves, seen = [], {const.value}
    for new in _new_values(const, rules):
        if new not in seen:
            seen.add(new)
            moves.append(Move(const, new, render(const, new), direction(const.name, const.value, new, rules)))
    return moves


# ---------------------------------------------------------------------------
# History: what was tried, what helped
# ---------------------------------------------------------------------------

def describe(moves: tuple[Move, ...]) -> str:
    return ", ".join(f"{m.const.name} {m.const.text}{ARROW}{m.text}" for m in moves)


def parse_description(text: str) -> list[Change]:
    """(name, old, new) for each `NAME old → new` of a description `describe` wrote; [] for any other text."""
    changes = []
    for part in re.split(r", (?=[A-Z][A-Z0-9_]* )", text.strip()):
        m = re.fullmatch(rf"([A-Z][A-Z0-9_]*) (.+?){ARROW}(.+)", part)
        old, new = (eval_text(m[2]), eval_text(m[3])) if m else (None, None)
        if old is None or new is None:
            return []
        changes.append((m[1], old, new))
    return changes


def load_history(results: Path | None, task: str | None) -> list[tuple[str, list[Change]]]:
    """(status, changes) of every record of `task` whose changes can be read; unreadable lines are skipped."""
    if results is None or not results.is_file():
        return []
    history = []
    for record in read_records(results, task or None):
        try:
            changes = [(str(c["name"]), eval_text(str(c["old"])), eval_text(str(c["new"])))
                       for c in record.get("changes") or []]
        except (KeyError, TypeError):  # a hand-written `changes` field that is not this mutator's
            changes = []
        if not changes or any(old is None or new is None for _, old, new in changes):
            changes = parse_description(str(record.get("description", "")))
        if changes:
            history.append((str(record.get("status", "")), changes))
    return history


def _batch_divides(values: dict[str, object], seq_len: int, rules: Rules) -> bool:
    total, device = values.get(rules.batch[0]), values.get(rules.batch[1])
    if not (is_number(total) and is_number(device)) or device * seq_len == 0:
        return True  # not the artifact's pair of batch constants: nothing to keep
    return total % (device * seq_len) == 0


def batch_safe(constants: list[Constant], moves: tuple[Move, ...], seq_len: int | None = None,
               rules: Rules = TRAIN_PY) -> bool:
    """False for two *BATCH* moves at once (one alone is easier to read and to keep valid), and for moves
    that make the rules' total stop being a multiple of device * seq_len (train.py: TOTAL_BATCH_SIZE,
    DEVICE_BATCH_SIZE, MAX_SEQ_LEN; it exits otherwise). `constants`: all of the file's, also those
    --names/--skip keep from moving; seq_len: the rules' fallback when None."""
    seq_len = rules.seq_len if seq_len is None else seq_len
    batch_moves = [m for m in moves if m.const.name in rules.batch or "BATCH" in name_words(m.const.name)]
    if len(batch_moves) > 1:
        return False
    if not batch_moves:
        return True
    before = {c.name: c.value for c in constants}
    after = before | {m.const.name: m.new for m in batch_moves}
    after_len = after.get(rules.batch[2]) if is_number(after.get(rules.batch[2])) else seq_len
    before_len = before.get(rules.batch[2]) if is_number(before.get(rules.batch[2])) else seq_len
    # never break the multiple, may repair it
    return _batch_divides(after, after_len, rules) or not _batch_divides(before, before_len, rules)


def choose(constants: list[Constant], history: list[tuple[str, list[Change]]], seed: str, max_lines: int,
           seq_len: int | None = None, fixed: list[Constant] | None = None,
           rules: Rules = TRAIN_PY) -> tuple[Move, ...] | None:
    """One or two moves on different constants, weighted by past outcomes, never a tried set nor one
    `batch_safe` refuses (given the `fixed` constants too); None if none left."""
    everything = constants + (fixed or [])
    tried, weights = set(), defaultdict(lambda: 1.0)
    for status, changes in history:
        if status == "interrupted":  # never scored: trying it again is fair
            continue
        tried.add(frozenset(changes))
        if status == "keep":  # undoing a kept change is not a new experiment
            tried.add(frozenset((name, new, old) for name, old, new in changes))
        for name, old, new in changes:
            weights[name, direction(name, old, new, rules)] *= OUTCOME_WEIGHT.get(status, 1.0)
    moves = [m for c in constants for m in candidate_moves(c, rules)]

    def untried(candidates: list[tuple[Move, ...]]) -> list[tuple[Move, ...]]:
        return [c for c in candidates if frozenset(m.change for m in c) not in tried
                and 2 * len({m.const.line for m in c}) <= max_lines and batch_safe(everything, c, seq_len, rules)]

    singles = untried([(m,) for m in moves])
    pairs = untried([(a, b) for a, b in combinations(moves, 2) if a.const.name != b.const.name])
    rng = random.Random(seed)
    for pool in ([pairs, singles] if rng.random() < PAIR_PROBABILITY else [singles, pairs]):
        if pool:
            pool_weights = [math.prod(weights[m.const.name, m.direction] for m in c) for c in pool]
            return rng.choices(pool, weights=pool_weights)[0]
    return None


# ---------------------------------------------------------------------------
# The command line: which file, which settings
# ---------------------------------------------------------------------------

def _artifact(globs: str, protected: str) -> Path:
    """The artifact to edit, matched the way task.yaml matches (`*` within a folder, `**` across, `dir/`
    = everything below) over the files the sandbox holds: train.py if it is one, else the first sorted."""
    wanted = [glob_regex(g) for g in globs.split(os.pathsep) if g]
    guarded = [glob_regex(g) for g in protected.split(os.pathsep) if g]
    matches = sorted(rel for rel, state in scan(Path(".")).items()
                     if not isinstance(state, Link) and rel.endswith(".py")
                     and any(r.match(rel) for r in wanted) and not any(r.match(rel) for r in guarded))
    if not matches:
        unprotected = f" outside AUTORESEARCH_PROTECTED={protected!r}" if guarded else ""
        raise MutatorError(f"AUTORESEARCH_ARTIFACTS={globs!r}: no .py file matches{unprotected} in {os.getcwd()}")
    return Path(next((rel for rel in matches if rel.rpartition("/")[2] == "train.py"), matches[0]))


def max_seq_len(artifact: Path, rules: Rules = TRAIN_PY) -> int:
    """The rules' seq_len constant (train.py: MAX_SEQ_LEN) as a top-level literal of the artifact, else of
    prepare.py beside it, else the rules' fallback."""
    return first_positive_int((artifact, artifact.parent / "prepare.py"), rules.batch[2]) or rules.seq_len


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise MutatorError(f"{key}={raw!r}: not an integer") from None


def _name_list(text: str | None) -> set[str]:
    return {n.strip() for n in (text or "").split(",") if n.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_autoresearch.mutators.hparams",
                                description=__doc__.split("\n")[0])
    p.add_argument("--file", type=Path, help="file to edit (default: the .py file AUTORESEARCH_ARTIFACTS picks)")
    p.add_argument("--seed", type=int, help="default: AUTORESEARCH_SEED, else 0")
    p.add_argument("--results", type=Path, help="default: AUTORESEARCH_RESULTS")
    p.add_argument("--names", default=os.environ.get("AUTORESEARCH_HPARAMS"),
                   help="comma list: only these constants may change (default: AUTORESEARCH_HPARAMS)")
    p.add_argument("--skip", default=os.environ.get("AUTORESEARCH_HPARAMS_SKIP"),
                   help="comma list: never change these (default: AUTORESEARCH_HPARAMS_SKIP)")
    args = p.parse_args(argv)
    env = os.environ
    try:
        path = args.file or _artifact(env.get("AUTORESEARCH_ARTIFACTS", ""), env.get("AUTORESEARCH_PROTECTED", ""))
        seed = args.seed if args.seed is not None else _env_int("AUTORESEARCH_SEED", 0)
        max_lines = _env_int("AUTORESEARCH_MAX_LINES", 4)
        results = args.results or (Path(env["AUTORESEARCH_RESULTS"]) if env.get("AUTORESEARCH_RESULTS") else None)
        task = task_rules(env.get("AUTORESEARCH_TASK_FILE"))
        try:
            with open(path, encoding="utf-8", newline="") as f:
                source = f.read()
            constants = find_constants(source)
        except (OSError, UnicodeDecodeError, SyntaxError) as e:
            raise MutatorError(f"{path}: cannot read as Python: {e}") from None
    except MutatorError as e:
        print(f"hparams: error: {e}", file=sys.stderr)
        return 2
    allowed, skipped = _name_list(args.names), _name_list(args.skip)
    for name in sorted(allowed - {c.name for c in constants}):
        print(f"hparams: warning: {path}: {name} is not an editable constant", file=sys.stderr)
    movable = [c for c in constants if (not allowed or c.name in allowed) and c.name not in skipped]
    history = load_history(results, env.get("AUTORESEARCH_TASK"))
    moves = choose(movable, history, f"{seed}:{env.get('AUTORESEARCH_ITERATION', '')}", max_lines,
                   max_seq_len(path, task), [c for c in constants if c not in movable], task)
    if moves is None:
        message = f"nothing changed: no untried change of {len(movable)} constants of {path} fits {max_lines} lines"
    else:
        message = describe(moves)
        write_atomic(path, apply_moves(source, moves))
    if env.get("AUTORESEARCH_DESCRIPTION_FILE"):
        write_atomic(Path(env["AUTORESEARCH_DESCRIPTION_FILE"]), message + "\n")
    print(f"hparams: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
