"""task.yaml (version 1): load, validate, and freeze into a Task.

Every problem becomes a TaskError whose message is one line, "path: key: message",
so an agent (or a human) can fix the file without reading a traceback.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .budget import Budget, budget_source
from .evaluator import Evaluator
from .globs import glob_regex
from .gpus import auto_gpus
from . import isolation, scorers
from .isolation import Isolation
from .policies import Policy, make_policy
from .scorers import Constraint, Scorer

WORKSPACE = "workspace"  # `mutator: workspace`: the candidate is the edit already in the workspace
DIRECTIONS = ("minimize", "maximize")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # task names become folder names under work/logs

TOP_KEYS = ("name", "description", "artifacts", "protected", "mutation", "mutator", "runner", "scorer", "policy",
            "setup", "evaluator")
REQUIRED_TOP_KEYS = ("artifacts", "mutator", "runner", "scorer")
MUTATION_KEYS = ("max_files", "max_lines", "max_bytes")
MUTATOR_KEYS = ("command", "timeout", "prompt", "isolation", "network", "hparams")
RUNNER_KEYS = ("command", "timeout", "gpus", "isolation", "network", "hide", "writable", "budget", "startup_allowance")
EVALUATOR_KEYS = ("command", "receives", "max_bytes", "timeout", "isolation", "network")  # evaluator.py
SETUP_KEYS = ("command", "timeout")  # prepares a Ray node once (ray_executor.py); the local executor leaves it to you
DEFAULT_MUTATOR_TIMEOUT = 300.0
DEFAULT_RUNNER_TIMEOUT = 600.0
DEFAULT_SETUP_TIMEOUT = 3600.0
DEFAULT_EVALUATOR_TIMEOUT = 600.0
DEFAULT_RECEIVED_MAX_BYTES = 4 << 30  # a model's weights, and far below what a candidate could fill a disk with
# a candidate's changed files, all together: room for any source file (train.py is ~30 kB), while what is read
# and diffed stays far below the memory of a small machine (a 2 GB artifact once drove pytest to 8.2 GB RSS)
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: past it a timeout is a typo, and the OS's timers overflow near 1e300


class TaskError(Exception):
    """A task.yaml problem; str() is the one-line "path: key: message"."""


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    path: Path  # the task.yaml file
    rootdir: Path  # the repository being researched (pytest's rootdir)
    artifacts: tuple[str, ...]
    protected: tuple[str, ...]
    max_files: int | None  # None: no limit
    max_lines: int | None
    max_bytes: int  # most bytes the changed artifact files may hold, all together (never unlimited)
    mutator_command: str | None  # None: workspace mode
    mutator_timeout: float
    prompt: Path | None  # mutator.prompt, resolved; None: program.md beside the task or at the root, if any
    runner_command: str
    runner_timeout: float
    gpus: int
    metric: str
    scorer: Scorer
    constraints: tuple[Constraint, ...]  # a candidate run breaking one is rejected before the policy sees it
    direction: str
    policy: Policy
    mutator_isolation: Isolation | None = None  # None: the command runs unsandboxed, as the user
    runner_isolation: Isolation | None = None
    setup_command: str | None = None  # setup.command: run once per Ray node before its first iteration there
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT
    evaluator: Evaluator | None = None  # None: the score is read from the runner's own output
    budget: Budget | None = None  # runner.budget: None, the run's limit is runner.timeout alone
    # runner.hide and runner.writable: absolute paths, ~ and variables expanded as the task loaded; hide's may end
    # in a wildcard, matched at each run (isolation.matching)
    runner_hide: tuple[str, ...] = ()
    runner_writable: tuple[str, ...] = ()
    runner_unisolated: str | None = None  # runner.isolation: auto where bwrap cannot run here: the warning to show

    @property
    def workspace_mode(self) -> bool:
        return self.mutator_command is None

    def is_artifact(self, rel: str) -> bool:
        return any(glob_regex(g).match(rel) for g in self.artifacts) and not self.is_protected(rel)

    def is_protected(self, rel: str) -> bool:
        return any(glob_regex(g).match(rel) for g in self.protected)


def unmatched_globs(task: Task, paths: Iterable[str]) -> list[str]:
    """'artifacts: x' for each glob of the task that names none of these repo-relative paths."""
    paths = list(paths)
    return [f"{key}: {glob!r}" for key, globs in (("artifacts", task.artifacts), ("protected", task.protected))
            for glob in globs if not any(glob_regex(glob).match(p) for p in paths)]


# ----------------------------------------------------------------------------
# Loading


def load_task(path: Path, rootdir: Path) -> Task:
    path, rootdir = Path(path).resolve(), Path(rootdir).resolve()
    try:
        shown = path.relative_to(rootdir).as_posix()
    except ValueError:
        shown = str(path)

    def fail(key: str, message: str) -> TaskError:
        return TaskError(f"{shown}: {key}: {message}")

    try:
        text = path.read_text(encoding="utf-8")
        if (duplicate := _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))) is not None:
            key, first, again = duplicate
            raise fail(key, f"duplicate key (lines {first} and {again}; YAML alone would keep the last)")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise fail("yaml", f"not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail("file", f"cannot read: {e}") from None
    if not isinstance(data, Mapping):
        raise fail("file", f"must be a mapping of keys, got {type(data).__name__}")
    _check_keys(data, TOP_KEYS, "", fail)
    for key in REQUIRED_TOP_KEYS:
        if key not in data:
            raise fail(key, "missing required key")

    name = data.get("name", path.parent.name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail("name", f"must be a string of letters, digits, '.', '_' or '-', got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {type(description).__name__}")
    artifacts = _globs(data["artifacts"], "artifacts", fail, required=True)
    protected = _globs(data.get("protected", []), "protected", fail, required=False)
    if (both := next((glob for glob in protected if glob in artifacts), None)) is not None:
        raise fail("protected", f"{both!r} is also in artifacts: a path is either an artifact or protected")

    mutation = _mapping(data.get("mutation", {}), "mutation", MUTATION_KEYS, fail)
    max_files = _number(mutation, "max_files", None, "mutation", fail, integer=True)
    max_lines = _number(mutation, "max_lines", None, "mutation", fail, integer=True)
    max_bytes = mutation.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise fail("mutation.max_bytes", f"must be an integer >= 1 (bytes; there is no unlimited), got {max_bytes!r}")

    mutator = data["mutator"]
    prompt, mutator_isolation = None, None
    if mutator == WORKSPACE:
        mutator_command, mutator_timeout = None, DEFAULT_MUTATOR_TIMEOUT
    elif isinstance(mutator, str):
        raise fail("mutator", f"must be 'workspace' or a mapping with command/timeout, got {mutator!r}")
    else:
        mutator = _mapping(mutator, "mutator", MUTATOR_KEYS, fail)
        mutator_command = _command(mutator, "mutator", fail)
        mutator_timeout = _number(mutator, "timeout", DEFAULT_MUTATOR_TIMEOUT, "mutator", fail)
        if "prompt" in mutator:
            prompt = _prompt(mutator["prompt"], rootdir, fail)
        mutator_isolation, _ = _isolation(mutator, "mutator", fail)  # `auto` is the runner's alone
        if "hparams" in mutator:  # the hparams mutator's rules: checked here, so a typo fails at load time
            from .mutators.hparams import rules
            try:
                rules(mutator["hparams"])
            except ValueError as e:
                key, _, message = str(e).partition(": ")
                raise fail(key, message) from None

    runner = _mapping(data["runner"], "runner", RUNNER_KEYS, fail)
    runner_command = _command(runner, "runner", fail)
    runner_timeout = _number(runner, "timeout", DEFAULT_RUNNER_TIMEOUT, "runner", fail)
    runner_isolation, unisolated = _isolation(runner, "runner", fail)
    budget = _budget(runner, rootdir, protected, fail)
    isolated = runner.get("isolation") in ("bwrap", isolation.AUTO)
    runner_hide = _absolute_paths(runner, "hide", fail, isolated, "without a sandbox nothing is hidden")
    runner_writable = _absolute_paths(runner, "writable", fail, isolated,
                                      "without a sandbox everything is writable")
    runner_unisolated = None if unisolated is None else _unisolated_warning(
        shown, unisolated, len(runner_hide), runner.get("network") is False)
    if runner.get("gpus") == "auto":
        gpus = auto_gpus()
    elif isinstance(runner.get("gpus"), str):
        raise fail("runner.gpus", f"must be an integer >= 0 or 'auto', got {runner['gpus']!r}")
    else:
        gpus = _number(runner, "gpus", 0, "runner", fail, integer=True)

    setup_command, setup_timeout = None, DEFAULT_SETUP_TIMEOUT
    if "setup" in data:
        setup = _mapping(data["setup"], "setup", SETUP_KEYS, fail)
        setup_command = _command(setup, "setup", fail)
        setup_timeout = _number(setup, "timeout", DEFAULT_SETUP_TIMEOUT, "setup", fail)

    scorer_spec = _mapping(data["scorer"], "scorer", scorers.keys(), fail)
    scorer, constraints = scorers.build(scorer_spec, fail)
    direction = scorer_spec.get("direction")
    if direction not in DIRECTIONS:
        raise fail("scorer.direction", "missing required key (minimize or maximize)" if direction is None
                   else f"must be minimize or maximize, got {direction!r}")
    evaluator = _evaluator(data["evaluator"], protected, scorer, fail) if "evaluator" in data else None

    policy_spec = data.get("policy") or {}
    try:
        policy = make_policy(policy_spec)
    except ValueError as e:  # the policy module names its key ("policy.repeats: ...")
        message = str(e)
        key, _, rest = message.partition(": ")
        raise fail(key if key.startswith("policy") else "policy", rest if key.startswith("policy") else message) from None

    return Task(name=name, description=description, path=path, rootdir=rootdir, artifacts=artifacts,
                protected=protected, max_files=max_files, max_lines=max_lines, max_bytes=max_bytes, mutator_command=mutator_command,
                mutator_timeout=mutator_timeout, prompt=prompt, runner_command=runner_command,
                runner_timeout=runner_timeout, gpus=gpus, metric=scorer.metric, scorer=scorer, constraints=constraints,
                direction=direction, policy=policy, mutator_isolation=mutator_isolation,
                runner_isolation=runner_isolation, setup_command=setup_command, setup_timeout=setup_timeout,
                evaluator=evaluator, budget=budget, runner_hide=runner_hide, runner_writable=runner_writable,
                runner_unisolated=runner_unisolated)


def schema() -> dict[str, tuple[str, ...]]:
    """Every task.yaml key, by section ("" for the top level): the one definition that loading, the tests and
    USAGE's key table agree with (scorer and policy keys come from their kinds' modules)."""
    from . import policies
    policy_keys = tuple(dict.fromkeys(key for kind in policies.kinds() for key in policies.keys(kind)))
    return {"": TOP_KEYS, "mutation": MUTATION_KEYS, "mutator": MUTATOR_KEYS, "runner": RUNNER_KEYS,
            "setup": SETUP_KEYS, "scorer": scorers.keys(), "policy": policy_keys, "evaluator": EVALUATOR_KEYS}


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str, fail) -> None:
    for key in data:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key (expected one of: {', '.join(allowed)})")


def _mapping(value: Any, key: str, allowed: tuple[str, ...], fail) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(key, f"must be a mapping, got {type(value).__name__}")
    _check_keys(value, allowed, f"{key}.", fail)
    return value


def _command(section: Mapping[str, Any], key: str, fail) -> str:
    command = section.get("command")
    if command is None:
        raise fail(f"{key}.command", "missing required key")
    if not isinstance(command, str) or not command.strip():
        raise fail(f"{key}.command", f"must be a non-empty string, got {command!r}")
    return command


def _number(section: Mapping[str, Any], key: str, default, prefix: str, fail, integer: bool = False):
    value = section.get(key, default)
    if value is None:
        return None
    kind = int if integer else (int, float)
    if not integer and isinstance(value, float) and not math.isfinite(value):
        raise fail(f"{prefix}.{key}", f"must be a finite number of seconds, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0 or (not integer and value == 0):
        want = "an integer >= 0" if integer else "a number > 0"
        raise fail(f"{prefix}.{key}", f"must be {want}, got {value!r}")
    if not integer and value > MAX_TIMEOUT_S:
        raise fail(f"{prefix}.{key}", f"must be at most {MAX_TIMEOUT_S:g} seconds (7 days), got {value:g}")
    return value if integer else float(value)


def _duplicate_key(node: yaml.Node | None, prefix: str = "") -> tuple[str, int, int] | None:
    """(dotted key, its first line, the line repeating it) for the first key a mapping of the document repeats:
    YAML loaders keep the last silently, so a second `timeout:` would quietly win over the first."""
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in lines:
                return key, lines[key], line
            lines[key] = line
            children.append((key + ".", value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(prefix, item) for item in node.value]
    for child_prefix, child in children:
        if (found := _duplicate_key(child, child_prefix)) is not None:
            return found
    return None


def _isolation(section: Mapping[str, Any], role: str, fail) -> tuple[Isolation | None, str | None]:
    """The section's isolation, and (runner.isolation: auto where bwrap cannot run here) why it runs without."""
    chosen = isolation.parse(section.get("isolation"), section.get("network"), role)
    if chosen.problem is not None:
        key, _, message = chosen.problem.partition(": ")
        raise fail(key, message)
    return chosen.isolation, chosen.unisolated


def _absolute_paths(runner: Mapping[str, Any], key: str, fail, isolated: bool, without: str) -> tuple[str, ...]:
    """runner.hide's or runner.writable's paths, absolute once ~ and variables are expanded (now: the session's
    environment is the runner's); a wildcard only in the last component, and none in a folder to create."""
    value = runner.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list):
        raise fail(f"runner.{key}", f"must be a list of absolute paths, got {value!r}")
    if value and not isolated:
        raise fail(f"runner.{key}", f"needs runner.isolation: bwrap or auto ({without})")
    paths = []
    for raw in value:
        if not isinstance(raw, str) or not raw.strip():
            raise fail(f"runner.{key}", f"each entry must be a non-empty string, got {raw!r}")
        try:
            path = isolation.expand_path(raw, os.environ, os.path.expanduser("~"))
        except ValueError as e:
            raise fail(f"runner.{key}", f"{raw!r}: {e}") from None
        if not os.path.isabs(path):
            raise fail(f"runner.{key}", f"{raw!r} is not an absolute path (after expanding ~ and variables: {path!r})")
        folder, name = os.path.split(os.path.normpath(path))
        if isolation.WILDCARD.search(folder):
            raise fail(f"runner.{key}", f"{raw!r}: a wildcard may only be in the last path component")
        if key == "writable" and isolation.WILDCARD.search(name):
            raise fail(f"runner.{key}", f"{raw!r}: a folder to create holds no wildcard")
        paths.append(os.path.join(folder, name))
    return tuple(paths)


def _unisolated_warning(shown: str, why: str, hidden: int, offline: bool) -> str:
    """What runner.isolation: auto says once a session where bwrap cannot run: why, and what is not hidden."""
    sees = "the engine's storage (results, logs, the records' key)"
    if hidden:
        sees += f" and runner.hide's {hidden} path{'s' if hidden > 1 else ''}"
    reach = [f"sees {sees}", *(["has the network"] if offline else []), "can write wherever you can"]
    return (f"{shown}: runner.isolation: auto: the runner runs without isolation here, as {why}: it "
            f"{', '.join(reach[:-1])}, and {reach[-1]}")


def _budget(runner: Mapping[str, Any], rootdir: Path, protected: tuple[str, ...], fail) -> Budget | None:
    """runner.budget and runner.startup_allowance (budget.py); None without them."""
    if "budget" not in runner:
        if "startup_allowance" in runner:
            raise fail("runner.startup_allowance", "only means something with runner.budget")
        return None
    allowance = _number(runner, "startup_allowance", None, "runner", fail)
    if allowance is None:
        raise fail("runner.startup_allowance", "missing required key (with runner.budget: the seconds on top of it "
                                               "for start-up, compilation and saving the model)")
    value = runner["budget"]
    if isinstance(value, str) and ":" in value:
        try:
            file, name = budget_source(value, rootdir, lambda rel: any(glob_regex(g).match(rel) for g in protected))
        except ValueError as e:
            raise fail("runner.budget", str(e)) from None
        return Budget(allowance, file=file, name=name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
        raise fail("runner.budget", f"must be seconds > 0 or FILE:NAME (a constant of a protected file), got {value!r}")
    return Budget(allowance, seconds=float(value))


def _evaluator(value: Any, protected: tuple[str, ...], scorer: Scorer, fail) -> Evaluator:
    """task.yaml's `evaluator:` (evaluator.py). What it receives must be the runner's own file: neither a protected
    file (the sealed one would be overwritten) nor the file a json-file scorer reads (the runner's score again)."""
    spec = _mapping(value, "evaluator", EVALUATOR_KEYS, fail)
    command = _command(spec, "evaluator", fail)
    if "receives" not in spec:
        raise fail("evaluator.receives", "missing required key")
    (receives,) = _globs([spec["receives"]], "evaluator.receives", fail, required=True)  # absolute and '..' rules
    if not PurePosixPath(receives).parts:
        raise fail("evaluator.receives", f"must name a file, got {receives!r}")
    if any(glob_regex(glob).match(receives) for glob in protected):
        raise fail("evaluator.receives", f"{receives!r} is protected: the runner's file would replace it")
    if any(PurePosixPath(file) == PurePosixPath(receives) for file in scorer.files()):
        raise fail("evaluator.receives", f"{receives!r} is scorer.file: the runner would write its own score")
    max_bytes = spec.get("max_bytes", DEFAULT_RECEIVED_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise fail("evaluator.max_bytes", f"must be an integer >= 1 (bytes), got {max_bytes!r}")
    timeout = _number(spec, "timeout", DEFAULT_EVALUATOR_TIMEOUT, "evaluator", fail)
    return Evaluator(command, receives, max_bytes, timeout, _isolation(spec, "evaluator", fail)[0])


def _prompt(value: Any, rootdir: Path, fail) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise fail("mutator.prompt", f"must be a repo-relative path of a prompt file, got {value!r}")
    (glob,) = _globs([value], "mutator.prompt", fail, required=True)  # same absolute/'..' rules as globs
    path = rootdir / glob
    if not path.is_file():
        raise fail("mutator.prompt", f"{glob!r} is not a file (paths are relative to the repository root)")
    return path


def _globs(value: Any, key: str, fail, required: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (required and not value):
        raise fail(key, f"must be a non-empty list of repo-relative globs, got {value!r}" if required
                   else f"must be a list of repo-relative globs, got {value!r}")
    value = [glob[2:] if isinstance(glob, str) and glob.startswith("./") else glob for glob in value]  # ./x is x
    for glob in value:
        if not isinstance(glob, str) or not glob.strip():
            raise fail(key, f"each entry must be a non-empty string, got {glob!r}")
        if glob.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", glob):
            raise fail(key, f"{glob!r} is an absolute path; use a path relative to the repository root")
        if ".." in PurePosixPath(glob.replace("\\", "/")).parts:
            raise fail(key, f"{glob!r} escapes the repository ('..')")
    return tuple(value)
