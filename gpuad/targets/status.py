"""The per-launch status array: how a kernel reports errors to the host.

Layout (int64): [0] error flag (1: tape overflow, 2: checkpointed loop
too long), [1] source line, [2] tape capacity, [3] entries (or iterations)
needed, [4] emulated thread index (cpu), [5] block size (cpu),
[6] grid size (cpu), [7] reserved. The generated derivative writes [0:4]
when a bounded tape would overflow; the launcher raises `TapeOverflow`.
"""
from __future__ import annotations

import math

import numpy as np

from gpuad.errors import SourceLocation, TapeOverflow

SIZE = 8
FLAG, LINE, CAPACITY, NEEDED, TID, BLOCK, GRID = range(7)
TAPE_OVERFLOW, CHECKPOINT_OVERFLOW = 1, 2


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
