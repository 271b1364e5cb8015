"""One iteration, data moving one way: task -> sandbox -> mutate -> limits -> run -> score -> decide -> record."""

from __future__ import annotations

import difflib
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from .engine import Engine
from .errors import EngineError, LandingFailed, StorageUnwritable, describe, naming
from .files import remove_dead_temp_files
from .gpus import gpu_lease
from .interrupts import held_signals, interrupt_reason
from .limits import Verdict, check_sandbox, diff_artifacts, escapes, judge
from .policies import BASE_SEED, Decision
from .process import run_logged
from .results import Record, mean
from .sandbox import Content, Link, copy_tree, hash_contents, read_content, read_contents, scan
from .task import Task
from .workspace import Journal, Snapshot, apply_contents, git_commit, git_head, git_head_contents, protected_hashes

DESCRIPTION_MAX_CHARS = 300
SETTLED = ("keep", "discard", "rejected")  # set only once the workspace is final for the iteration


def run_iteration(engine: Engine, task: Task, description: str = "") -> Record:
    """Run one iteration of task and append its record (whatever happens) to results.jsonl."""
    iteration = engine.storage.reserve_iteration(task.name)
    log_path = engine.storage.logs_dir / task.name / f"{iteration}.log"
    record = Record(task=task.name, iteration=iteration, status="crash", metric=task.metric,
                    direction=task.direction, started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    worker=engine.worker, log=engine.shown(log_path), description=description)
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f"autoresearch-{task.name}-"))
    recordable = True
    try:
        with ExitStack() as held:
            extra_env: dict[str, str] = {}
            if task.gpus:  # the lease is held for the whole iteration: its runs never share a GPU
                try:
                    devices, waited = held.enter_context(gpu_lease(engine.storage.state_dir / "locks", engine.worker, task.gpus))
                except RuntimeError as e:  # too few GPUs: a crash of this iteration, not of the engine
                    record.reason = str(e)
                    return record
                extra_env, record.gpu_wait_s = {"CUDA_VISIBLE_DEVICES": devices}, round(waited, 3)
            log_path = engine.storage.iteration_log(task.name, iteration)  # N.log, unless an earlier one holds it
            record.log = engine.shown(log_path)
            with open(log_path, "wb") as log, naming(log_path):
                if task.workspace_mode:
                    with engine.storage.lock(f"task-{task.name}"):  # the workspace is one shared candidate
                        _workspace_iteration(engine, task, record, scratch, log, extra_env)
                else:
                    _sandbox_iteration(engine, task, record, scratch, log, extra_env)
    except KeyboardInterrupt as e:
        why = interrupt_reason(e)
        if record.status in SETTLED:  # the signal came while a verdict was landing: it stands
            record.reason += f" (then interrupted: {why})"
        else:
            record.status, record.reason = "interrupted", f"interrupted ({why}) before a verdict"
        raise
    except StorageUnwritable:
        recordable = False  # nothing landed (see _land); the session stops with this error
        raise
    except (EngineError, OSError) as e:  # the file system failed a step: this iteration's crash, told in one line
        why = f"internal error: {describe(e, engine.shown)}"
        if record.status in SETTLED and not isinstance(e, LandingFailed):  # after the verdict landed (a state file, the commit): it stands
            record.reason += f" (then {why})"
        else:
            record.status, record.reason = "crash", why
    except Exception as e:
        record.status, record.reason = "crash", f"internal error: {type(e).__name__}: {e}"
        raise
    finally:
        record.duration_s = round(time.perf_counter() - start, 3)
        if recordable:
            with held_signals():  # a second Ctrl-C must not tear the record's line
                engine.storage.results.append(record)  # before the clean-up: other workers may be waiting for its scores
                Journal(engine.storage.state_dir, task.name, iteration).clear()  # the verdict has landed, record and all
        shutil.rmtree(scratch, ignore_errors=True)
    return record


def _recover(engine: Engine, task: Task) -> None:
    """Land what a killed process had decided (called holding the task lock, before the workspace is read):
    a journal without its record is rolled forward and its record appended; one whose record made it only
    needs removing (its contents landed before the record was written)."""
    for path, record, contents, before, snapshot in Journal.leftovers(engine.storage.state_dir, task.name):
        if not any(int(r.get("iteration", 0)) == record["iteration"] for r in engine.storage.results.records(task.name)):
            # apply_contents' staged files beside the targets, from the killed apply
            remove_dead_temp_files(tmp for rel in contents for tmp in (task.rootdir / rel).parent.glob(".*.tmp"))
            # only files still as the killed process found or left them: an edit made since is never lost
            now = {rel: read_content(task.rootdir, rel) for rel in contents}
            edited = sorted(rel for rel in contents if now[rel] not in (contents[rel], before.get(rel)))
            apply_contents(task.rootdir, {rel: c for rel, c in contents.items() if rel not in edited})
            if edited:
                record["reason"] += f" (left as found, edited since the kill: {', '.join(edited[:3])})"
            if snapshot is not None:
                Snapshot(engine.storage.state_dir, task).save(*snapshot)
            elif record["status"] == "keep":
                engine.storage.results.save_head(task.name, hash_contents(engine.artifacts_in(task, task.rootdir)),
                                         record["iteration"])
            record["reason"] += " (landed after its process was killed)"
            engine.storage.results.append(Record(**record))
        path.unlink(missing_ok=True)


def _land(engine: Engine, task: Task, record: Record, contents: dict[str, Content | None],
          snapshot: tuple | None = None) -> None:
    """Write the verdict's contents into the workspace, journaled first (see Journal). Nothing lands unless its
    record can be written; a file that cannot be replaced puts back the ones already replaced."""
    engine.storage.results.check_writable()
    before = {rel: read_content(task.rootdir, rel) for rel in contents}
    try:
        Journal(engine.storage.state_dir, task.name, record.iteration).write(asdict(record), contents, before, snapshot)
        try:
            apply_contents(task.rootdir, contents)
        except OSError:
            replaced = {rel: before[rel] for rel in contents if read_content(task.rootdir, rel) != before[rel]}
            apply_contents(task.rootdir, replaced)
            raise
    except (EngineError, OSError) as e:
        raise LandingFailed(describe(e, engine.shown)) from e
    if snapshot is not None:
        Snapshot(engine.storage.state_dir, task).save(*snapshot)


# ----------------------------------------------------------------------------
# Mutator mode: a command edits a private sandbox; a keep is copied into the workspace


def _sandbox_iteration(engine: Engine, task: Task, record: Record, scratch: Path, log: BinaryIO,
                       extra_env: dict[str, str]) -> None:
    sandbox = scratch / "sandbox"
    with engine.storage.lock(f"task-{task.name}"):  # never copy the workspace while a keep is landing
        _recover(engine, task)
        before = copy_tree(task.rootdir, sandbox, engine.storage_in_tree)
    baseline = read_contents(sandbox, [rel for rel in before if task.is_artifact(rel)])
    record.baseline_hash = hash_contents(baseline)
    if not engine.ensure_baseline(task, record, sandbox, baseline, scratch, extra_env):
        return

    description_file = scratch / "description.txt"
    env = engine.env(task, record, BASE_SEED + record.iteration, sandbox,
                     {**extra_env, "AUTORESEARCH_DESCRIPTION_FILE": str(description_file)})
    log.write(f"[autoresearch] mutator: {task.mutator_command}\n".encode())
    result = run_logged(task.mutator_command, sandbox, env, task.mutator_timeout, log)
    record.mutator_s = round(result.seconds, 3)
    if description_file.is_file():
        lines = description_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        record.description = lines[0].strip()[:DESCRIPTION_MAX_CHARS] if lines else ""
    if (failure := result.failure("mutator", task.mutator_timeout)) is not None:
        record.status, record.reason = "crash", failure
        return

    verdict = check_sandbox(task, sandbox, before, scan(sandbox), baseline, task.rootdir)
    candidate = {**baseline, **{k: v for k, v in verdict.candidate.items() if v is not None}}
    for rel in [k for k, v in verdict.candidate.items() if v is None]:
        candidate.pop(rel, None)
    if not _judge_changes(engine, task, record, verdict, baseline, candidate):
        return
    decision = engine.score_runs(task, record, sandbox, log, record.baseline_scores, extra_env)
    if decision is None:
        return

    with held_signals(), engine.storage.lock(f"task-{task.name}"):  # a keep lands whole or not at all
        _recover(engine, task)  # a worker killed mid-keep: its keep first, then judge against it
        current = engine.artifacts_in(task, task.rootdir)
        if decision.verdict == "keep" and hash_contents(current) != record.baseline_hash:
            decision = _rebase(engine, task, record, decision, verdict, baseline, current)
        record.status, record.reason = decision.verdict, decision.reason
        if decision.verdict == "keep":
            _land(engine, task, record, verdict.candidate)
            engine.storage.results.save_head(task.name, hash_contents(engine.artifacts_in(task, task.rootdir)),
                                     record.iteration)
            _commit(engine, task, record, list(verdict.candidate))


def _rebase(engine: Engine, task: Task, record: Record, decision: Decision, verdict: Verdict,
            baseline: dict[str, Content], current: dict[str, Content]) -> Decision:
    """A keep judged against a baseline that another worker has superseded meanwhile: keep it only if it
    still beats the current best and touches no file the newer keep touched; else discard it as stale.
    The current best's baseline scores are used when on record; while a noise-aware policy is still
    re-scoring a fresh keep, that keep's own scores stand in: they were selected for looking good, so the
    comparison is conservative."""
    current_hash = hash_contents(current)
    current_scores, against = engine.scores_for(task, current_hash), ""
    if not current_scores:
        current_scores, against = engine.storage.results.scores_for(task.name, current_hash), " (its keep's own scores)"
    if not current_scores:
        return Decision("discard", f"stale: baseline moved to {current_hash}, not scored yet", decision.statistic)
    again = task.policy.decide(current_scores, record.scores, task.direction)
    if again.verdict != "keep":
        return Decision("discard", f"stale: does not beat the current best {mean(current_scores):.6g}{against} "
                                   f"({again.reason})", again.statistic)
    conflicts = [rel for rel in verdict.candidate if current.get(rel) != baseline.get(rel)]
    if conflicts:
        return Decision("discard", f"stale: conflicts with a newer keep in {', '.join(conflicts[:3])}",
                        again.statistic)
    return Decision("keep", f"{again.reason}; applied over the newer baseline {current_hash}{against}",
                    again.statistic)


def _judge_changes(engine: Engine, task: Task, record: Record, verdict: Verdict,
                   baseline: dict[str, Content], candidate: dict[str, Content]) -> bool:
    """Fill the change fields; False when the candidate is rejected or unchanged (nothing to run)."""
    record.candidate_hash = hash_contents(candidate)
    record.files_changed, record.lines_changed = verdict.files_changed, verdict.lines_changed
    if verdict.changes:
        _write_diff(engine, task, record, baseline, candidate)
    if verdict.violation is not None:
        record.status, record.reason = "rejected", verdict.violation
        return False
    if not verdict.changes:
        record.status, record.reason = "discard", "no change"
        return False
    return True


def _write_diff(engine: Engine, task: Task, record: Record, old: dict[str, Content], new: dict[str, Content]) -> None:
    """work/logs/<task>/<iteration>.diff: what the candidate changed, kept or not (text files only)."""
    def text(content: Content | None) -> list[str]:
        if content is None:
            return []
        if isinstance(content, Link):
            return [f"-> {content.target}\n"]
        try:
            return content.decode("utf-8").splitlines(keepends=True)
        except UnicodeDecodeError:
            return ["(binary)\n"]
    chunks = []
    for rel in sorted(set(old) | set(new)):
        if old.get(rel) != new.get(rel):
            chunks.extend(difflib.unified_diff(text(old.get(rel)), text(new.get(rel)), f"a/{rel}", f"b/{rel}"))
    path = (engine.rootdir / str(record.log)).with_suffix(".diff")  # beside the log: N.diff
    with naming(path):
        path.write_text("".join(chunks), encoding="utf-8")


def _commit(engine: Engine, task: Task, record: Record, paths: list[str]) -> None:
    if not engine.commit:
        return
    message = (f"autoresearch {task.name} #{record.iteration}: {task.metric} {record.baseline_score:.6g} -> "
               f"{record.score:.6g}\n\n{record.description or '(no description)'}\n")
    with engine.storage.lock("git"):
        record.commit, problem = git_commit(task.rootdir, paths, message)
    if problem:
        record.reason += f" (not committed: {problem})"


# ----------------------------------------------------------------------------
# Workspace mode: the candidate is the edit already in the workspace; the baseline is the last kept
# state (snapshot under work/, else git HEAD, else the workspace as found on the first run)


def _workspace_iteration(engine: Engine, task: Task, record: Record, scratch: Path, log: BinaryIO,
                         extra_env: dict[str, str]) -> None:
    sandbox = scratch / "sandbox"
    _recover(engine, task)
    before = copy_tree(task.rootdir, sandbox, engine.storage_in_tree)
    candidate = read_contents(sandbox, [rel for rel in before if task.is_artifact(rel)])
    protected_now = protected_hashes(task, read_contents(sandbox, [rel for rel in before if task.is_protected(rel)]))
    snapshot = Snapshot(engine.storage.state_dir, task)
    saved, head = snapshot.load(), git_head(task.rootdir)
    if saved is None or (head is not None and saved[2] != head):
        # first run, or the user committed since the last one (a new HEAD is a new baseline): HEAD's state,
        # else the workspace as found; protected files HEAD lacks (untracked data, caches) count as they are now
        if saved is not None:
            record.baseline_from = f"git HEAD {head[:12]}"
        baseline, head_protected = git_head_contents(task) or (candidate, protected_now)
        saved = (baseline, {**protected_now, **head_protected}, head)
        snapshot.save(*saved)
    baseline, protected_then, _ = saved
    record.baseline_hash = hash_contents(baseline)
    if not engine.ensure_baseline(task, record, sandbox, baseline, scratch, extra_env):
        return

    changes = diff_artifacts(baseline, candidate)
    protected = sorted(rel for rel in set(protected_then) | set(protected_now)
                       if protected_then.get(rel) != protected_now.get(rel))
    escaping = [c.path for c in changes if isinstance(link := candidate.get(c.path), Link)
                and escapes(task.rootdir, c.path, link)]
    verdict = judge(task, changes, {c.path: candidate.get(c.path) for c in changes},
                    protected=protected, escaping=escaping, outside=[])
    restore = {c.path: baseline.get(c.path) for c in changes}
    if not _judge_changes(engine, task, record, verdict, baseline, candidate):
        with held_signals():
            _land(engine, task, record, restore)
        return
    # An interruption before this point leaves the agent's edit in the workspace, unjudged: the
    # snapshot still holds the last keep, so the next run judges the same edit again.
    decision = engine.score_runs(task, record, sandbox, log, record.baseline_scores, extra_env)
    with held_signals():
        if decision is not None:
            record.status, record.reason = decision.verdict, decision.reason
        if decision is not None and decision.verdict == "keep":
            _land(engine, task, record, {}, snapshot=(candidate, protected_now, head))  # the workspace holds it
            _commit(engine, task, record, [c.path for c in changes])
            if record.commit:  # our own commit is no new baseline from the user
                snapshot.save(candidate, protected_now, record.commit)
        else:  # a discard, or runs that crashed: the baseline comes back
            _land(engine, task, record, restore)
