"""A real Ray cluster on loopback for the tests: a head and more nodes, each a `ray start --block` in its own
process group (so that a test stops exactly what it started, by group, and can kill one node mid-run), with a
private temp folder and ports of its own. Never `ray stop`: other clusters may run on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# a dead node is noticed in about a second instead of the default ~30 s (health checks every 3 s, 5 missed);
# token authentication off whatever this machine holds (a ~/.ray/auth_token would turn it on for `ray start`
# alone, and the tests' drivers would be refused)
NODE_ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "2",
            "RAY_health_check_timeout_ms": "500", "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}  # drivers too: under `uv run pytest` their workers must not `uv run`


def free_ports(count: int) -> list[int]:
    """Ports free now (the OS's picks): good enough for a test on loopback."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the node's whole process group (raylet, its workers, ...): a machine that died."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@dataclass
class Cluster:
    folder: Path  # Ray's temp folder (t/) and the nodes' output, removed by stop()
    address: str = ""
    nodes: list[Node] = field(default_factory=list)

    def start_node(self, name: str, num_cpus: int, num_gpus: int, head: bool = False) -> Node:
        """`ray start --block` for one node declaring `num_gpus` (fake) GPUs and a resource `node:<name>`."""
        ports = free_ports(10)
        args = [RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
                f"--resources={json.dumps({f'node:{name}': 1})}", "--node-ip-address=127.0.0.1",
                f"--object-manager-port={ports[1]}", f"--node-manager-port={ports[2]}",
                f"--min-worker-port={ports[3]}", f"--max-worker-port={ports[3] + 40}",
                f"--metrics-export-port={ports[4]}", f"--dashboard-agent-listen-port={ports[5]}",
                f"--dashboard-agent-grpc-port={ports[6]}", f"--runtime-env-agent-port={ports[7]}",
                "--object-store-memory=100000000"]  # 100 MB: plenty for the tests' snapshots
        if head:
            args += ["--head", f"--port={ports[0]}", "--include-dashboard=false",
                     f"--temp-dir={self.folder / 't'}"]
            self.address = f"127.0.0.1:{ports[0]}"
        else:
            args += [f"--address={self.address}"]
        log = self.folder / f"{name}.log"
        env = {**os.environ, **NODE_ENV, "RAY_ADDRESS": ""}
        with open(log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = Node(name, process, log)
        self.nodes.append(node)
        return node

    def wait_for(self, count: int, timeout: float = 90) -> None:
        """Until `count` nodes are alive (asked from a short-lived driver of its own, so the test's process
        never connects to Ray itself)."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text(errors='replace')[-2000:]}")
            try:
                done = subprocess.run([sys.executable, "-c", probe, self.address], capture_output=True, text=True,
                                      env={**os.environ, **NODE_ENV, "RAY_ADDRESS": ""}, timeout=30)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(0.5)
        raise RuntimeError(f"ray cluster: {count} nodes not up after {timeout:.0f} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                try:
                    os.killpg(node.process.pid, signal.SIGTERM)
                    node.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.kill()
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(nodes: dict[str, tuple[int, int]]) -> Cluster:
    """A cluster of the named nodes, {name: (cpus, gpus)}; the first is the head. Returns once all are alive."""
    try:
        return _start(nodes)
    except RuntimeError:  # once more, with new ports: a port picked free can be taken by the time Ray binds it
        return _start(nodes)


def _start(nodes: dict[str, tuple[int, int]]) -> Cluster:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp")))  # short: Ray's socket paths are limited
    try:
        for k, (name, (cpus, gpus)) in enumerate(nodes.items()):
            cluster.start_node(name, cpus, gpus, head=k == 0)
            if k == 0:
                cluster.wait_for(1)
        cluster.wait_for(len(nodes))
    except BaseException:
        cluster.stop()
        raise
    return cluster
