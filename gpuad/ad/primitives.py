"""Target-specific operations used by generated derivative code, as plain Python.

The compiler spine replaces these per target through its overlay tables
(CUDA: `cuda.atomic.add`, `cuda.local.array`); as written here they run in
pure Python and compile unchanged with `numba.njit` on the CPU.
"""
from __future__ import annotations

import numpy as np

# The per-launch status array (int64), written by generated code and read by the host
# (`gpuad.targets.status`): [FLAG] error (TAPE_OVERFLOW or CHECKPOINT_OVERFLOW) and [LINE] the
# loop's source line, the first report's; the largest of every report (every thread's): [RAN]
# iterations of the longest checkpointed loop, [NEEDED] float and [NEEDED_INTS] int tape entries
# needed. The cpu target keeps its emulated [TID] thread index, [BLOCK] block size and [GRID] grid
# size there too.
STATUS_SIZE = 8
FLAG, LINE, RAN, NEEDED, TID, BLOCK, GRID, NEEDED_INTS = range(8)
TAPE_OVERFLOW, CHECKPOINT_OVERFLOW = 1, 2


def atomic_add(array, index, value):
    """`array[index] += value`, atomically where other threads may touch it.

    `index` is an int for 1-D arrays or a tuple of ints for n-D arrays.
    """
    array[index] += value


def atomic_add_distinct(array, index, value):
    """`atomic_add` where the lanes of a warp that run it together add into different elements
    (the index is the thread id plus a constant: `gpuad.ad.site_facts`), so the cuda target issues
    the atomic alone, without first looking for lanes to combine (`gpuad.targets.warp_atomics`)."""
    array[index] += value


# The shadow updates of generated adjoints; forward over reverse and activity treat them alike.
ATOMIC_ADDS = (atomic_add, atomic_add_distinct)


def guarded_mul(factor, partial):
    """`factor * partial`, where a zero factor (an adjoint or tangent) contributes nothing, even
    times an infinite partial (`1.0 / x` unused, `sqrt(q)` on the branch not taken at q == 0): no
    0 * inf NaN, and reverse agrees with forward.

    A call rather than an `if` around the update: numba then sees straight-line code, whose
    compile time grows linearly with its length (each `if` adds blocks that its SSA and
    liveness passes revisit for every variable), and forward mode differentiates the product by
    its rule (`gpuad.ad.rules`), where an `if` on the factor would drop the factor's own tangent
    at a zero factor.
    """
    return factor * partial if factor != 0 else factor


def guarded_add_mul(acc, factor, partial):
    """`acc + factor * partial`, where a zero factor adds nothing: `acc + guarded_mul(factor,
    partial)` in one step (up to the sign of a zero sum), for every update that adds a guarded
    term to a value.

    With the guard's select between the multiply and the add, NVVM cannot fuse them; here the
    select takes `acc + factor * partial` or `acc`, so the multiply-add contracts to one fma
    (rounded once, as NVVM rounds the `a * b + c` of hand-written kernels). Its rules
    (`gpuad.ad.rules`) are those of `acc + guarded_mul(factor, partial)`.
    """
    return acc + factor * partial if factor != 0 else acc


def tape_alloc(n, dtype):
    """A per-thread scratch array of `n` elements (`n` an int literal in the source)."""
    return np.zeros(n, dtype)


def report_tape_overflow(status, line, ran, floats, ints):
    """Record that a tape needed `floats` and `ints` entries, more than one of its stacks holds;
    `ran`: iterations of the longest checkpointed loop.

    `status` is an int64 array (layout above); the first report gives the line, the needs are the
    largest of all reports (so the host's hint suffices for the whole launch). The host raises
    `gpuad.errors.TapeOverflow` when status[FLAG] != 0.
    """
    report(status, TAPE_OVERFLOW, line, ran, floats, ints)


def report_checkpoint_overflow(status, line, ran, floats, ints):
    """Record that a checkpointed loop ran `ran` iterations, more than tape_capacity**2 (the rest
    as in `report_tape_overflow`)."""
    report(status, CHECKPOINT_OVERFLOW, line, ran, floats, ints)


def report(status, flag, line, ran, floats, ints):
    if status[FLAG] == 0:
        status[FLAG] = flag
        status[LINE] = line
    if ran > status[RAN]:
        status[RAN] = ran
    if floats > status[NEEDED]:
        status[NEEDED] = floats
    if ints > status[NEEDED_INTS]:
        status[NEEDED_INTS] = ints
