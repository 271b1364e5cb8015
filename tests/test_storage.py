"""One owner for storage: every file the engine writes lives under one folder (default work/), moved as a whole
by --autoresearch-dir or --autoresearch-results; logs are never overwritten, whatever became of the results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from autoresearch_helpers import MUTATE_ADD, records, write_task

# a mutator that fails when the storage folder was copied into its sandbox
MUTATE_UNLESS_STORE = '''import pathlib, sys
if pathlib.Path("store").exists():
    sys.exit("the storage folder was copied into the sandbox")
''' + MUTATE_ADD.format(path="experiments/t/value.txt", step=1)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_autoresearch_dir_holds_every_file_the_engine_writes(pytester, research):
    write_task(pytester.path, mutate=MUTATE_UNLESS_STORE)
    write_task(pytester.path, "w", spec={"mutator": "workspace"})  # no git: its first run takes the workspace
    before = files_under(pytester.path)
    result = research("--autoresearch-dir", "store")
    assert result.ret == 0, result.stdout.str()
    store = pytester.path / "store"
    written = files_under(pytester.path) - before
    assert written and all(path.startswith("store/") for path in written), written
    kept = {r["task"]: r for r in records(pytester.path, "store/results.jsonl") if r["status"] != "baseline"}
    assert (kept["t"]["status"], kept["w"]["status"]) == ("keep", "discard")
    assert kept["t"]["log"] == "store/logs/t/1.log" and (store / "logs/t/1.diff").is_file()
    assert (store / "autoresearch/baselines/w.json").is_file()
    result.stdout.fnmatch_lines(["results: store/results.jsonl"])


def test_results_option_moves_the_whole_storage_to_its_folder(pytester, research):
    write_task(pytester.path)
    research("--autoresearch-results", "out/r.jsonl")
    assert not (pytester.path / "work").exists()
    (keep,) = [r for r in records(pytester.path, "out/r.jsonl") if r["status"] == "keep"]
    assert keep["log"] == "out/logs/t/1.log" and (pytester.path / "out/logs/t/1.diff").is_file()


def test_a_fresh_results_file_never_overwrites_the_logs_of_earlier_sessions(pytester, research):
    write_task(pytester.path)
    research()
    work = pytester.path / "work"
    logs = {name: (work / "logs/t" / name).read_bytes() for name in ("1.log", "1.diff")}
    baseline_logs = sorted(p.name for p in (work / "logs/t").glob("baseline-*"))
    for stale in ("results.jsonl", "results.jsonl.next.json", "results.jsonl.heads.json"):
        (work / stale).unlink()
    shutil.rmtree(work / "results.jsonl.baseline-runs")
    (pytester.path / "experiments/t/value.txt").write_text("1\n")  # the same baseline, scored again
    research()
    assert {name: (work / "logs/t" / name).read_bytes() for name in logs} == logs
    baseline, keep = records(pytester.path)
    assert keep["iteration"] == 2 and keep["log"] == "work/logs/t/2.log"
    assert baseline["log"] != f"work/logs/t/{baseline_logs[0]}" and (pytester.path / baseline["log"]).is_file()
    assert len(list((work / "logs/t").glob("baseline-*"))) == 2


def test_records_name_the_storage_in_the_environment(pytester, research):
    # AUTORESEARCH_RESULTS is an export of the records in the storage folder, not the results file there
    write_task(pytester.path, mutate='import os, pathlib\npathlib.Path("experiments/t/seen.txt").write_text('
                                     'open(os.environ["AUTORESEARCH_RESULTS"]).read())\n'
                                     'pathlib.Path("experiments/t/value.txt").write_text("2\\n")\n',
               spec={"artifacts": ["experiments/t/value.txt", "experiments/t/seen.txt"]})
    research("--autoresearch-dir", "store")
    seen = [json.loads(line) for line in (pytester.path / "experiments/t/seen.txt").read_text().splitlines()]
    stored = [json.loads(line) for line in (pytester.path / "store/results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in stored] == ["baseline", "keep"]
    assert seen == [{key: value for key, value in stored[0].items() if key != "sig"}]
