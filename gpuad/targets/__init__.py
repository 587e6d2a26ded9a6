"""Stage 6: where kernels run. `cuda` on a GPU, `cpu` through numba everywhere."""
from __future__ import annotations

import os

TARGETS = ("cuda", "cpu")


def default_target() -> str:
    """cuda when a GPU is usable, else cpu; GPUAD_TARGET overrides."""
    from gpuad.compiler.numba_adapter import gpu_available

    forced = os.environ.get("GPUAD_TARGET")
    if forced:
        return check_target(forced, "GPUAD_TARGET")
    return "cuda" if gpu_available() else "cpu"


def check_target(name: str, source: str = "target") -> str:
    if name not in TARGETS:
        from gpuad.errors import LaunchError

        raise LaunchError(f"{source}={name!r} is not a gpuad target (the targets are cuda and cpu)",
                          hint="use 'cuda' or 'cpu'" if source == "target" else
                          f"set {source} to cuda or cpu, or unset it")
    return name
