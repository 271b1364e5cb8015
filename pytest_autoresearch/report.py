"""Morning report from results.jsonl: progress.png, report.md and, on request, the upstream's results.tsv.

    python -m pytest_autoresearch.report [work/results.jsonl] [--out DIR] [--tsv]

The engine's terminal summary only points here (rendering at every run would cost a matplotlib import).
progress.png has one subplot per task and is exactly
FIG_WIDTH_IN x TASK_HEIGHT_IN*tasks inches at DPI: 1400 x 500*tasks pixels (saved without a tight bbox).
Its x axis is the GPU-hours spent (cumulative_gpu_hours), the same measure as report.md's "Research per GPU-hour".
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import statistics
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from .files import write_atomic
from .noise import task_noise
from .results import STATUSES, read_records
from .signatures import Signer

FIG_WIDTH_IN, TASK_HEIGHT_IN, DPI = 14, 5, 100
# The upstream's results.tsv knows keep/discard/crash; its first row is the baseline, logged as keep.
TSV_STATUS = {"baseline": "keep", "keep": "keep", "discard": "discard", "rejected": "discard", "crash": "crash"}
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
LABEL_CHARS = 45
# runner.gpus is not in the records (a record holds its runner seconds and GPU wait, not the devices): the report
# counts every run as holding one GPU, and says so beside the numbers.
GPUS_PER_RUN = 1
GPU_ASSUMPTION = "one GPU per run assumed: the records do not hold runner.gpus"
DECISIONS = ("keep", "discard")  # the policy's verdicts; a crash, rejection or interruption decided nothing


# ---------------------------------------------------------------------------
# Reading and summarising records
# ---------------------------------------------------------------------------

def load_records(path: Path) -> list[dict]:
    """Every record the engine wrote (signatures.py; all JSON objects when the file has no key beside it); other
    lines are skipped with a warning naming file:line."""
    def warn(number: int, line: str) -> None:
        print(f"report: warning: {path}:{number}: skipped, not a JSON object", file=sys.stderr)

    def forged(number: int, line: str) -> None:
        print(f"report: warning: {path}:{number}: skipped, a record the engine did not write", file=sys.stderr)
    return read_records(path, on_bad_line=warn, signer=Signer(path, create=False), on_forged=forged)


def _number(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _iteration(record: dict) -> int:
    try:
        return int(record.get("iteration") or 0)
    except (TypeError, ValueError):
        return 0


def by_task(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by task (first-seen order), each group in iteration order."""
    tasks = defaultdict(list)
    for r in records:
        tasks[str(r.get("task", "?"))].append(r)
    return {task: sorted(rs, key=_iteration) for task, rs in tasks.items()}


def _minimize(records: list[dict]) -> bool:
    return next((r["direction"] for r in records if r.get("direction")), "minimize") != "maximize"


def _baseline(records: list[dict]) -> float | None:
    for r in records:
        if r.get("status") == "baseline" and _number(r.get("score")) is not None:
            return _number(r["score"])
    recorded = (_number(r.get("baseline_score")) for r in records)
    return next((score for score in recorded if score is not None), None)


def frontier(records: list[dict]) -> list[tuple[dict, float, float | None]]:
    """(record, running best, delta vs the previous kept score) for the baseline and every scored keep."""
    minimize, best, prev, rows = _minimize(records), None, _baseline(records), []
    for r in records:
        score = _number(r.get("score"))
        if r.get("status") not in ("baseline", "keep") or score is None:
            continue
        best = score if best is None else (min if minimize else max)(best, score)
        rows.append((r, best, None if r.get("status") == "baseline" or prev is None else score - prev))
        prev = score
    return rows


def noise(records: list[dict]) -> tuple[float, str] | None:
    """The runner's noise as the noise-aware policy pools it (noise.task_noise): (std, what it rests on)."""
    pooled = task_noise(records)
    if not pooled.df:
        return None
    return math.sqrt(pooled.variance), f"pooled over {pooled.groups} groups of repeated runs, df {pooled.df}"


def savings(records: list[dict]) -> str:
    """Runs the statistics saved: candidates settled before their policy's most runs, and runs stopped early
    (with the runner time a full run would have taken beyond the point each was stopped at)."""
    settled_early = runs = 0
    stopped, seconds_saved = 0, 0.0
    for r in records:
        statistic = r.get("statistic") or {}
        most, used = _number(statistic.get("max_runs")), len(r.get("scores") or [])
        if most and used:
            runs += int(most)
            settled_early += int(most) - used
        evidence = statistic.get("early_stop")
        if isinstance(evidence, dict) and (progress := _number(evidence.get("progress"))):
            stopped += 1
            seconds_saved += (_number(evidence.get("run_seconds")) or 0.0) * (100.0 / progress - 1.0)
    if not runs and not stopped:
        return "n/a"
    text = f"{settled_early} of {runs} candidate runs (settled before the most the policy allows)" if runs else ""
    if stopped:
        text += ("; " if text else "") + f"{stopped} runs stopped early, ~{_duration(seconds_saved)} of runner time"
    return text


def _gpu_seconds(record: dict) -> float:
    return (_number(record.get("runner_s")) or 0.0) * GPUS_PER_RUN


def cumulative_gpu_hours(records: list[dict]) -> list[float]:
    """GPU-hours spent up to the end of each record, in record order (progress.png's x axis)."""
    return list(itertools.accumulate(_gpu_seconds(r) / 3600 for r in records))


def _early_stop(record: dict) -> dict | None:
    evidence = (record.get("statistic") or {}).get("early_stop")
    return evidence if isinstance(evidence, dict) else None


def _screen(record: dict) -> dict | None:
    evidence = (record.get("statistic") or {}).get("screen")
    return evidence if isinstance(evidence, dict) else None


def _runs(record: dict) -> int:
    """Runs that scored, were stopped early or screened (a stopped run has no score; a crashed one is not
    counted)."""
    return len(record.get("scores") or []) + (_early_stop(record) is not None) + (_screen(record) is not None)


def _per_hour(value: float, hours: float, digits: int) -> str:
    return f"{value / hours:.{digits}f} per GPU-hour" if hours else "n/a per GPU-hour"


def research_markdown(records: list[dict]) -> list[str]:
    """The "Research per GPU-hour" block: what the GPU time bought (decisions, keeps, gain) and what early
    stopping saved of it."""
    minimize, base, rows = _minimize(records), _baseline(records), frontier(records)
    hours = sum(map(_gpu_seconds, records)) / 3600
    decided = [r for r in records if r.get("status") in DECISIONS]
    keeps = sum(r.get("status") == "keep" for r in records)
    if base is not None and rows:
        gain = (base - rows[-1][1]) if minimize else (rows[-1][1] - base)
        best = f"{rows[-1][1]:.6f}; gain over the first baseline {gain:.6f}, {_per_hour(gain, hours, 6)}"
    else:
        best = "n/a"
    runs_per_decision = [_runs(r) for r in decided]
    per_decision = (f"median {statistics.median(runs_per_decision):g}, mean {statistics.mean(runs_per_decision):.2f} "
                    "(a stopped or screen run counts)") if runs_per_decision else "n/a"
    return [
        "### Research per GPU-hour", "", GPU_ASSUMPTION, "",
        "| | |", "|---|---|",
        f"| GPU-hours | {hours:.3f} (runner time of every record, baseline runs included) |",
        f"| experiments | {_count(len(decided), 'decision')} (keep or discard), {_per_hour(len(decided), hours, 2)} |",
        f"| keeps | {keeps}, {_per_hour(keeps, hours, 2)} |",
        f"| best | {best} |",
        f"| runs per decision | {per_decision} |",
        f"| stopped early | {stopped_early(records)} |",
        f"| screened out | {screened_out(decided)} |",
    ]


def screened_out(decided: list[dict]) -> str:
    """The decisions policy.screen settled alone, without a full run."""
    screened = [e for r in decided if (e := _screen(r)) is not None]
    if not screened:
        return "n/a (no policy.screen)"
    out = sum(not e.get("promoted") for e in screened)
    return f"{out} of {len(screened)} screened candidates ({out / len(screened):.1%}), without a full run"


def stopped_early(records: list[dict]) -> str:
    """The share of runs stopped early and the GPU time they did not spend. A stopped run's full length is never
    known, so it is estimated as the task's median full run (over the records whose runs all ran to a score, each
    standing for its runs by their mean) and the stopped run's seconds are taken from that."""
    runs = sum(map(_runs, records))
    if not runs:
        return "n/a"
    stopped = [e for r in records if (e := _early_stop(r)) is not None]
    text = f"{len(stopped)} of {runs} runs ({len(stopped) / runs:.1%})"
    if not stopped:
        return text
    full = [_gpu_seconds(r) / len(r["scores"]) for r in records  # a screen run would blur a full run's length
            if r.get("scores") and _early_stop(r) is None and _screen(r) is None and _gpu_seconds(r)]
    if not full:
        return text + "; no full run to estimate the GPU time they did not spend"
    median = statistics.median(full)
    # a stopped run whose seconds were not recorded is counted as saving nothing rather than a whole run
    ran = [seconds * GPUS_PER_RUN for e in stopped if (seconds := _number(e.get("run_seconds"))) is not None]
    saved = sum(max(0.0, median - seconds) for seconds in ran)
    return (text + f"; ~{_duration(saved)} of GPU time not spent (estimate: the task's median full run, "
                   f"{_duration(median)}, less each stopped run's seconds)")


def _wall_span(records: list[dict]) -> float | None:
    spans = []
    for r in records:
        try:
            start = datetime.fromisoformat(str(r["started_at"]))
        except (KeyError, ValueError):
            continue
        spans.append((start, start + timedelta(seconds=_number(r.get("duration_s")) or 0.0)))
    if not spans:
        return None
    try:
        return (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()
    except TypeError:  # naive and aware timestamps mixed
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _one_line(text: object) -> str:
    return " ".join(str(text or "").split())


# ---------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------

def task_markdown(task: str, records: list[dict]) -> str:
    minimize, base, rows = _minimize(records), _baseline(records), frontier(records)
    metric = next((r["metric"] for r in records if r.get("metric")), "score")
    best = rows[-1][1] if rows else None
    counts = Counter(str(r.get("status", "?")) for r in records)
    count_text = ", ".join(f"{s} {counts[s]}" for s in (*STATUSES, *sorted(set(counts) - set(STATUSES))))
    if base is not None and best is not None:
        gain = (base - best) if minimize else (best - base)
        improvement = f"{gain:.6f}" + (f" ({gain / abs(base):.2%})" if base else "")
    else:
        improvement = "n/a"
    sigma = noise(records)
    # mutator + runner time counts each run once (an iteration's duration_s also holds the baseline
    # scoring it triggered, which has its own record)
    busy = sum((_number(r.get("mutator_s")) or 0.0) + (_number(r.get("runner_s")) or 0.0) for r in records)
    lines = [
        f"## {task}", "",
        f"metric `{metric}`, {'lower' if minimize else 'higher'} is better", "",
        "| | |", "|---|---|",
        f"| baseline | {'n/a' if base is None else f'{base:.6f}'} |",
        f"| best | {'n/a' if best is None else f'{best:.6f}'} |",
        f"| total improvement | {improvement} |",
        f"| iterations | {len(records)}: {count_text} |",
        f"| crashes | {counts['crash']} |",
        f"| time | {_duration(busy)} in mutators and runners; "
        f"{_duration(_wall_span(records))} wall (first start to last end) |",
        f"| noise (std) | {'n/a' if sigma is None else f'{sigma[0]:.6f} ({sigma[1]})'} |",
        f"| runs saved | {savings(records)} |",
        "", *research_markdown(records),
        "", "### Kept changes", "",
        "| iteration | score | delta | description |", "|---:|---:|---:|---|",
    ]
    for r, _, delta in rows:
        desc = _one_line(r.get("description")) or r.get("status", "")
        delta_text = "" if delta is None else f"{delta:+.6f}"
        lines.append(f"| {_iteration(r)} | {_number(r['score']):.6f} | {delta_text} | {desc.replace('|', '/')} |")
    crashes = [r for r in records if r.get("status") == "crash"]
    reasons = Counter(_one_line(r.get("reason"))[:120] or "(no reason)" for r in crashes)
    if reasons:
        lines += ["", "### Top crash reasons", "", "| count | reason |", "|---:|---|"]
        lines += [f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons.most_common(5)]
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def report_markdown(tasks: dict[str, list[dict]], source: Path) -> str:
    total = sum(map(len, tasks.values()))
    head = (f"# autoresearch report\n\n`{source}`: {_count(total, 'record')}, {_count(len(tasks), 'task')}. "
            f"Plot: progress.png.\n")
    return head + "".join("\n" + task_markdown(task, records) for task, records in tasks.items())


# ---------------------------------------------------------------------------
# progress.png
# ---------------------------------------------------------------------------

def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 3] + "..."


def _plot_task(ax, task: str, records: list[dict]) -> None:
    minimize, base, rows = _minimize(records), _baseline(records), frontier(records)
    # each record sits where its runs ended on the GPU-hours axis; keyed by identity, as records are plain dicts
    x_of = {id(r): hours for r, hours in zip(records, cumulative_gpu_hours(records))}
    counts = Counter(r.get("status") for r in records)
    # Zoom on the region between best and baseline, as the upstream's plot does; far-off scores sit at the edge.
    values = [s for s in (_number(r.get("score")) for r in records) if s is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if base is not None and rows:
        span = abs(base - rows[-1][1]) or abs(base) * 0.01 or 1.0
        lo, hi = max(lo, min(base, rows[-1][1]) - 3 * span), min(hi, max(base, rows[-1][1]) + 3 * span)
    pad = (hi - lo) or 1.0
    lo, hi = lo - 0.1 * pad, hi + 0.25 * pad  # headroom for the rotated labels
    # Runs that were not kept are faded; those without a score (crash, rejected, ...) sit on the bottom edge.
    for status, color, marker in (("discard", "#bbbbbb", "o"), ("rejected", "#d98c8c", "o"),
                                  ("interrupted", "#8caad9", "o"), ("crash", "#e74c3c", "x")):
        runs = [(x_of[id(r)], _number(r.get("score"))) for r in records if r.get("status") == status]
        pts = [(x, min(max(y, lo), hi)) for x, y in runs if y is not None]
        edge = [x for x, y in runs if y is None]
        label = f"{status} ({len(runs)})"
        if pts:
            ax.scatter(*zip(*pts), c=color, marker=marker, s=16, alpha=0.6, zorder=2, label=label)
            label = None
        if edge:
            ax.scatter(edge, [0.03] * len(edge), transform=ax.get_xaxis_transform(), c=color, marker=marker,
                       s=30 if marker == "x" else 16, alpha=0.8, zorder=3, label=label)
    if rows:
        xs = [x_of[id(r)] for r, _, _ in rows]
        ax.scatter(xs, [_number(r["score"]) for r, _, _ in rows], c="#2ecc71", s=50, zorder=4,
                   edgecolors="black", linewidths=0.5, label=f"kept ({counts['keep']})")
        ax.step(xs + [x_of[id(records[-1])]], [b for _, b, _ in rows] + [rows[-1][1]], where="post", color="#27ae60",
                linewidth=2, alpha=0.7, zorder=3, label="running best")
        for r, _, _ in rows:
            label = _short(_one_line(r.get("description")) or str(r.get("status")))
            note = ax.annotate(label, (x_of[id(r)], _number(r["score"])), textcoords="offset points",
                               xytext=(6, 6), fontsize=8, color="#1a7a3a", rotation=30, ha="left", va="bottom")
            note.set_in_layout(False)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"GPU-hours (runner time; {GPU_ASSUMPTION})")
    metric = next((r["metric"] for r in records if r.get("metric")), "score")
    ax.set_ylabel(f"{metric} ({'lower' if minimize else 'higher'} is better)")
    ax.set_title(f"{task}: {len(records)} iterations, {counts['keep']} kept, {counts['crash']} crashed")
    ax.legend(loc="upper right" if minimize else "lower right", fontsize=8)
    ax.grid(True, alpha=0.2)


def progress_png(tasks: dict[str, list[dict]]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH_IN, TASK_HEIGHT_IN * max(1, len(tasks))), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(tasks)), 1, squeeze=False)[:, 0]
    for ax, (task, records) in zip(axes, tasks.items()):
        _plot_task(ax, task, records)
    if not tasks:
        axes[0].text(0.5, 0.5, "no records yet", ha="center", va="center", transform=axes[0].transAxes)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


# ---------------------------------------------------------------------------
# results.tsv (the upstream's format) and the entry points
# ---------------------------------------------------------------------------

def results_tsv(tasks: dict[str, list[dict]]) -> str:
    """Upstream columns; interrupted runs are left out; with several tasks each description starts `[task] `."""
    rows = [TSV_HEADER]
    for task, records in tasks.items():
        for r in records:
            status = TSV_STATUS.get(r.get("status"))
            if status is None:
                continue
            score = None if status == "crash" else _number(r.get("score"))
            vram = None if status == "crash" else _number((r.get("metrics") or {}).get("peak_vram_mb"))
            desc = _one_line(r.get("description")) or _one_line(r.get("reason")) or str(r.get("status"))
            desc = f"[{task}] {desc}" if len(tasks) > 1 else desc
            commit = str(r.get("commit") or "")[:7] or "-"
            rows.append(f"{commit}\t{score or 0.0:.6f}\t{(vram or 0.0) / 1024:.1f}\t{status}\t{desc}")
    return "\n".join(rows) + "\n"


def write_report(results_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 tsv: bool = False) -> list[Path]:
    """Write progress.png, report.md (and results.tsv) into out_dir (default: beside results); return the paths."""
    results_path = Path(results_path)
    out = Path(out_dir) if out_dir is not None else results_path.parent
    out.mkdir(parents=True, exist_ok=True)
    tasks = by_task(load_records(results_path))
    files = {out / "progress.png": progress_png(tasks),
             out / "report.md": report_markdown(tasks, results_path).encode()}
    if tsv:
        files[out / "results.tsv"] = results_tsv(tasks).encode()
    for path, data in files.items():
        write_atomic(path, data)
    return list(files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_autoresearch.report", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="?", default="work/results.jsonl", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: the results file's folder)")
    p.add_argument("--tsv", action="store_true", help="also write results.tsv in the upstream's format")
    args = p.parse_args(argv)
    if not args.results.is_file():
        print(f"report: error: {args.results}: no such file", file=sys.stderr)
        return 2
    for path in write_report(args.results, args.out, args.tsv):
        print(f"report: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
