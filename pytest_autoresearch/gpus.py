"""GPUs for runners: count them with cuda-python (never torch: the plugin must stay light) and give
each xdist worker its own CUDA_VISIBLE_DEVICES slice."""

from __future__ import annotations

import os
from functools import cache


@cache
def device_count() -> int:
    """Visible CUDA devices; 0 without a driver or without cuda-python."""
    try:
        from cuda.bindings import driver  # lazy: loading the driver library is slow and may fail
        if driver.cuInit(0)[0] != driver.CUresult.CUDA_SUCCESS:
            return 0
        err, count = driver.cuDeviceGetCount()
        return int(count) if err == driver.CUresult.CUDA_SUCCESS else 0
    except Exception:  # ImportError, missing libcuda, ...
        return 0


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
