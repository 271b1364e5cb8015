"""Steps 5 and 6, decide and land: the policy's verdict on an attempt, written into the workspace (journaled, so
that it survives kill -9), committed, and recorded. The one place an iteration's record is built. It runs in the
process that made the attempt, or, under xdist, on the controller, fed by the workers' reports (session.py); a
multi-host executor would call the same `Landing.land`."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from .attempt import Attempt
from .baseline import append_baseline, recorded_scores
from .engine import Engine
from .errors import EngineError, LandingFailed, describe
from .files import remove_dead_temp_files
from .guard import record_landing
from .interrupts import held_signals
from .noise import Noise
from .policies import Decision, Policy
from .results import Record, mean
from .sandbox import Content, hash_contents, read_content
from .task import Task
from .workspace import Journal, Snapshot, apply_contents, git_commit


class Landing:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def land(self, task: Task, attempt: Attempt) -> Record:
        """Decide on the attempt, land the verdict and append its record (after the record of the baseline it
        scored, when that is left to the landing and not on record yet), with SIGINT/SIGTERM held. Only a results
        store that cannot be written raises (StorageUnwritable): then nothing was applied. With `mutator:
        workspace` the task lock is held since the attempt began: by the caller, or under xdist by the worker
        that made the attempt, until this record is appended (handover.py)."""
        start = time.perf_counter()
        with held_signals():
            if attempt.new_baseline is not None:
                append_baseline(self.engine, task, Record(**attempt.new_baseline))
            decision = None if attempt.status else settle(task.policy, attempt.baseline_scores, attempt.scores,
                                                          task.direction, attempt.noise, attempt.early_stop,
                                                          attempt.screen)
            if attempt.workspace:
                record = self._in_workspace(task, attempt, decision)
            elif decision is not None and decision.verdict == "keep":
                with self.engine.storage.lock(f"task-{task.name}"):  # a keep lands whole or not at all
                    record = self._keep(task, attempt, decision)
            else:
                record = _record(task, attempt, decision)
            record = replace(record, duration_s=round(attempt.duration_s + time.perf_counter() - start, 3))
            self.engine.storage.results.append(record)  # before the clean-up: other workers may wait for its scores
            Journal(self.engine.storage.state_dir, task.name, record.iteration).clear()  # landed, record and all
            record_landing(self.engine, task, attempt, record)  # the protected files' hashes it began with
        return record

    def _keep(self, task: Task, attempt: Attempt, decision: Decision) -> Record:
        """Mutator mode: the candidate's files land in the workspace, judged again first when another keep
        landed since the attempt's baseline was copied."""
        engine = self.engine
        self.recover(task)  # a process killed mid-keep: its keep first, then judge against it
        current = engine.artifacts_in(task, task.rootdir)
        if hash_contents(current) != attempt.baseline_hash:
            rebased = rebase(engine, task, attempt.scores, decision, attempt.changes, attempt.before, current)
            # the record keeps the statistic against its own baseline, the one its baseline_scores name
            decision = replace(rebased, statistic=decision.statistic)
        record = _record(task, attempt, decision)
        if decision.verdict != "keep":
            return record
        try:
            self._write(task, record, attempt.changes)
        except LandingFailed as e:
            return replace(record, status="crash", reason=f"internal error: {e}")
        try:
            engine.storage.results.save_head(task.name, hash_contents(engine.artifacts_in(task, task.rootdir)),
                                             record.iteration)
            return self._commit(task, record, list(attempt.changes))
        except (EngineError, OSError) as e:  # after the verdict landed (a state file, the commit): it stands
            return replace(record, reason=record.reason + f" (then internal error: {describe(e, engine.shown)})")

    def _in_workspace(self, task: Task, attempt: Attempt, decision: Decision | None) -> Record:
        """Workspace mode: a keep is already in the workspace and becomes the stored baseline; any other verdict on
        a candidate that was read puts the baseline back. An interruption leaves the edit, unjudged: the
        snapshot still holds the last keep, so the next run judges the same edit again."""
        record = _record(task, attempt, decision)
        kept = decision is not None and decision.verdict == "keep"
        if attempt.candidate_hash is None or attempt.status == "interrupted":
            return record
        try:
            self._write(task, record, {} if kept else attempt.before, attempt.snapshot if kept else None)
        except LandingFailed as e:
            return replace(record, status="crash", reason=f"internal error: {e}")
        if not kept:
            return record
        try:
            record = self._commit(task, record, list(attempt.changes))
            if record.commit and attempt.snapshot is not None:  # our own commit is no new baseline from the user
                files, protected, _ = attempt.snapshot
                Snapshot(self.engine.storage.state_dir, task).save(files, protected, record.commit)
            return record
        except (EngineError, OSError) as e:
            return replace(record, reason=record.reason + f" (then internal error: {describe(e, self.engine.shown)})")

    def _write(self, task: Task, record: Record, contents: dict[str, Content | None],
               snapshot: tuple | None = None) -> None:
        """Write the verdict's contents into the workspace, journaled first (see Journal). Nothing lands unless its
        record can be written; a file that cannot be replaced puts back the ones already replaced."""
        engine = self.engine
        engine.storage.results.check_writable()
        before = {rel: read_content(task.rootdir, rel) for rel in contents}
        try:
            Journal(engine.storage.state_dir, task.name, record.iteration).write(asdict(record), contents, before,
                                                                                 snapshot)
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

    def _commit(self, task: Task, record: Record, paths: list[str]) -> Record:
        if not self.engine.commit:
            return record
        message = (f"autoresearch {task.name} #{record.iteration}: {task.metric} {record.baseline_score:.6g} -> "
                   f"{record.score:.6g}\n\n{record.description or '(no description)'}\n")
        with self.engine.storage.lock("git"):
            commit, problem = git_commit(task.rootdir, paths, message)
        return replace(record, commit=commit, reason=record.reason + (f" (not committed: {problem})" if problem else ""))

    def recover(self, task: Task) -> None:
        """Land what a killed process had decided (called holding the task lock, before the workspace is read):
        a journal without its record is rolled forward and its record appended; one whose record made it only
        needs removing (its contents landed before the record was written)."""
        engine = self.engine
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


def rebase(engine: Engine, task: Task, scores: Sequence[float], decision: Decision,
           changes: Mapping[str, Content | None], before: Mapping[str, Content | None],
           current: Mapping[str, Content]) -> Decision:
    """A keep judged against a baseline that another keep has superseded meanwhile: keep it only if it still
    beats the current best and touches no file the newer keep touched; else discard it as stale. The current
    best's baseline scores are used when on record; while a noise-aware policy is still re-scoring a fresh keep,
    that keep's own scores stand in: they were selected for looking good, so the comparison is conservative."""
    current_hash = hash_contents(current)
    current_scores, against = recorded_scores(engine, task, current_hash), ""
    if not current_scores:
        current_scores, against = engine.storage.results.scores_for(task.name, current_hash), " (its keep's own scores)"
    if not current_scores:
        return Decision("discard", f"stale: baseline moved to {current_hash}, not scored yet", decision.statistic)
    again = task.policy.decide(current_scores, scores, task.direction)
    if again.verdict != "keep":
        return Decision("discard", f"stale: does not beat the current best {mean(current_scores):.6g}{against} "
                                   f"({again.reason})", again.statistic)
    conflicts = [rel for rel in changes if current.get(rel) != before.get(rel)]
    if conflicts:
        return Decision("discard", f"stale: conflicts with a newer keep in {', '.join(conflicts[:3])}",
                        again.statistic)
    return Decision("keep", f"{again.reason}; applied over the newer baseline {current_hash}{against}",
                    again.statistic)


def settle(policy: Policy, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
           noise: Mapping[str, float] | None = None, early_stop: Mapping[str, Any] | None = None,
           screen: Mapping[str, Any] | None = None) -> Decision:
    """The decision on every run a candidate made, with the noise they were judged with: a policy that still asks
    for more after them is a discard (it must settle within its runs; never keep on a maybe), and so is a
    candidate whose run policy.early_stop stopped, or that policy.screen did not promote. The screen's evidence
    goes into the statistic of a promoted candidate's decision too."""
    if screen is not None and not screen["promoted"]:
        z = "no score" if screen["z"] is None else f"z={screen['z']:.2f} < {screen['promote_z']:g}"
        return Decision("discard", f"screened out at {screen['seconds']:g}s: {screen['candidate']:.6g} against the "
                                   f"baseline's {screen['baseline']:.6g} ({z})",
                        {"test": "screen", "screen": dict(screen), "max_runs": policy.max_runs})
    decision = _settle_runs(policy, baseline_scores, candidate_scores, direction, noise, early_stop)
    if screen is None:
        return decision
    return replace(decision, statistic={**(decision.statistic or {}), "screen": dict(screen)})


def _settle_runs(policy: Policy, baseline_scores: Sequence[float], candidate_scores: Sequence[float], direction: str,
                 noise: Mapping[str, float] | None, early_stop: Mapping[str, Any] | None) -> Decision:
    if early_stop is not None:
        e = early_stop
        return Decision("discard", f"stopped early at {e['progress']:.0f}% of run {len(candidate_scores) + 1}: "
                                   f"{e['value']:.4g} against the baseline runs' {e['baseline_mean']:.4g} "
                                   f"(worse by {e['worse_by']:.3g}, band {e['band']:.3g})",
                        {"test": "early_stop", "early_stop": dict(e), "max_runs": policy.max_runs})
    pooled = Noise(noise["variance"], int(noise["df"]), int(noise["groups"])) if noise else None
    decision = policy.decide(baseline_scores, candidate_scores, direction, pooled)
    if decision.verdict == "continue":
        return Decision("discard", f"undecided after {len(candidate_scores)} runs: {decision.reason}", decision.statistic)
    return decision


def _record(task: Task, attempt: Attempt, decision: Decision | None) -> Record:
    """The iteration's record: the attempt's measurements and, when the policy judged it, the decision."""
    status, reason, statistic = ((attempt.status or "crash", attempt.reason, None) if decision is None
                                 else (decision.verdict, decision.reason, decision.statistic))
    # records are strict JSON: a NaN or infinite score (the policy's discard; the reason says what it was) is null
    scores = [score if math.isfinite(score) else None for score in attempt.scores]
    return Record(task=attempt.task, iteration=attempt.iteration, status=status, metric=task.metric,
                  direction=task.direction,
                  started_at=attempt.started_at, worker=attempt.worker, score=None if None in scores else mean(scores),
                  scores=scores, baseline_score=mean(list(attempt.baseline_scores)),
                  baseline_scores=list(attempt.baseline_scores), baseline_hash=attempt.baseline_hash,
                  candidate_hash=attempt.candidate_hash, files_changed=attempt.files_changed,
                  lines_changed=attempt.lines_changed, reason=reason, description=attempt.description,
                  log=attempt.log, mutator_s=attempt.mutator_s, runner_s=attempt.runner_s, metrics=dict(attempt.metrics),
                  statistic=statistic, gpu_wait_s=attempt.gpu_wait_s, baseline_from=attempt.baseline_from,
                  node=attempt.node)
