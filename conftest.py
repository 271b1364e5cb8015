"""Repository-wide pytest configuration: GPU tests skip cleanly where CUDA is absent."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def _cuda_available() -> bool:
    # Import torch only when a gpu-marked test was actually collected, so plain
    # plugin test runs stay fast.
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)
