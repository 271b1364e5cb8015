"""Attempts made on another machine, independent of how they get there (ray_executor.py sends them through Ray):

- the controller packs the repository once per content (`RepoSnapshot`: a tar of what a sandbox would copy, so
  work/, .git and virtual environments stay behind; content-addressed; size-limited) and writes an `Order`: which
  task, which iteration, and the records the steps read (baseline scores, pooled noise, early-stop curves);
- the node unpacks it into a private folder, runs the task's `setup:` once per node, and makes the attempt with
  steps 1-4 exactly as here (iteration.attempt_offsite), against a private storage seeded from the order; it
  sends back the attempt with its log, its diff and a baseline it scored (`Result`);
- the controller files the logs into its storage and records that baseline (`receive`), then lands the attempt
  with Landing.land as for a local one. An attempt that never came back (its node died, Ctrl-C) is
  `lost_attempt`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from .attempt import Attempt
from .baseline import append_baseline, baseline_scores, recorded_scores
from .engine import Engine
from .errors import Crashed, EngineError
from .files import write_atomic
from .iteration import attempt_offsite
from .process import run_logged
from .results import Record
from .sandbox import Link, copy_tree, hash_contents, read_contents, scan
from .scratch import new_scratch
from .storage import Storage
from .task import Task, load_task

SNAPSHOT_LIMIT_BYTES = 256 << 20  # a repository is code and configuration: data lives on each node (USAGE)
ENV_PREFIX = "AUTORESEARCH_"  # the session's variables of this name travel with an order (an agent CLI, a cache)
NODE_DIR = "autoresearch-node"  # $TMPDIR/autoresearch-node-<uid>/ on a node: setup markers


class SnapshotTooLarge(EngineError):
    """The repository is too big to send to the nodes; str() names the largest files."""


@dataclass(frozen=True)
class RepoSnapshot:
    digest: str  # sha256 of the tar, whose metadata is normalised: the same files give the same digest
    tar: bytes


def snapshot_repo(engine: Engine, scratch: Path) -> RepoSnapshot:
    """The repository as a sandbox would copy it (copy_tree's rules and the storage left out), as one tar."""
    manifest = {rel: state for rel, state in scan(engine.rootdir).items()
                if not any(rel == s or rel.startswith(s + "/") for s in engine.storage_in_tree)}
    sizes = {rel: state[0] for rel, state in manifest.items() if not isinstance(state, Link)}
    if (total := sum(sizes.values())) > SNAPSHOT_LIMIT_BYTES:
        largest = ", ".join(f"{rel} ({size >> 20} MiB)" for rel, size in
                            sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
        raise SnapshotTooLarge(f"{engine.rootdir}: the repository snapshot for the nodes is {total >> 20} MiB, over "
                               f"its {SNAPSHOT_LIMIT_BYTES >> 20} MiB limit (largest: {largest}); keep data outside "
                               f"the repository (USAGE.md: More than one machine)")
    copy = scratch / "repo"
    copy_tree(engine.rootdir, copy, engine.storage_in_tree)

    def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(copy, arcname="repo", filter=normalised)  # members in sorted order (Python >= 3.7)
    shutil.rmtree(copy, ignore_errors=True)
    data = buffer.getvalue()
    return RepoSnapshot(hashlib.sha256(data).hexdigest()[:16], data)


@dataclass(frozen=True)
class Order:
    """One iteration to attempt on a node: plain data (it crosses machines)."""
    task_file: str  # relative to the repository root
    task: str
    iteration: int
    description: str
    snapshot: str  # the RepoSnapshot's digest
    baseline_hash: str  # its artifacts' hash: the baseline the attempt will start from
    records: list[dict[str, Any]]  # the task's records: baseline scores, pooled noise, iteration numbers
    baseline_runs: dict[str, str] = field(default_factory=dict)  # the current baseline's saved runs, {name: JSON}
    env: dict[str, str] = field(default_factory=dict)  # the session's AUTORESEARCH_* variables (the rest: the node's)
    baseline_only: bool = False  # score the baseline, make no candidate (its iterations wait for the record)

    @classmethod
    def make(cls, engine: Engine, task: Task, iteration: int, description: str, snapshot: str,
             baseline_only: bool = False) -> Order:
        baseline_hash = hash_contents(engine.artifacts_in(task, engine.rootdir))
        runs = engine.storage.results.baseline_runs / task.name / baseline_hash
        saved = {p.name: p.read_text(encoding="utf-8") for p in sorted(runs.glob("*.json"))} if runs.is_dir() else {}
        return cls(task_file=task.path.relative_to(engine.rootdir).as_posix(), task=task.name, iteration=iteration,
                   description=description, snapshot=snapshot, baseline_hash=baseline_hash,
                   records=engine.storage.results.records(task.name),
                   baseline_runs=saved, env={k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)},
                   baseline_only=baseline_only)


@dataclass(frozen=True)
class Result:
    """What a node sends back: the attempt (none for a baseline order), its log and diff, and a baseline it scored
    (record, runs, logs)."""
    attempt: dict[str, Any] | None
    log: bytes
    diff: bytes | None
    baseline: dict[str, Any] | None  # the record of a baseline the node scored, for the session to append
    baseline_runs: dict[str, str]  # its saved runs, {name: JSON}
    baseline_logs: dict[str, bytes]  # its runs' logs, {file name: content}


# ----------------------------------------------------------------------------
# On the node

def attempt_in_child(order: Order, tar: bytes, node: str) -> Result:
    """attempt_on_node in a child process of this one (an executor's worker). Why a child: an executor that
    kills its worker process outright (Ray's forced cancel at Ctrl-C) kills that worker's own children with it,
    among them the reaper of a command in progress, which would leave the command running. A child's reapers
    are grandchildren: when the child dies they see their lifeline end and kill their commands' trees."""
    folder = new_scratch(f"order-{order.iteration}")  # removed by its keeper even if this process is killed
    try:
        (folder / "order.pickle").write_bytes(pickle.dumps((order, node)))
        (folder / "snapshot.tar").write_bytes(tar)
        with open(folder / "output.log", "wb") as output:
            code = subprocess.run([sys.executable, "-c", "import sys; from pytest_autoresearch.offsite import "
                                   "child_main; child_main(sys.argv[1])", str(folder)], stdin=subprocess.DEVNULL,
                                  stdout=output, stderr=subprocess.STDOUT).returncode
        try:
            return pickle.loads((folder / "result.pickle").read_bytes())
        except FileNotFoundError:
            output = (folder / "output.log").read_bytes()
            last = (output.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
            attempt = Attempt(task_file=order.task_file, task=order.task, iteration=order.iteration,
                              started_at=_now(), worker="ray", log=None, status="crash",
                              reason=f"internal error on node {node}: the attempt's process exited with code {code}"
                                     f": {last}", node=node)
            return Result(None if order.baseline_only else attempt.to_data(), output, None, None, {}, {})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_main(folder: str) -> None:
    """The child process of attempt_in_child: the order in, the result out (atomically: all or nothing)."""
    order, node = pickle.loads((Path(folder) / "order.pickle").read_bytes())
    result = attempt_on_node(order, (Path(folder) / "snapshot.tar").read_bytes(), node)
    write_atomic(Path(folder) / "result.pickle", pickle.dumps(result))


def attempt_on_node(order: Order, tar: bytes, node: str) -> Result:
    """Unpack the snapshot into a private folder, prepare the node (setup:) and make the attempt there, with the
    session's AUTORESEARCH_* variables and $AUTORESEARCH_NODE set (engine.env passes the environment on to the
    commands). Changes this process's environment: run it in a process of its own (attempt_in_child)."""
    os.environ.update({**order.env, "AUTORESEARCH_NODE": node})
    with tempfile.TemporaryDirectory(prefix=f"autoresearch-{order.iteration}-") as folder:
        root, storage = Path(folder) / "repo", Storage(Path(folder) / "work")
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(folder, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        task = load_task(root / order.task_file, root)
        engine = Engine(rootdir=root, storage=storage, worker="ray", commit=False)
        # the session's records, signed again with the private storage's key (it reads only what it signed):
        # the steps read baseline scores, pooled noise and the commands' export of the history from them
        storage.results.path.parent.mkdir(parents=True, exist_ok=True)
        storage.results.path.write_text("".join(storage.results.signer.sign(json.dumps(r, allow_nan=False)) + "\n"
                                                for r in order.records), encoding="utf-8")
        runs_folder = storage.results.baseline_runs / task.name / order.baseline_hash
        runs_folder.mkdir(parents=True, exist_ok=True)
        for name, text in order.baseline_runs.items():  # early-stop curves; runs of a half-scored baseline
            write_atomic(runs_folder / name, text)
        if (failure := _setup(task, node)) is not None:
            reason, output = failure
            attempt = lost_attempt(task, order.iteration, "crash", reason, node)
            return Result(None if order.baseline_only else attempt.to_data(), output, None, None, {}, {})
        if order.baseline_only:
            attempt, baseline = None, _score_baseline(engine, task, Path(folder) / "scratch")
        else:
            attempt = replace(attempt_offsite(engine, task, order.iteration, order.description), node=node)
            baseline = attempt.new_baseline
        runs = {p.name: p.read_text(encoding="utf-8") for p in sorted(runs_folder.glob("*.json"))} if baseline else {}
        logs = ({p.name: p.read_bytes() for p in (storage.logs_dir / task.name).glob("baseline-*.log")}
                if baseline else {})
        log = Path(attempt.log) if attempt is not None and attempt.log and os.path.isabs(attempt.log) else None
        diff = log.with_suffix(".diff") if log is not None else None
        return Result(attempt.to_data() if attempt is not None else None,
                      log.read_bytes() if log and log.is_file() else b"",
                      diff.read_bytes() if diff and diff.is_file() else None, baseline, runs, logs)


def _score_baseline(engine: Engine, task: Task, scratch: Path) -> dict[str, Any] | None:
    """Score the snapshot's baseline alone and return its record, for the session to append; None when a run
    failed: that is left to the iterations to meet and record, as they would locally."""
    sandbox = scratch / "sandbox"
    manifest = copy_tree(engine.rootdir, sandbox, engine.storage_in_tree)
    baseline = read_contents(sandbox, [rel for rel in manifest if task.is_artifact(rel)])
    try:  # Ray's CUDA_VISIBLE_DEVICES is in the environment the runner inherits
        _, record = baseline_scores(engine, task, hash_contents(baseline), sandbox, baseline, scratch, {}, _now(),
                                    record_here=False)
    except Crashed:
        return None
    return asdict(record) if record is not None else None


def _setup(task: Task, node: str) -> tuple[str, bytes] | None:
    """Run the task's setup command once on this node (a marker per node and command: a node started again, with
    a new id, runs it again; concurrent tasks wait for the first). Returns (reason, output) when it failed: the
    iteration is a crash, and the next one on this node tries again."""
    if task.setup_command is None:
        return None
    folder = Path(tempfile.gettempdir()) / f"{NODE_DIR}-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{node}\0{task.name}\0{task.setup_command}".encode()).hexdigest()[:16]
    done = folder / f"setup-{task.name}-{key}.done"
    with FileLock(str(folder / f"setup-{key}.lock")):
        if done.is_file():
            return None
        log = io.BytesIO()
        log.write(f"[autoresearch] setup on node {node}: {task.setup_command}\n".encode())
        env = {**os.environ, "AUTORESEARCH_TASK": task.name}
        result = run_logged(task.setup_command, task.rootdir, env, task.setup_timeout, log)
        if (failure := result.failure("setup", task.setup_timeout)) is not None:
            return f"setup on node {node}: {failure}", log.getvalue()
        done.write_text(_now() + "\n", encoding="utf-8")
    return None


# ----------------------------------------------------------------------------
# Back on the controller

def receive(engine: Engine, task: Task, result: Result, node: str) -> Attempt | None:
    """File a node's result into the storage (its log and diff, as the iteration's; a baseline's logs and saved
    runs) and return the attempt, ready for Landing.land, which appends a baseline it scored before it; for a
    baseline order, append that baseline here (once per content, whoever scored it) and return None."""
    baseline = _file_baseline(engine, task, result, node)
    if result.attempt is None:
        if baseline is not None:
            append_baseline(engine, task, Record(**baseline))
        return None
    attempt = Attempt.from_data(result.attempt)
    log = engine.storage.iteration_log(task.name, attempt.iteration)
    log.write_bytes(result.log)
    if result.diff is not None:
        log.with_suffix(".diff").write_bytes(result.diff)
    return replace(attempt, task_file=str(task.path), log=engine.shown(log), new_baseline=baseline)


def _file_baseline(engine: Engine, task: Task, result: Result, node: str) -> dict[str, Any] | None:
    """The logs and saved runs of the baseline a node scored, written into the storage; its record, naming them
    and the node, or None when there is none (or its scores made it to the record first)."""
    record = result.baseline
    if record is None:
        return None
    content_hash = str(record["baseline_hash"])
    if len(recorded_scores(engine, task, content_hash)) >= task.policy.baseline_runs:
        return None  # another node's scores of the same content are on record already
    folder = engine.storage.results.baseline_runs / task.name / content_hash
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in result.baseline_runs.items():
        write_atomic(folder / name, text)
    shown = {}
    for name, content in result.baseline_logs.items():
        if name.startswith(f"baseline-{content_hash}"):
            path = engine.storage.baseline_log(task.name, name[:-len(".log")])
            path.write_bytes(content)
            shown[name] = engine.shown(path)
    log = shown.get(Path(str(record.get("log") or "")).name, record.get("log"))
    return {**record, "log": log, "worker": "ray", "node": node}


def lost_attempt(task: Task, iteration: int, status: str, reason: str, node: str | None,
                 started_at: str | None = None) -> Attempt:
    """The attempt of an iteration whose steps never reported (a node that died, a Ctrl-C, a setup that failed):
    its status and reason only."""
    return Attempt(task_file=str(task.path), task=task.name, iteration=iteration, started_at=started_at or _now(),
                   worker="ray",
                   log=None, status=status, reason=reason, node=node)


def write_lost_log(engine: Engine, task: Task, attempt: Attempt, detail: str) -> Attempt:
    """A log for an attempt that never came back, saying what happened (the crash text shows its lines)."""
    log = engine.storage.iteration_log(task.name, attempt.iteration)
    log.write_text(f"[autoresearch] {attempt.reason}\n{detail}\n", encoding="utf-8")
    return replace(attempt, log=engine.shown(log))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
