"""--autoresearch-executor ray: iterations made on a Ray cluster, decided and recorded here.

The expensive part of an iteration (steps 1-4: sandbox, mutator, limits, runner repeats; offsite.py) runs as a Ray
task that asks for the task's `runner.gpus` as Ray GPUs and one CPU; up to --autoresearch-parallel of them are
in flight. Each attempt comes back to this process, the controller, which runs its item's own report protocol:
the item lands the attempt with Landing.land exactly as a local iteration (so labels, JUnit XML, the summary and
stale keeps, rebased by landing.py, are as in local runs). Registered only when the option asks for Ray; the
plugin imports no Ray otherwise.

Faults: a task is never retried (its runs would be counted twice): a node or worker that dies mid-iteration is a
`crash` record naming the node; Ctrl-C (or SIGTERM) cancels every task in flight, kills its processes, and
records it `interrupted`. A task that no node can hold (more GPUs than any node has) is a crash, never a wait."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from .errors import StorageUnwritable
from .interrupts import interrupt_reason
from .items import IterationItem, autoresearch_iteration, crash_stop
from .landing import Landing
from .offsite import Order, RepoSnapshot, Result, SnapshotTooLarge, attempt_in_child, lost_attempt, receive, \
    snapshot_repo, write_lost_log
from .baseline import recorded_scores
from .sandbox import hash_contents, scan
from .scratch import new_scratch
from .session import SESSION_PLUGIN_NAME, AutoresearchSession
from .task import Task

# Ray's "uv run" hook (on when the session was started by `uv run`) would upload the working folder and start its
# workers through `uv run` there, in an environment of uv's choosing that may lack Ray; iterations carry their
# own snapshot, and the nodes' environment is their `ray start`'s
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
try:
    import ray
except ImportError:  # check_available() says what to install
    ray = None

PLUGIN_NAME = "autoresearch-ray"
WAIT_S = 1.0  # how long one wait for a finished task lasts: Ctrl-C and lost nodes are noticed between waits
CANCEL_WAIT_S = 20.0  # after a cancel, how long to wait for the tasks to be gone from their nodes
CONNECT_TIMEOUT_S = 10.0
FEASIBLE_EVERY_S = 5.0  # how often a task still waiting for resources is checked against the nodes alive


def check_available() -> None:
    if ray is None:
        raise pytest.UsageError("--autoresearch-executor ray needs Ray: pip install 'pytest-autoresearch[ray]'")


def node_label() -> str:
    """This node as records name it: its IP and the start of its Ray node id (IPs repeat on one machine)."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:12]}"


def _attempt_task(order: Order, tar: bytes):
    """The Ray task (a generator): says on which node it started, then returns the node's Result."""
    node = node_label()
    yield node
    yield attempt_in_child(order, tar, node)


@dataclass
class Flight:
    task: Task
    item: IterationItem | None  # None: a baseline order
    order: Order
    stream: Any  # ray.ObjectRefGenerator
    gpus: int
    submitted_at: str
    node: str | None = None  # known once the task started
    scoring: str | None = None  # a baseline order's content hash


class RayExecutor:
    def __init__(self, config: pytest.Config, address: str, parallel: int | None) -> None:
        self.config = config
        self.address = address
        self.parallel_option = parallel
        self.session: AutoresearchSession = config.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
        self.engine = self.session.engine
        self.snapshot: tuple[dict, RepoSnapshot, Any] | None = None  # (the scan it came from, it, its ObjectRef)
        self.baselines_tried: set[tuple[str, str]] = set()  # (task, content hash) a baseline order was sent for
        self.written_gpus: dict[Path, Any] = {}  # task.yaml -> its runner.gpus as written
        self.queue: deque[IterationItem] = deque()  # iterations not sent yet, in collection order
        self.flights: list[Flight] = []
        self.remaining: list[pytest.Item] = []  # items whose protocol has not run yet
        self.parallel = 1
        self.connected = False

    # ------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"autoresearch: executor ray at {self.address}"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.connected:
            ray.shutdown()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                                      f"during collection")
        if session.config.option.collectonly:
            return True
        # endless loops land their own iterations, and the workspace's one candidate is read where it lies
        offsite = [item for item in session.items if isinstance(item, IterationItem)
                   and item.obj is autoresearch_iteration and not item.task.workspace_mode]
        here = [item for item in session.items if item not in offsite]
        self.queue, self.remaining = deque(offsite), list(session.items)
        if offsite:
            self._connect()
        try:
            self._fill()
            for item in here:  # the workspace's one candidate, endless loops, invalid tasks: in this process
                self._protocol(item)
            last_check = time.monotonic()
            while self.queue or self.flights:
                self._fill()
                self._collect()
                if time.monotonic() - last_check > FEASIBLE_EVERY_S:
                    self._drop_infeasible()
                    last_check = time.monotonic()
                if session.shouldfail or session.shouldstop:
                    self._abandon(f"the session stopped: {session.shouldfail or session.shouldstop}")
                    raise session.Failed(session.shouldfail) if session.shouldfail else \
                        session.Interrupted(session.shouldstop)
        except KeyboardInterrupt as e:
            self._abandon(f"interrupted ({interrupt_reason(e)}) before a verdict")
            raise
        except BaseException:
            self._abandon("the session stopped before a verdict")
            raise
        return True

    # ------------------------------------------------------------------------
    # Connecting, sizing

    def _connect(self) -> None:
        if (problem := _unreachable(self.address)) is not None:  # ray.init would wait for minutes
            raise pytest.UsageError(f"--autoresearch-ray-address {self.address}: {problem}")
        # log_to_driver off: the tasks' output is in each iteration's log, not on pytest's terminal
        ray.init(address=self.address, namespace="autoresearch", log_to_driver=False, logging_level="ERROR")
        self.connected = True
        self.remote = ray.remote(_attempt_task)  # once: each ray.remote() would export the function again
        resources = ray.cluster_resources()
        gpus = max((self._gpus(item.task) for item in self.queue), default=0)
        fits = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1))
        self.parallel = self.parallel_option or max(1, fits)

    def _gpus(self, task: Task) -> int:
        """runner.gpus as Ray GPUs: `auto` was resolved on this machine at load time; on a cluster it means one
        GPU where the cluster has any, whatever this machine has."""
        if task.path not in self.written_gpus:
            self.written_gpus[task.path] = _written_gpus(task)
        if self.written_gpus[task.path] == "auto":
            return 1 if ray.cluster_resources().get("GPU", 0) else 0
        return task.gpus

    # ------------------------------------------------------------------------
    # Submitting

    def _fill(self) -> None:
        """Submit queued iterations while fewer than --autoresearch-parallel are in flight. A task whose current
        baseline has no scores on record first sends a baseline order and holds its iterations until that lands
        (each would score it again); if it brought no scores (a failed run), its iterations go and meet the
        failure as they would locally. A stopped task's items run here, where they skip with the reason."""
        held: set[str] = set()
        for item in list(self.queue):
            if len(self.flights) >= self.parallel:
                return
            task = item.task
            if task.name in held:
                continue
            if (crash_stop(self.config, self.engine, task.name, item.since) is not None or
                    self._out_of_patience(item)):
                self.queue.remove(item)
                self._protocol(item)
                continue
            current = hash_contents(self.engine.artifacts_in(task, task.rootdir))
            scored = len(recorded_scores(self.engine, task, current)) >= task.policy.baseline_runs
            scoring = any(f.scoring == current and f.task.name == task.name for f in self.flights)
            if not scored and (scoring or (task.name, current) not in self.baselines_tried):
                held.add(task.name)
                if not scoring:
                    self.baselines_tried.add((task.name, current))
                    self._submit(task, None, scoring=current)
                continue
            self.queue.remove(item)
            self._submit(task, item)

    def _out_of_patience(self, item: IterationItem) -> bool:
        patience = self.config.getoption("autoresearch_patience")
        return bool(patience) and self.engine.storage.results.misses_in_a_row(item.task.name, item.since) >= patience

    def _submit(self, task: Task, item: IterationItem | None, scoring: str | None = None) -> None:
        """Send an iteration of `item`, or (item None) a baseline order scoring the content `scoring`."""
        engine = self.engine
        iteration = engine.storage.reserve_iteration(task.name) if item is not None else 0
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            snapshot, ref = self._snapshot()
        except SnapshotTooLarge as e:
            pytest.exit(f"autoresearch: {e}", returncode=pytest.ExitCode.USAGE_ERROR)
        order = Order.make(engine, task, iteration, os.environ.get("AUTORESEARCH_DESCRIPTION", ""), snapshot.digest,
                           baseline_only=item is None)
        gpus = self._gpus(task)
        if (problem := self._infeasible(gpus)) is not None:
            if item is not None:
                self._land(item, lost_attempt(task, iteration, "crash", problem, None, started), problem)
            return  # a baseline order: its iterations meet the same problem
        stream = self.remote.options(
            num_gpus=gpus, num_cpus=1, max_retries=0, scheduling_strategy="SPREAD",
            name=f"autoresearch {task.name}#{iteration or 'baseline'}").remote(order, ref)
        self.flights.append(Flight(task, item, order, stream, gpus, started, scoring=scoring))

    def _snapshot(self) -> tuple[RepoSnapshot, Any]:
        """The repository as the nodes get it: packed and put into Ray's object store once per content (the scan
        of names, sizes and times tells whether anything changed since the last one)."""
        engine = self.engine
        state = scan(engine.rootdir)
        if self.snapshot is None or self.snapshot[0] != state:
            scratch = new_scratch("snapshot")
            try:
                snapshot = snapshot_repo(engine, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            if self.snapshot is not None and self.snapshot[1].digest == snapshot.digest:
                self.snapshot = (state, *self.snapshot[1:])  # touched, not changed: the same object
            else:
                self.snapshot = (state, snapshot, ray.put(snapshot.tar))
        return self.snapshot[1], self.snapshot[2]

    def _infeasible(self, gpus: int) -> str | None:
        """Why no node alive could ever run a task asking for `gpus` GPUs and a CPU, else None."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if any(n["Resources"].get("GPU", 0) >= gpus and n["Resources"].get("CPU", 0) >= 1 for n in nodes):
            return None
        most = max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=0)
        return f"runner.gpus is {gpus} but no Ray node alive has that many GPUs and a CPU (at most {most} GPU(s))"

    # ------------------------------------------------------------------------
    # Collecting

    def _collect(self) -> None:
        ready, _ = ray.wait([f.stream for f in self.flights], num_returns=1, timeout=WAIT_S)
        for flight in [f for f in self.flights if f.stream in ready]:
            try:
                value = ray.get(next(flight.stream))
            except StopIteration:
                continue  # finished after its result, which was taken
            except ray.exceptions.RayError as e:
                self.flights.remove(flight)
                if flight.item is not None:  # a baseline order that failed: its iterations try it themselves
                    self._land_lost(flight, _fault(e, flight.node))
                continue
            if flight.node is None:  # the first value: where it runs
                flight.node = value
                continue
            self.flights.remove(flight)
            self._land_result(flight, value)

    def _land_result(self, flight: Flight, result: Result) -> None:
        try:
            attempt = receive(self.engine, flight.task, result, flight.node or "")
        except StorageUnwritable as e:
            pytest.exit(f"autoresearch: stopped: {e}; nothing was applied")
        if flight.item is not None and attempt is not None:
            flight.item.made = attempt
            self._protocol(flight.item)

    def _land_lost(self, flight: Flight, reason: tuple[str, str, str]) -> None:
        status, text, detail = reason
        if flight.item is not None:
            attempt = lost_attempt(flight.task, flight.order.iteration, status, text, flight.node, flight.submitted_at)
            self._land(flight.item, attempt, detail)

    def _land(self, item: IterationItem, attempt, detail: str) -> None:
        try:
            item.made = write_lost_log(self.engine, item.task, attempt, detail)
        except StorageUnwritable as e:
            pytest.exit(f"autoresearch: stopped: {e}; nothing was applied")
        self._protocol(item)

    def _protocol(self, item: pytest.Item) -> None:
        """The item's own report protocol (setup, call: the landing, teardown), as pytest's loop runs it."""
        self.remaining.remove(item)
        flying = [f.item for f in self.flights]
        nextitem = next((i for i in self.remaining if i not in flying), None)
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)

    def _drop_infeasible(self) -> None:
        """Tasks not started yet that no node alive can hold any more (their nodes died): crashes, not waits."""
        for flight in [f for f in self.flights if f.node is None]:
            if (problem := self._infeasible(flight.gpus)) is not None:
                ray.cancel(flight.stream, force=True)
                self.flights.remove(flight)
                self._land_lost(flight, ("crash", problem, "cancelled while waiting for resources"))

    def _abandon(self, why: str) -> None:
        """Cancel every task in flight, wait until they are gone, and record each as `interrupted`; nothing lands
        in the workspace: no verdict was reached. The cancel is forced: a plain one is a KeyboardInterrupt that
        Python sees only between two bytecodes, never while a command runs. Ray kills the worker process and its
        children; the attempt's own process is one of them (offsite.attempt_in_child), and the reapers of its
        commands, below it, kill their trees when it dies."""
        flights, self.flights = self.flights, []
        for flight in flights:
            ray.cancel(flight.stream, force=True)
        _drain([f.stream for f in flights], time.monotonic() + CANCEL_WAIT_S)
        for flight in [f for f in flights if f.item is not None]:
            where = f" on node {flight.node}" if flight.node else " (not started on a node yet)"
            attempt = lost_attempt(flight.task, flight.order.iteration, "interrupted", f"{why}{where}; its Ray "
                                   f"task was cancelled", flight.node, flight.submitted_at)
            try:
                Landing(self.engine).land(flight.task, attempt)
            except StorageUnwritable:
                return  # the results store cannot be written: the session's own message says so


def _drain(streams: list[Any], deadline: float) -> None:
    """Take what cancelled tasks still send until each has ended (or the deadline passed). A second Ctrl-C stops
    the wait, not the recording."""
    going = list(streams)
    while going and time.monotonic() < deadline:
        try:
            ready, _ = ray.wait(going, num_returns=1, timeout=0.5)
        except KeyboardInterrupt:
            break
        for stream in ready:
            try:
                ray.get(next(stream))
            except StopIteration:
                going.remove(stream)
            except ray.exceptions.RayError:
                going.remove(stream)  # cancelled, or its worker died: gone either way


def _fault(error: Exception, node: str | None) -> tuple[str, str, str]:
    """(status, reason, detail) of a Ray task that failed: a node or worker that died is a crash naming it."""
    where = f"node {node}" if node else "its node"
    name = type(error).__name__
    first = str(error).strip().splitlines()[0] if str(error).strip() else name
    if isinstance(error, ray.exceptions.NodeDiedError):
        reason = f"{where} died mid-iteration (Ray {name}); not retried"
    elif isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)):
        reason = f"the Ray worker on {where} died mid-iteration (Ray {name}); not retried"
    elif isinstance(error, ray.exceptions.TaskCancelledError):
        reason = f"its Ray task on {where} was cancelled from outside this session"
    else:
        reason = f"internal error on {where}: {name}: {first[:200]}"
    return "crash", reason, str(error)


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a `host:port` address (a `ray://` or `auto` one is left to ray.init), else None."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"no Ray cluster answers there ({e.strerror or e}); start one with `ray start --head` (USAGE.md: More " \
               f"than one machine)"
    return None


def _written_gpus(task: Task) -> Any:
    """runner.gpus as the task.yaml says it (`auto` or a number): Task holds it resolved for this machine."""
    import yaml
    try:
        return ((yaml.safe_load(task.path.read_text(encoding="utf-8")) or {}).get("runner") or {}).get("gpus")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
