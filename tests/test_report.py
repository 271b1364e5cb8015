"""The morning report: progress.png, report.md and results.tsv from a results.jsonl with every status."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_helpers import REPO_ROOT
from pytest_autoresearch import report

REPO = REPO_ROOT


def _record(task: str, iteration: int, status: str, score: float | None, **extra) -> dict:
    minutes = iteration * 10  # one iteration every 10 minutes, each busy for 5
    record = {"task": task, "iteration": iteration, "status": status, "score": score,
              "started_at": f"2025-01-01T{minutes // 60:02d}:{minutes % 60:02d}:00+00:00", "duration_s": 300.0, "runner_s": 290.0, "mutator_s": 10.0,
              "description": "", "reason": "", "metrics": {}, "commit": None}
    return record | extra


BPB = [  # minimize; baseline measured three times: std 0.002
    _record("train-bpb", 0, "baseline", 1.0, metric="val_bpb", direction="minimize", description="baseline",
            baseline_scores=[1.0, 1.002, 0.998], commit="0123456789abcdef", metrics={"peak_vram_mb": 45056.0}),
    _record("train-bpb", 1, "keep", 0.99, description="MATRIX_LR 0.04 → 0.05", commit="abcdef0123456789",
            metrics={"peak_vram_mb": 46080.0}),
    _record("train-bpb", 2, "discard", 0.995, description="DEPTH 8 → 9", commit="feedbeef00"),
    _record("train-bpb", 3, "crash", None, description="DEVICE_BATCH_SIZE 128 → 256", reason="CUDA out of memory",
            metrics={"peak_vram_mb": 80000.0}),
    _record("train-bpb", 4, "rejected", None, description="rewrite everything", reason="lines_changed 400 > 20"),
    _record("train-bpb", 5, "keep", 0.97, description="WARMUP_RATIO 0.0 → 0.05", commit="1234567abc"),
    _record("train-bpb", 6, "interrupted", None, description="SCALAR_LR 0.5 → 0.625"),
    _record("train-bpb", 7, "crash", None, description="HEAD_DIM 128 → 256", reason="CUDA out of memory"),
    _record("train-bpb", 8, "crash", None, description="EMBEDDING_LR 0.6 → 0.9", reason="FAIL: loss is NaN"),
]
SKILL = [  # maximize; no repeated baseline, but candidate "aa" was scored twice: std of (0.45, 0.55)
    _record("skill", 0, "baseline", 0.5, metric="quality", direction="maximize", baseline_scores=[0.5]),
    _record("skill", 1, "discard", 0.45, description="shorter intro", candidate_hash="aa"),
    _record("skill", 2, "keep", 0.6, description="add | examples", candidate_hash="bb"),
    _record("skill", 3, "discard", 0.55, description="shorter intro again", candidate_hash="aa"),
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in BPB[:4]]
    lines += ["{not json", "[1, 2]"]  # lines 5 and 6: malformed, then valid JSON that is no record
    lines += [json.dumps(r, ensure_ascii=False) for r in SKILL[:2] + BPB[4:] + SKILL[2:]]
    path = tmp_path / "work" / "results.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_report_files_and_png_size(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = report.write_report(results, tsv=True)
    assert [p.name for p in paths] == ["progress.png", "report.md", "results.tsv"]
    assert all(p.parent == results.parent and p.is_file() for p in paths)
    # 14 x 5 inches per task at 100 dpi, two tasks
    assert _png_size(results.parent / "progress.png") == (1400, 1000)
    err = capsys.readouterr().err
    assert f"{results}:5:" in err and f"{results}:6:" in err
    assert f"{results}:4:" not in err


def test_report_md_contents(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.write_report(results, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    bpb, skill = md.split("## skill")
    # kept changes in order, with deltas vs the previous kept score
    assert bpb.index("MATRIX_LR 0.04 → 0.05") < bpb.index("WARMUP_RATIO 0.0 → 0.05")
    assert "| 1 | 0.990000 | -0.010000 | MATRIX_LR 0.04 → 0.05 |" in bpb
    assert "| 5 | 0.970000 | -0.020000 | WARMUP_RATIO 0.0 → 0.05 |" in bpb
    assert "DEPTH 8 → 9" not in bpb  # discarded: not a kept change
    assert "| baseline | 1.000000 |" in bpb and "| best | 0.970000 |" in bpb
    assert "| total improvement | 0.030000 (3.00%) |" in bpb
    assert "| crashes | 3 |" in bpb
    assert "baseline 1, keep 2, discard 1, crash 3, rejected 1, interrupted 1" in bpb
    assert "| noise (std) | 0.002000 (pooled over 1 groups of repeated runs, df 2) |" in bpb
    assert "| 2 | CUDA out of memory |" in bpb and "| 1 | FAIL: loss is NaN |" in bpb
    # 9 runs of 300 s; first start 00:00, last end 01:20 + 5 min
    assert "45m 00s in mutators and runners; 1h 25m 00s wall" in bpb
    # maximize: best is the highest; noise from the twice-scored candidate; '|' cannot break the table
    assert "| best | 0.600000 |" in skill and "| total improvement | 0.100000 (20.00%) |" in skill
    assert "| 2 | 0.600000 | +0.100000 | add / examples |" in skill
    assert "| noise (std) | 0.070711 (pooled over 1 groups of repeated runs, df 1) |" in skill
    assert "| crashes | 0 |" in skill and "Top crash reasons" not in skill


def test_noise_is_na_without_repeats(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in SKILL[:3]) + "\n")
    report.write_report(path)
    assert "| noise (std) | n/a |" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_results_tsv_rows(results: Path) -> None:
    report.write_report(results, tsv=True)
    rows = (results.parent / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert rows[1:9] == [
        "0123456\t1.000000\t44.0\tkeep\t[train-bpb] baseline",
        "abcdef0\t0.990000\t45.0\tkeep\t[train-bpb] MATRIX_LR 0.04 → 0.05",
        "feedbee\t0.995000\t0.0\tdiscard\t[train-bpb] DEPTH 8 → 9",
        "-\t0.000000\t0.0\tcrash\t[train-bpb] DEVICE_BATCH_SIZE 128 → 256",
        "-\t0.000000\t0.0\tdiscard\t[train-bpb] rewrite everything",
        "1234567\t0.970000\t0.0\tkeep\t[train-bpb] WARMUP_RATIO 0.0 → 0.05",
        "-\t0.000000\t0.0\tcrash\t[train-bpb] HEAD_DIM 128 → 256",
        "-\t0.000000\t0.0\tcrash\t[train-bpb] EMBEDDING_LR 0.6 → 0.9",
    ]
    assert rows[9:] == [
        "-\t0.500000\t0.0\tkeep\t[skill] baseline",
        "-\t0.450000\t0.0\tdiscard\t[skill] shorter intro",
        "-\t0.600000\t0.0\tkeep\t[skill] add | examples",
        "-\t0.550000\t0.0\tdiscard\t[skill] shorter intro again",
    ]
    assert all(len(row.split("\t")) == 5 for row in rows)


def test_single_task_tsv_has_plain_descriptions(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in BPB[:2]) + "\n")
    report.write_report(path, tsv=True)
    rows = (tmp_path / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[1:] == ["0123456\t1.000000\t44.0\tkeep\tbaseline",
                        "abcdef0\t0.990000\t45.0\tkeep\tMATRIX_LR 0.04 → 0.05"]
    assert _png_size(tmp_path / "progress.png") == (1400, 500)
    assert "2 records, 1 task." in (tmp_path / "report.md").read_text(encoding="utf-8")  # singular where it is one


def test_cli_defaults_to_the_results_folder(results: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest_autoresearch.report", str(results), "--tsv"],
                          capture_output=True, text=True, env=env, cwd=results.parent.parent)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in results.parent.iterdir()} >= {"progress.png", "report.md", "results.tsv"}
    assert f"{results}:5: skipped" in done.stderr


def test_cli_missing_file_is_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest_autoresearch.report"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"report: error: {Path('work/results.jsonl')}: no such file"


def test_no_records_still_reports(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("{truncated by a crash\n")
    paths = report.write_report(path, tmp_path / "out", tsv=True)
    assert _png_size(paths[0]) == (1400, 500)
    assert "0 records, 0 tasks" in paths[1].read_text(encoding="utf-8")
    assert paths[2].read_text(encoding="utf-8") == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


# Research per GPU-hour: known runner seconds (3600 in all: one GPU-hour), per-run seconds 300, 310, 280, 320
# and 250 (median 300), and one run stopped early after 75 s.
STOPPED = {"test": "early_stop", "max_runs": 6, "early_stop": {"progress": 25.0, "run_seconds": 75.0}}
GPU = [
    _record("gpu", 0, "baseline", 1.0, metric="val_bpb", direction="minimize", scores=[1.0, 1.0, 1.0],
            runner_s=900.0, metrics={"peak_vram_mb": 45056.0}),
    _record("gpu", 1, "keep", 0.95, scores=[0.95, 0.95], runner_s=620.0),
    _record("gpu", 2, "discard", 1.05, scores=[1.05], runner_s=280.0),
    _record("gpu", 3, "discard", None, scores=[], runner_s=75.0, statistic=STOPPED),
    _record("gpu", 4, "crash", None, runner_s=85.0),
    _record("gpu", 5, "keep", 0.9, scores=[0.9, 0.9], runner_s=640.0),
    _record("gpu", 6, "discard", 0.93, scores=[0.93] * 4, runner_s=1000.0),
]


def test_research_per_gpu_hour_block(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GPU) + "\n")
    report.write_report(path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    block = md[md.index("### Research per GPU-hour"):md.index("### Kept changes")]
    assert block.splitlines() == [
        "### Research per GPU-hour", "",
        "one GPU per run assumed: the records do not hold runner.gpus", "",
        "| | |", "|---|---|",
        "| GPU-hours | 1.000 (runner time of every record, baseline runs included) |",
        "| experiments | 5 decisions (keep or discard), 5.00 per GPU-hour |",
        "| keeps | 2, 2.00 per GPU-hour |",
        "| best | 0.900000; gain over the first baseline 0.100000, 0.100000 per GPU-hour |",
        "| runs per decision | median 2, mean 2.00 (a stopped or screen run counts) |",
        "| stopped early | 1 of 13 runs (7.7%); ~3m 45s of GPU time not spent (estimate: the task's median "
        "full run, 5m 00s, less each stopped run's seconds) |",
        "| screened out | n/a (no policy.screen) |",
        "",
    ]


def test_research_per_gpu_hour_counts_the_screened_out_and_their_screen_runs(tmp_path: Path) -> None:
    screen = {"test": "screen", "seconds": 100, "promoted": False}
    records = [GPU[0],
               _record("gpu", 1, "discard", None, scores=[], runner_s=120.0,
                       statistic={"test": "screen", "screen": screen}),
               _record("gpu", 2, "keep", 0.95, scores=[0.95], runner_s=450.0,
                       statistic={"test": "sequential", "screen": {**screen, "promoted": True}})]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report.write_report(path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| screened out | 1 of 2 screened candidates (50.0%), without a full run |" in md
    assert "| runs per decision | median 1.5, mean 1.50 (a stopped or screen run counts) |" in md


def test_research_per_gpu_hour_without_decisions_or_stops(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(GPU[0]) + "\n")
    report.write_report(path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| experiments | 0 decisions (keep or discard), 0.00 per GPU-hour |" in md
    assert "| best | 1.000000; gain over the first baseline 0.000000, 0.000000 per GPU-hour |" in md
    assert "| runs per decision | n/a |" in md and "| stopped early | 0 of 3 runs (0.0%) |" in md


def test_progress_x_axis_is_cumulative_gpu_hours() -> None:
    from matplotlib.figure import Figure

    hours = [900 / 3600, 1520 / 3600, 1800 / 3600, 1875 / 3600, 1960 / 3600, 2600 / 3600, 1.0]
    assert report.cumulative_gpu_hours(GPU) == pytest.approx(hours)
    ax = Figure().subplots()
    report._plot_task(ax, "gpu", GPU)
    running_best = next(line for line in ax.lines if line.get_label() == "running best")
    # baseline, keep 1 and keep 5, then on to the last record's end
    assert list(running_best.get_xdata()) == pytest.approx([hours[0], hours[1], hours[5], hours[6]])
    kept = next(c for c in ax.collections if c.get_label().startswith("kept"))
    assert [x for x, _ in kept.get_offsets()] == pytest.approx([hours[0], hours[1], hours[5]])
    crash = next(c for c in ax.collections if c.get_label().startswith("crash"))
    assert [x for x, _ in crash.get_offsets()] == pytest.approx([hours[4]])
    assert ax.get_xlabel().startswith("GPU-hours")


def test_stopped_early_estimate_needs_a_full_run_and_the_stopped_seconds() -> None:
    unrecorded = {"test": "early_stop", "early_stop": {"progress": 50.0}}  # a record from before run_seconds
    records = [GPU[0], _record("gpu", 1, "discard", None, scores=[], runner_s=100.0, statistic=unrecorded)]
    assert report.stopped_early(records) == ("1 of 4 runs (25.0%); ~0m 00s of GPU time not spent (estimate: the "
                                             "task's median full run, 5m 00s, less each stopped run's seconds)")
    assert report.stopped_early(GPU[3:4]) == ("1 of 1 runs (100.0%); no full run to estimate the GPU time they did "
                                              "not spend")
