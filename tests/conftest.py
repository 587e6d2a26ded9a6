"""Shared test set-up: the `gpu` marker skips without a usable GPU; the on-disk kernel cache is
off unless a test turns it on (a hit would replace the stage timings tests look at)."""
import os

import pytest

os.environ.setdefault("GPUAD_CACHE", "0")


def pytest_collection_modifyitems(config, items):
    from gpuad.compiler.numba_adapter import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
