"""Target-specific operations used by generated derivative code, as plain Python.

The compiler spine replaces these per target through its overlay tables
(CUDA: `cuda.atomic.add`, `cuda.local.array`); as written here they run in
pure Python and compile unchanged with `numba.njit` on the CPU.
"""
from __future__ import annotations

import numpy as np


def atomic_add(array, index, value):
    """`array[index] += value`, atomically where other threads may touch it.

    `index` is an int for 1-D arrays or a tuple of ints for n-D arrays.
    """
    array[index] += value


def tape_alloc(n, dtype):
    """A per-thread scratch array of `n` elements (`n` an int literal in the source)."""
    return np.zeros(n, dtype)


def report_tape_overflow(status, line, capacity, needed):
    """Record that a tape of `capacity` entries needed `needed`.

    `status` is an int64 array: [flag, line, capacity, needed, ...]; the first
    overflow gives line and capacity, `needed` is the largest of all threads
    (so the host's hint suffices for the whole launch). The host raises
    `gpuad.errors.TapeOverflow` when status[0] != 0.
    """
    report(status, 1, line, capacity, needed)


def report_checkpoint_overflow(status, line, capacity, needed):
    """Record that a checkpointed loop ran `needed` iterations, more than `capacity`**2."""
    report(status, 2, line, capacity, needed)


def report(status, flag, line, capacity, needed):
    if status[0] == 0:
        status[0] = flag
        status[1] = line
        status[2] = capacity
    if needed > status[3]:
        status[3] = needed
