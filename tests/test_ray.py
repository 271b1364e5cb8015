"""--autoresearch-executor ray on a real two-node Ray cluster on loopback (each node declaring one fake GPU), with
real inner pytest sessions: attempts are made on both nodes and landed by the session exactly as local ones, a
node killed mid-iteration is a crash record naming it, and Ctrl-C leaves no task running.

Out of the default run (the cluster takes ~15 s to start): `pytest -m ray`, with `pytest-autoresearch[ray]`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from autoresearch_helpers import REPO_ROOT, plugin_args, records, write_task

pytest.importorskip("ray")
from ray_cluster import NODE_ENV, Cluster, start_cluster  # noqa: E402  (after the skip: it needs ray's CLI)

pytestmark = pytest.mark.ray

# A seeded mutator: the seed (42 + iteration) says by how much value.txt moves, so that some iterations keep and
# some discard, and the same seeds give the same candidates wherever they run
MUTATE_SEEDED = '''import os, pathlib
p = pathlib.Path("experiments/t/value.txt")
seed = int(os.environ["AUTORESEARCH_SEED"])
step = (3, -2, 1, -1, 2)[seed % 5]
p.write_text(f"{int(p.read_text()) + step}\\n")
pathlib.Path(os.environ["AUTORESEARCH_DESCRIPTION_FILE"]).write_text(f"add {step}\\n")
'''
# The runner says where it runs (a line per run in $AUTORESEARCH_TEST_RUNS: the session's AUTORESEARCH_* variables
# reach the nodes), runs a candidate for $AUTORESEARCH_TEST_RUN_S seconds or until the file <runs>.go exists, and
# prints the value as the score
SCORE_WHERE = '''import os, pathlib, time, json
runs = os.environ.get("AUTORESEARCH_TEST_RUNS")
if runs:
    with open(runs, "a") as f:
        f.write(json.dumps({"node": os.environ.get("AUTORESEARCH_NODE"), "pid": os.getpid(), "start": time.time(),
                            "iteration": os.environ["AUTORESEARCH_ITERATION"]}) + "\\n")
end = time.time() + float(os.environ.get("AUTORESEARCH_TEST_RUN_S", "0"))
while os.environ["AUTORESEARCH_ITERATION"] != "0" and time.time() < end and not os.path.exists(f"{runs}.go"):
    time.sleep(0.05)
print("score:", pathlib.Path("experiments/t/value.txt").read_text().strip())
'''
# what differs between any two sessions (times, the session and its signature) and says where it ran
PER_RUN = {"started_at", "duration_s", "mutator_s", "runner_s", "gpu_wait_s", "session", "sig", "worker", "node"}


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster({"head": (2, 1), "two": (2, 1)})
    yield cluster
    cluster.stop()


def make_repo(folder: Path, **task) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    write_task(folder, mutate=MUTATE_SEEDED, score=SCORE_WHERE, value="10\n", **task)
    return folder


def inner(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *plugin_args(), "--autoresearch", "-p", "no:cacheprovider", *args]


def run_inner(folder: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(inner(folder, *args), cwd=folder, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def cluster_nodes(cluster: Cluster) -> dict[str, str]:
    """{"head"|"two": the node id}, read by a driver of its own from the resource each node declares."""
    probe = ("import ray, sys, json; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "print(json.dumps({k[5:]: n['NodeID'] for n in ray.nodes() if n['Alive']"
             " for k in n['Resources'] if k.startswith('node:') and k[5:] in ('head', 'two')}))")
    done = subprocess.run([sys.executable, "-c", probe, cluster.address], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **NODE_ENV, "RAY_ADDRESS": ""})
    return json.loads(done.stdout.strip().splitlines()[-1])


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in PER_RUN}


def test_attempts_made_on_two_nodes_land_exactly_as_local_ones(cluster, tmp_path):
    local, remote = make_repo(tmp_path / "local"), make_repo(tmp_path / "ray")
    done = run_inner(local, "--autoresearch-iterations", "5", "-p", "no:xdist")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    done = run_inner(remote, "--autoresearch-iterations", "5", "--autoresearch-executor", "ray",
                     "--autoresearch-ray-address", cluster.address, "--autoresearch-parallel", "1", "-v")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "KEPT" in done.stdout and "DISCARDED" in done.stdout  # the labels of local runs
    here, there = records(local), records(remote)
    assert [r["status"] for r in here] == ["baseline", "discard", "keep", "keep", "discard", "keep"]
    assert [comparable(r) for r in there] == [comparable(r) for r in here]
    assert {r["worker"] for r in there} == {"ray"} and {r.get("node") for r in here} == {None}
    ids = cluster_nodes(cluster)
    assert {r["node"].rpartition("/")[2] for r in there} == {ids["head"][:12], ids["two"][:12]}  # SPREAD
    for rel in ("experiments/t/value.txt", *(f"work/logs/t/{k}.diff" for k in range(1, 6))):
        assert (remote / rel).read_text() == (local / rel).read_text(), rel
    assert (remote / "work/logs/t/1.log").is_file() and "score: 9" in (remote / "work/logs/t/1.log").read_text()


def test_two_iterations_in_flight_on_two_nodes_each_prepared_once(cluster, tmp_path):
    runs = tmp_path / "runs.jsonl"
    # a node's one (fake) GPU: one run at a time; setup: once per node, before its first iteration there
    repo = make_repo(tmp_path / "repo", spec={"runner": {"gpus": 1},
                                               "setup": {"command": f"echo $AUTORESEARCH_NODE >> {runs}.setup"}})
    done = run_inner(repo, "--autoresearch-iterations", "4", "--autoresearch-executor", "ray",
                     "--autoresearch-ray-address", cluster.address, "--junitxml=report.xml",
                     env={"AUTORESEARCH_TEST_RUNS": str(runs), "AUTORESEARCH_TEST_RUN_S": "2"})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    judged = [r for r in records(repo) if r["status"] != "baseline"]
    assert sorted(r["iteration"] for r in judged) == [1, 2, 3, 4]  # each recorded once
    # the default parallelism is the cluster's GPUs / runner.gpus: two at once, one per node, never two on one
    starts = sorted((json.loads(line) for line in runs.read_text().splitlines()), key=lambda r: r["start"])
    candidates = [r for r in starts if r["iteration"] != "0"]
    overlapping = [(a, b) for a, b in zip(candidates, candidates[1:]) if b["start"] < a["start"] + 2]
    assert overlapping and all(a["node"] != b["node"] for a, b in overlapping), starts
    prepared = Path(f"{runs}.setup").read_text().split()
    assert sorted(prepared) == sorted({r["node"] for r in starts}), prepared
    statuses = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}["status"]
                for case in ET.parse(repo / "report.xml").iter("testcase")}  # JUnit XML as in local runs
    assert statuses == {f"t[{r['iteration']}]": r["status"] for r in judged}


def wait_for_line(path: Path, matching, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and matching(row := json.loads(line)):
                    return row
        time.sleep(0.2)
    raise AssertionError(f"no matching line in {path} after {timeout} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())


def start_session(repo: Path, runs: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AUTORESEARCH_TEST_RUNS": str(runs),
           "AUTORESEARCH_TEST_RUN_S": "600"}
    return subprocess.Popen(inner(repo, "--autoresearch-executor", "ray", *args), cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def candidate_runs(runs: Path, count: int, timeout: float = 120) -> list[dict]:
    """Once `count` candidate runs have started: their lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [json.loads(line) for line in runs.read_text().splitlines()] if runs.is_file() else []
        if len(found := [r for r in rows if r["iteration"] != "0"]) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{count} candidate runs not started after {timeout} s")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_ctrl_c_cancels_the_tasks_in_flight_and_records_them_interrupted(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo", spec={"runner": {"gpus": 1, "timeout": 900}})
    runs = tmp_path / "runs.jsonl"
    session = start_session(repo, runs, "--autoresearch-iterations", "4", "--autoresearch-ray-address",
                            cluster.address)
    try:
        running = candidate_runs(runs, 2)  # two candidates, one on each node, each running for 600 s
        session.send_signal(signal.SIGINT)
        out, _ = session.communicate(timeout=60)
    finally:
        session.kill()
    assert session.returncode == 2, out  # pytest's "interrupted"
    assert len({r["node"] for r in running}) == 2
    assert all(gone(r["pid"]) for r in running), running  # the runners were killed with their tasks
    interrupted = [r for r in records(repo) if r["status"] == "interrupted"]
    assert sorted(r["iteration"] for r in interrupted) == sorted(int(r["iteration"]) for r in running)
    assert all("cancelled" in r["reason"] and r["node"] for r in interrupted), interrupted
    assert "interrupted (SIGINT received)" in out
    # no task holds a GPU any more: a probe asking for both nodes' GPUs runs at once
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "f = ray.remote(num_gpus=1)(lambda: 1);"
             "print(sum(ray.get([f.options(scheduling_strategy='SPREAD').remote() for _ in range(2)], timeout=30)))")
    done = subprocess.run([sys.executable, "-c", probe, cluster.address], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **NODE_ENV, "RAY_ADDRESS": ""})
    assert done.stdout.strip().splitlines()[-1:] == ["2"], done.stdout + done.stderr


def test_kill_9_of_the_session_leaves_no_task_running_and_a_rerun_resumes(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo", spec={"runner": {"gpus": 1, "timeout": 900}})
    runs = tmp_path / "runs.jsonl"
    session = start_session(repo, runs, "--autoresearch-iterations", "4", "--autoresearch-ray-address",
                            cluster.address)
    try:
        running = candidate_runs(runs, 2)
    finally:
        session.kill()  # SIGKILL: Ray cancels the tasks of a driver that died
        session.communicate(timeout=60)
    assert all(gone(r["pid"], timeout=30) for r in running), running
    Path(f"{runs}.go").touch()
    done = run_inner(repo, "--autoresearch-iterations", "1", "--autoresearch-executor", "ray",
                     "--autoresearch-ray-address", cluster.address, env={"AUTORESEARCH_TEST_RUNS": str(runs)})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    judged = [r for r in records(repo) if r["status"] != "baseline"]
    # the killed iterations have no record; the new one is numbered past every number handed out
    assert len(judged) == 1 and judged[0]["iteration"] > max(int(r["iteration"]) for r in running), judged


def test_a_node_killed_mid_iteration_is_a_crash_naming_it_and_the_session_goes_on(cluster, tmp_path):
    """Last in this module: it kills the cluster's second node."""
    repo = make_repo(tmp_path / "repo", spec={"runner": {"gpus": 1, "timeout": 900}})
    runs = tmp_path / "runs.jsonl"
    session = start_session(repo, runs, "--autoresearch-iterations", "3", "--autoresearch-ray-address",
                            cluster.address, "--autoresearch-max-crashes", "0")
    two = cluster_nodes(cluster)["two"][:12]
    try:
        running = candidate_runs(runs, 2)
        victim = next(r for r in running if r["node"].endswith(two))
        cluster.nodes[1].kill()  # the whole node: its raylet, workers and the attempt's process
        assert gone(victim["pid"])  # the runner, in a session of its own, went with its attempt's process
        Path(f"{runs}.go").touch()  # the candidate on the head finishes, and the third iteration runs at once
        out, _ = session.communicate(timeout=120)
    finally:
        session.kill()
    assert session.returncode == 1, out  # the crash fails its item
    by_iteration = {r["iteration"]: r for r in records(repo) if r["status"] != "baseline"}
    lost = by_iteration[int(victim["iteration"])]
    assert lost["status"] == "crash" and "died mid-iteration" in lost["reason"] and two in lost["reason"], lost
    assert lost["node"].endswith(two)
    assert sorted(by_iteration) == [1, 2, 3]  # the session went on: the third iteration ran, on the head
    third = by_iteration[max(int(r["iteration"]) for r in running) + 1]
    assert third["node"] and not third["node"].endswith(two)
