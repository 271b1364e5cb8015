"""One iteration as a pipeline of steps that return values, in one direction:

    sandbox -> candidate -> change set -> scores        _attempt(): candidate.py, limits.py, baseline.py, run.py
            -> decision -> apply + record                Landing.land(): landing.py

A step returns its result or raises a domain error (errors.Ended: Crashed, Rejected, Unchanged, Interrupted)
that ends the attempt early; the attempt carries what the steps measured so far. Nothing lands before the
decision, so the two halves can run in different processes (xdist: the worker attempts, the controller
lands); run_iteration runs both here."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from .attempt import Attempt
from .baseline import baseline_curves, baseline_scores, baseline_screen, run_setup, save_screen
from .candidate import ChangeSet, Made, MutatorSource, Start, WorkspaceSource
from .engine import Engine
from .errors import Crashed, Ended, EngineError, Interrupted, StorageUnwritable, describe, naming
from .gpus import gpu_lease
from .guard import Checked
from .interrupts import interrupt_reason
from .landing import Landing
from .limits import enforce
from .noise import Noise, task_noise
from .results import Record, mean
from .run import Runs, score_candidate
from .sandbox import hash_contents
from .scratch import new_scratch
from .task import Task


def run_iteration(engine: Engine, task: Task, description: str = "", checked: Checked | None = None) -> Record:
    """Run one iteration of task here, attempt and landing, and return its record (appended whatever happens).
    `checked`: the workspace's protected files as checked before it began (guard.py), which its copies must hold."""
    with ExitStack() as held:
        if task.workspace_mode:  # the workspace is the one candidate: held from its reading to its verdict
            held.enter_context(engine.storage.lock(f"task-{task.name}"))
        scratch = held.enter_context(_scratch(task))
        attempt, pending = _attempt(engine, task, scratch, description, record_baseline=True, checked=checked)
        record = Landing(engine).land(task, attempt)
    if pending is not None:  # a Ctrl-C, or an unexpected error: recorded, now raised
        raise pending
    return record


def attempt_iteration(engine: Engine, task: Task, description: str = "", checked: Checked | None = None) -> Attempt:
    """Steps 1 to 4 of an iteration, for another process to land (the xdist controller), with the record of a
    baseline it scored anew. An attempt that ends in a Ctrl-C or an unexpected error is landed here, and that
    exception raised: this process will send no report to carry it. With `mutator: workspace` the caller holds
    the task lock, until the attempt's record is appended."""
    with _scratch(task) as scratch:
        attempt, pending = _attempt(engine, task, scratch, description, record_baseline=False, checked=checked)
    if pending is not None:
        Landing(engine).land(task, attempt)
        raise pending
    return attempt


def attempt_offsite(engine: Engine, task: Task, iteration: int, description: str = "") -> Attempt:
    """Steps 1 to 4 as iteration `iteration` (numbered by the session), in a process whose storage is a private
    copy (an executor's node, offsite.py): nothing is landed here, whatever happens; the attempt, even an
    interrupted or crashed one, goes back to the session, which records it."""
    with _scratch(task) as scratch:
        attempt, _ = _attempt(engine, task, scratch, description, record_baseline=False, iteration=iteration)
    return attempt


@contextmanager
def _scratch(task: Task) -> Iterator[Path]:
    """A private folder for the iteration's sandbox copies, removed once the iteration is done with them."""
    path = new_scratch(task.name)  # removed below, or by its keeper if this process is killed
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _export_history(engine: Engine, scratch: Path) -> Path:
    """The commands' copy of the history (AUTORESEARCH_RESULTS), read-only: the live file is the engine's."""
    history = scratch / "history.jsonl"
    history.unlink(missing_ok=True)
    engine.storage.results.export(history)
    return history


def _attempt(engine: Engine, task: Task, scratch: Path, description: str,
             record_baseline: bool, iteration: int | None = None,
             checked: Checked | None = None) -> tuple[Attempt, BaseException | None]:
    """Steps 1 to 4 of an iteration of task, in `scratch`; changes nothing in the workspace. Returns the attempt,
    and an exception to raise once the attempt is recorded (KeyboardInterrupt, or an error that is no OS or
    engine error). `description`: the session's AUTORESEARCH_DESCRIPTION, unless the mutator writes one.
    record_baseline: append a baseline scored anew at once, else leave it to the attempt's landing. checked: the
    protected files each copy of the workspace must hold, and what the landing records (None: nothing checked)."""
    iteration = engine.storage.reserve_iteration(task.name) if iteration is None else iteration
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    log_path = engine.storage.logs_dir / task.name / f"{iteration}.log"
    source = (WorkspaceSource if task.workspace_mode else MutatorSource)(engine, task, scratch, checked)
    start: Start | None = None
    scores: list[float] = []
    made: Made | None = None
    change_set: ChangeSet | None = None
    candidate_hash: str | None = None
    runs: Runs | None = None
    noise: Noise | None = None
    ending: Ended | None = None
    pending: BaseException | None = None
    gpu_wait_s = 0.0
    new_baseline: Record | None = None
    screen_baseline: float | None = None
    screen_s = 0.0  # the baseline's screen run, when this attempt paid for it
    try:
        with ExitStack() as held:
            extra_env: dict[str, str] = {}
            if task.gpus:  # the lease is held until the last run: runs never share a GPU
                try:
                    devices, waited = held.enter_context(gpu_lease(engine.storage.state_dir / "locks", engine.worker,
                                                                   task.gpus))
                except RuntimeError as e:  # too few GPUs: a crash of this iteration, not of the engine
                    raise Crashed(str(e)) from None
                extra_env, gpu_wait_s = {"CUDA_VISIBLE_DEVICES": devices}, round(waited, 3)
            log_path = engine.storage.iteration_log(task.name, iteration)  # N.log, unless an earlier one holds it
            with open(log_path, "wb") as log, naming(log_path):
                start = source.start()
                extra_env = {**extra_env, "AUTORESEARCH_RESULTS": str(_export_history(engine, scratch))}
                scores, new_baseline = baseline_scores(engine, task, start.baseline_hash, start.sandbox,
                                                       start.baseline, scratch, extra_env, started_at,
                                                       record_here=record_baseline)
                _export_history(engine, scratch)  # again: with the baseline record, had it just been scored
                if task.policy.screen is not None:  # the baseline's score at the screen's budget: paid once
                    screen_baseline, screen_s = baseline_screen(engine, task, start.baseline_hash, start.sandbox,
                                                                start.baseline, scratch, extra_env)
                made = source.make(start, iteration, mean(scores), log, extra_env)
                if made.failure is not None:
                    raise Crashed(made.failure)
                change_set = source.change_set(start)
                candidate_hash = hash_contents(change_set.candidate)
                if change_set.verdict.changes:
                    engine.storage.write_diff(log_path, start.baseline, change_set.candidate)
                enforce(change_set.verdict)
                if task.policy.pool_noise:  # only then is the whole history worth reading
                    noise = task_noise([*engine.storage.results.records(task.name), {"scores": scores}])
                curves = baseline_curves(engine, task, start.baseline_hash) if task.policy.early_stop else []
                runnable = source.runnable(start, change_set)
                runs = score_candidate(engine, task, iteration, scores, runnable, log, extra_env, noise, curves,
                                       screen_baseline)
                if runs.screen is not None and runs.screen["gain"] is not None:  # the next baseline's, if kept
                    save_screen(engine, task, candidate_hash, run_setup(task, runnable), runs.screen["candidate"])
    except Ended as e:
        ending = e
    except KeyboardInterrupt as e:
        ending, pending = Interrupted(f"interrupted ({interrupt_reason(e)}) before a verdict"), e
    except StorageUnwritable:  # a baseline record could not be appended: no record can be; the session stops
        raise
    except (EngineError, OSError) as e:  # the file system failed a step: this iteration's crash, told in one line
        ending = Crashed(f"internal error: {describe(e, engine.shown)}")
    except Exception as e:
        ending, pending = Crashed(f"internal error: {type(e).__name__}: {e}"), e

    runs = runs or (ending.runs if ending is not None and ending.runs is not None else Runs())
    verdict = change_set.verdict if change_set is not None else None
    return Attempt(
        task_file=str(task.path), task=task.name, iteration=iteration, started_at=started_at, worker=engine.worker,
        log=ending.log if ending is not None and ending.log else engine.shown(log_path),
        description=made.description if made is not None and made.description is not None else description,
        status=ending.status if ending is not None else None, reason=ending.reason if ending is not None else "",
        baseline_hash=start.baseline_hash if start is not None else None, baseline_scores=tuple(scores),
        baseline_from=start.baseline_from if start is not None else None,
        new_baseline=asdict(new_baseline) if new_baseline is not None else None, candidate_hash=candidate_hash,
        files_changed=verdict.files_changed if verdict else 0, lines_changed=verdict.lines_changed if verdict else 0,
        changes=dict(verdict.candidate) if verdict else {},
        before={c.path: start.baseline.get(c.path) for c in verdict.changes} if verdict and start else {},
        scores=runs.scores, metrics=dict(runs.metrics), mutator_s=made.mutator_s if made is not None else 0.0,
        runner_s=round(runs.runner_s + screen_s, 3), gpu_wait_s=gpu_wait_s, duration_s=round(time.perf_counter() - clock, 3),
        noise=asdict(noise) if noise is not None else None, early_stop=runs.early_stop, screen=runs.screen,
        workspace=task.workspace_mode, snapshot=change_set.snapshot if change_set is not None else None,
        protected=checked.hashes if checked is not None else None, head=checked.head if checked is not None else None
    ), pending
