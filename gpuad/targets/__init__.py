"""Stage 6: where kernels run. `cuda` on a GPU, `cpu` through numba everywhere."""
from __future__ import annotations

import os

TARGETS = ("cuda", "cpu")


def default_target() -> str:
    """cuda when a GPU is usable, else cpu; GPUAD_TARGET overrides."""
    from gpuad.compiler.numba_adapter import gpu_available

    forced = os.environ.get("GPUAD_TARGET")
    if forced:
        return check_target(forced)
    return "cuda" if gpu_available() else "cpu"


def check_target(name: str) -> str:
    if name not in TARGETS:
        from gpuad.errors import LaunchError

        raise LaunchError(f"unknown target {name!r}", hint="use 'cuda' or 'cpu'")
    return name
