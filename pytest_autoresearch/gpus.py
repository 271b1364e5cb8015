"""GPUs for runners: count them through the CUDA driver library itself (never torch, nor any package: the
plugin must stay light and install anywhere) and give each xdist worker its own CUDA_VISIBLE_DEVICES slice."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

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


def visible_count() -> int:
    """GPUs a runner could be given: the entries of CUDA_VISIBLE_DEVICES where it is set, else the driver's count."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return len([d for d in inherited.split(",") if d.strip()])
    return device_count()


def auto_gpus() -> int:
    """runner.gpus: auto: one GPU where one exists, none otherwise (a CPU machine, a Mac)."""
    return 1 if visible_count() > 0 else 0


def worker_index(worker: str) -> int:
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def visible_devices(worker: str, gpus: int) -> str:
    """The CUDA_VISIBLE_DEVICES value giving this worker `gpus` devices of its own (wrapping around
    when there are more workers than GPU slices). Raises RuntimeError when too few GPUs exist."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    available = [d for d in inherited.split(",") if d.strip()] if inherited else [str(i) for i in range(device_count())]
    if gpus > len(available):
        raise RuntimeError(f"runner.gpus is {gpus} but only {len(available)} GPU(s) are visible")
    slices = len(available) // gpus
    first = (worker_index(worker) % slices) * gpus
    return ",".join(available[first:first + gpus])
