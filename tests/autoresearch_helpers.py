"""Shared builders for the plugin/engine tests: tiny tasks with real mutator/runner subprocesses."""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

PY = shlex.quote(sys.executable)
REPO_ROOT = Path(__file__).resolve().parents[1]

# value.txt holds an integer; the runner prints it as the score
SCORE = 'import pathlib, os\nprint("score:", pathlib.Path(os.environ["VALUE_FILE"]).read_text().strip())\n'
# mutators: MUTATE_ADD adds an integer (to value.txt unless told otherwise) and describes the change
MUTATE_ADD = '''import os, pathlib
p = pathlib.Path("{path}")
v = int(p.read_text())
p.write_text(f"{{v + {step}}}\\n")
pathlib.Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text("add {step}\\n")
'''

# a runner whose baseline runs meet at a rendezvous ($RENDEZVOUS): each writes a marker, then waits (up to 20 s)
# for a second one, and notes in met.txt beside that folder whether it met one. Run one after another, the first
# would wait alone and say so; run by two xdist workers, both score the new baseline together.
RENDEZVOUS_SCORE = '''import os, pathlib, time
if os.environ["AUTORESEARCH_ITERATION"] == "0":
    folder = pathlib.Path(os.environ["RENDEZVOUS"])
    (folder / os.environ["AUTORESEARCH_SEED"]).write_text("")
    deadline = time.monotonic() + 20
    while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(folder.parent / "met.txt", "a") as f:
        f.write(f"{os.environ['AUTORESEARCH_SEED']} {len(list(folder.iterdir())) >= 2}\\n")
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''


def plugin_args() -> list[str]:
    """`-p pytest_autoresearch.plugin` unless the pytest11 entry point already loads it."""
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "pytest_autoresearch.plugin":
            return []
    return ["-p", "pytest_autoresearch.plugin"]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_task(root: Path, name: str = "t", *, step: int = 1, mutate: str | None = None, score: str = SCORE,
               value: str = "1\n", spec: dict[str, Any] | None = None, raw: str | None = None) -> Path:
    """experiments/<name>/ with value.txt, mutate.py, score.py and task.yaml (spec merged over the defaults;
    a None value removes a key). Returns the task folder."""
    folder = root / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    value_path = f"experiments/{name}/value.txt"
    (folder / "value.txt").write_text(value)
    (folder / "mutate.py").write_text(mutate if mutate is not None else MUTATE_ADD.format(path=value_path, step=step))
    (folder / "score.py").write_text(score.replace('os.environ["VALUE_FILE"]', repr(value_path)))
    base = {"artifacts": [value_path],
            "mutator": {"command": f"{PY} experiments/{name}/mutate.py", "timeout": 30},
            "runner": {"command": f"{PY} experiments/{name}/score.py", "timeout": 30},
            "scorer": {"metric": "score", "direction": "maximize"}}
    text = raw if raw is not None else yaml.safe_dump(merge(base, spec or {}), sort_keys=False)
    (folder / "task.yaml").write_text(text)
    return folder


def records(root: Path, results: str = "work/results.jsonl") -> list[dict[str, Any]]:
    path = root / results
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
