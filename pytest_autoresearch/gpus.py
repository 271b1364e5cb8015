"""GPUs for runners: count them through the CUDA driver library itself (never torch, nor any package: the
plugin must stay light and install anywhere), and lease them to runs so that no two runs ever share one."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from filelock import FileLock, Timeout

CUDA_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


@cache
def device_count() -> int:
    """CUDA devices the driver sees (honouring CUDA_VISIBLE_DEVICES); 0 where there is no NVIDIA driver,
    as on a Mac or a CPU-only machine."""
    names = list(CUDA_DRIVER_LIBRARIES) + [ctypes.util.find_library("cuda") or ""]
    for name in filter(None, names):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        # cuInit and cuDeviceGetCount return CUDA_SUCCESS (0) or an error code
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def visible_gpus() -> list[str]:
    """GPUs a runner could be given: the entries of CUDA_VISIBLE_DEVICES where it is set, else the driver's."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return [d.strip() for d in inherited.split(",") if d.strip()]
    return [str(i) for i in range(device_count())]


def auto_gpus() -> int:
    """runner.gpus: auto: one GPU where one exists, none otherwise (a CPU machine, a Mac)."""
    return 1 if visible_gpus() else 0


def worker_index(worker: str) -> int:
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


@contextmanager
def gpu_lease(locks_dir: Path, worker: str, gpus: int, poll_s: float = 0.2) -> Iterator[tuple[str, float]]:
    """Hold `gpus` GPUs no other run holds, for the block: the visible devices cut into slices of `gpus`, one
    lock file each; the worker's own slice is tried first, then any free one, and while all are held (more
    workers than GPUs) the run waits instead of sharing one. Yields (its CUDA_VISIBLE_DEVICES, seconds
    waited). Raises RuntimeError when fewer GPUs exist than one run needs."""
    available = visible_gpus()
    if gpus > len(available):
        raise RuntimeError(f"runner.gpus is {gpus} but only {len(available)} GPU(s) are visible")
    slices = [available[k * gpus:(k + 1) * gpus] for k in range(len(available) // gpus)]
    first = worker_index(worker) % len(slices)
    order = slices[first:] + slices[:first]
    locks_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for devices in order:
            lock = FileLock(str(locks_dir / f"gpu-{'-'.join(devices)}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield ",".join(devices), time.monotonic() - start
            finally:
                lock.release()
            return
        time.sleep(poll_s)
