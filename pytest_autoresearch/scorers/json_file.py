"""scorer.kind `json-file`: the runner writes a JSON object of metrics to `scorer.file` (a path relative to
the sandbox root, like the commands' folder); the score is its `scorer.metric`, every finite number in it a
metric. Stdout's `key: number` lines count too, below the file's."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import Fail, NoScore, NotFinite, Scored, Scorer, extract_metrics

KEYS = ("file",)


@dataclass(frozen=True)
class JsonFileScorer(Scorer):
    metric: str
    file: str

    @property
    def setup(self) -> str:
        return f"json-file:{self.file}"

    def files(self) -> tuple[str, ...]:
        return (self.file,)

    def read(self, stdout: str, sandbox: Path, source: str = "runner") -> Scored:
        path = sandbox / self.file
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NoScore(f"no metric: the {source} wrote no {self.file}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NoScore(f"no metric: {self.file} is not a JSON file: {e}") from None
        if not isinstance(data, dict):
            raise NoScore(f"no metric: {self.file} holds {type(data).__name__}, not an object of metrics")
        numbers = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        score = data.get(self.metric)
        if isinstance(score, float) and not math.isfinite(score):  # Python's json reads NaN and Infinity
            raise NotFinite(f"no metric: {self.file}'s {self.metric} is {score}", score)
        if self.metric not in numbers:
            raise NoScore(f"no metric: {self.file} has no finite number {self.metric!r}")
        return Scored(numbers[self.metric], {**extract_metrics(stdout), **numbers})


def build(spec: Mapping[str, Any], metric: str, fail: Fail) -> JsonFileScorer:
    file = spec.get("file")
    if not isinstance(file, str) or not file.strip():
        raise fail("scorer.file", "missing required key (kind json-file)" if file is None
                   else f"must be a path relative to the sandbox root, got {file!r}")
    if file.startswith(("/", "~")) or ".." in PurePosixPath(file).parts:
        raise fail("scorer.file", f"{file!r} must stay inside the sandbox (a relative path without '..')")
    return JsonFileScorer(metric, file)
