"""The per-launch status array: how a kernel reports errors to the host.

Layout (int64): [0] error flag, [1] source line, [2] tape capacity,
[3] entries needed, [4] emulated thread index (cpu), [5] block size (cpu),
[6] grid size (cpu), [7] reserved. The generated derivative writes [0:4]
when a bounded tape would overflow; the launcher raises `TapeOverflow`.
"""
from __future__ import annotations

import numpy as np

from gpuad.errors import SourceLocation, TapeOverflow

SIZE = 8
FLAG, LINE, CAPACITY, NEEDED, TID, BLOCK, GRID = range(7)
TAPE_OVERFLOW = 1


def new_status() -> np.ndarray:
    return np.zeros(SIZE, dtype=np.int64)


def status_type():
    from numba.core import types

    return types.Array(types.int64, 1, "C")


def raise_for_status(status: np.ndarray, kernel_name: str, jobs) -> None:
    """Raise for an error the launch reported; `jobs` are the launch's deferred jobs."""
    if status[FLAG] == 0:
        return
    if status[FLAG] == TAPE_OVERFLOW:
        line = int(status[LINE])
        raise TapeOverflow(
            f"a loop in kernel {kernel_name} needed {status[NEEDED]} tape entries per thread "
            f"but the tape holds {status[CAPACITY]}; no result was written back",
            SourceLocation(_file_of_loop(jobs, line), line, "loop"),
            hint=f"raise the capacity: gpuad.kernel(tape_capacity={int(status[NEEDED])})",
        )
    raise TapeOverflow(f"kernel {kernel_name} reported error code {status[FLAG]}")


def _file_of_loop(jobs, line: int) -> str:
    """The file of the differentiated function whose loop at `line` overflowed."""
    for job in jobs:
        if f"report_tape_overflow(status, {line}," in job.derivative.source:
            return job.site.function.__code__.co_filename
    return "<unknown>"
