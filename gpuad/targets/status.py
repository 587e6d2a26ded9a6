"""The per-launch status array: how a kernel reports errors to the host.

Its layout is defined once, beside the primitives that write it (`gpuad.ad.primitives`). The
generated derivative writes FLAG..NEEDED when a bounded tape would overflow; the launcher
raises `TapeOverflow`.
"""
from __future__ import annotations

import math

import numpy as np

from gpuad.ad.primitives import (  # noqa: F401 - the layout, under the names launchers use
    BLOCK,
    CAPACITY,
    CHECKPOINT_OVERFLOW,
    FLAG,
    GRID,
    LINE,
    NEEDED,
    TAPE_OVERFLOW,
    TID,
)
from gpuad.ad.primitives import STATUS_SIZE as SIZE
from gpuad.errors import SourceLocation, TapeOverflow


def new_status() -> np.ndarray:
    return np.zeros(SIZE, dtype=np.int64)


def status_type():
    from numba.core import types

    return types.Array(types.int64, 1, "C")


def raise_for_status(status: np.ndarray, kernel_name: str, jobs, tape_capacity: int) -> None:
    """Raise for an error the launch reported; `jobs` are the launch's `JobFacts`.

    `tape_capacity` is the kernel's setting, in loop iterations; the status
    counts tape entries (a loop may tape several values per iteration).
    """
    if status[FLAG] == 0:
        return
    if status[FLAG] == TAPE_OVERFLOW:
        line, needed, holds = int(status[LINE]), int(status[NEEDED]), int(status[CAPACITY])
        enough = -(-tape_capacity * needed // max(holds, 1))
        filename, function = _loop_owner(jobs, line)
        raise TapeOverflow(
            f"a loop in kernel {kernel_name} needed {needed} tape entries per thread but the tape "
            f"holds {holds} (tape_capacity={tape_capacity} iterations); no result was written back",
            SourceLocation(filename, line, "loop", function),
            hint=f"raise the capacity: gpuad.kernel(tape_capacity={enough})",
        )
    if status[FLAG] == CHECKPOINT_OVERFLOW:
        line, ran, segment = int(status[LINE]), int(status[NEEDED]), int(status[CAPACITY])
        filename, function = _loop_owner(jobs, line)
        raise TapeOverflow(
            f"a checkpointed loop in kernel {kernel_name} ran {ran} iterations but tape_capacity="
            f"{segment} checkpoints at most {segment}*{segment} = {segment * segment}; no result was "
            "written back", SourceLocation(filename, line, "loop", function),
            hint=f"raise the capacity: gpuad.kernel(tape_capacity={math.isqrt(ran - 1) + 1})",
        )
    raise TapeOverflow(f"kernel {kernel_name} reported error code {status[FLAG]}")


def _loop_owner(jobs, line: int) -> tuple[str, str]:
    """File and name of the differentiated function whose loop at `line` overflowed."""
    for job in jobs:
        if f"_overflow(status, {line}," in job.source:
            return job.filename, job.function
    return "<unknown>", ""
