"""pytest entry point (pytest11: autoresearch). Inert unless --autoresearch is given."""

from __future__ import annotations

import os

import pytest

from .engine import Engine
from .session import SESSION_PLUGIN_NAME, TASK_DIR, AutoresearchSession, Options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autoresearch", "autoresearch: keep/discard research iterations")
    group.addoption("--autoresearch", action="store_true", default=False,
                    help="collect task.yaml files under the given paths (default: experiments/) and run iterations")
    group.addoption("--autoresearch-iterations", type=int, default=1, metavar="N",
                    help="iterations per task (default 1); 0: run until interrupted (Ctrl-C) or out of patience")
    group.addoption("--autoresearch-patience", type=int, default=0, metavar="K",
                    help="stop a task after K iterations in a row without a keep (default 0: never)")
    group.addoption("--autoresearch-max-crashes", type=int, default=3, metavar="K",
                    help="stop a task after K crashed iterations in a row (default 3; 0: never)")
    group.addoption("--autoresearch-results", default=None, metavar="PATH",
                    help="results file (default: results.jsonl in the storage folder); without "
                         "--autoresearch-dir its folder holds every other file the engine writes too")
    group.addoption("--autoresearch-dir", default=None, metavar="DIR",
                    help="the folder of every file the engine writes: results, logs, diffs, locks, baselines "
                         "(default: work/ in the folder tasks run in)")
    group.addoption("--autoresearch-commit", action="store_true", default=False,
                    help="git-commit each kept candidate; the record holds the commit hash")
    group.addoption("--autoresearch-reset", action="store_true", default=False,
                    help="forget the stored workspace baselines of the tasks run (mutator: workspace): they are "
                         "taken from git HEAD again; results and logs are kept")
    group.addoption("--autoresearch-fail-on-discard", action="store_true", default=False,
                    help="a discarded candidate fails its item (CI gating)")
    group.addoption("--autoresearch-executor", choices=("local", "ray"), default="local",
                    help="where iterations are made: local (this process, or xdist workers; default) or ray (a Ray "
                         "cluster; decisions and records stay here)")
    group.addoption("--autoresearch-parallel", type=int, default=None, metavar="N",
                    help="with --autoresearch-executor ray: iterations in flight at once (default: the cluster's "
                         "GPUs / runner.gpus, at least 1)")
    group.addoption("--autoresearch-ray-address", default=os.environ.get("RAY_ADDRESS"), metavar="ADDRESS",
                    help="with --autoresearch-executor ray: the cluster's address (default: $RAY_ADDRESS)")


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("autoresearch"):
        return
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # no paths given: research experiments/
        config.args = [str(config.rootpath / TASK_DIR)]
    config.pluginmanager.register(AutoresearchSession(config, Options.from_config(config)), SESSION_PLUGIN_NAME)
    parallel = config.getoption("autoresearch_parallel")
    if config.getoption("autoresearch_executor") == "ray":
        if getattr(config.option, "numprocesses", None):
            raise pytest.UsageError("--autoresearch-executor ray runs iterations on the cluster from one pytest "
                                    "process: drop -n (xdist)")
        if parallel is not None and parallel < 1:
            raise pytest.UsageError(f"--autoresearch-parallel must be >= 1, got {parallel}")
        address = config.getoption("autoresearch_ray_address")
        if not address:  # never a Ray instance of our own: it would hide a missing address and leave state in ~/.ray
            raise pytest.UsageError("--autoresearch-executor ray needs a cluster: --autoresearch-ray-address "
                                    "HOST:PORT or RAY_ADDRESS (start one with `ray start --head`; USAGE.md: More "
                                    "than one machine)")
        from . import ray_executor  # only now: without the option the plugin imports no Ray
        ray_executor.check_available()
        config.pluginmanager.register(ray_executor.RayExecutor(config, address, parallel), ray_executor.PLUGIN_NAME)
    elif parallel is not None:
        raise pytest.UsageError("--autoresearch-parallel needs --autoresearch-executor ray (with xdist: -n N)")


@pytest.fixture(scope="session")
def autoresearch_engine(pytestconfig: pytest.Config) -> Engine:
    """The engine of this --autoresearch session (paths, storage, worker id)."""
    session = pytestconfig.pluginmanager.get_plugin(SESSION_PLUGIN_NAME)
    if session is None:
        pytest.skip("autoresearch_engine needs --autoresearch")
    return session.engine
