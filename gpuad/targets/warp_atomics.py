"""Shadow updates on the GPU: atomics that a warp combines when all its lanes hit one element.

The reverse sweep adds into a `Duplicated` shadow with `atomic_add(d_a, k, v)`. When every
thread of the launch adds into the same few elements (the gradient of shared coefficients,
parameters or a loss), those atomics serialise on one address: 32 lanes of a warp issue 32
atomics one after the other. `warp_atomic_add` asks first whether the whole warp is here and
aims at one element; if so it sums the 32 values with shuffles and one lane issues one atomic.
Otherwise (a partial warp, or lanes on different elements, as in a scatter) every lane adds its
own value, exactly as before.

Why this is always safe: the test `activemask() == FULL` is made by lanes that execute it
together, so all 32 take the same branch and all reach the `*_sync` calls with the full mask;
lanes are only combined when the element *addresses* are equal (both 32-bit halves), so different arrays, or
different indices naming different elements, never merge. Only the order of the float
additions changes, which atomics never fixed anyway.

Where the engine proves that the lanes are on different elements (the index is the thread id plus
a constant, or a periodic neighbour of it: `gpuad.ad.site_facts`), it emits
`atomic_add_distinct`, bound here to `lane_atomic_add`: the atomic alone, as a hand-written
scatter does it, without the activemask, shuffle and vote that could never find lanes to combine.
"""
from __future__ import annotations

from numba import cuda, int32

from gpuad.compiler import numba_intrinsics

FULL_WARP = 0xFFFFFFFF


element_address = numba_intrinsics.cuda_element_address()


def warp_atomic_add(array, index, value):
    """`cuda.atomic.add(array, index, value)`, one atomic per warp when the warp agrees on the element.

    One atomic instruction on one address computation either way (the lane that issues it and
    the value it adds differ), and lanes on different elements (a scatter) leave after one
    32-bit shuffle: the low halves of their addresses already differ."""
    total, issue = value, True
    if cuda.activemask() == FULL_WARP:
        address = element_address(array, index)
        low, high = int32(address), int32(address >> 32)  # the halves (truncated)
        if cuda.all_sync(FULL_WARP, low == cuda.shfl_sync(FULL_WARP, low, 0)) and \
                cuda.all_sync(FULL_WARP, high == cuda.shfl_sync(FULL_WARP, high, 0)):
            total += cuda.shfl_xor_sync(FULL_WARP, total, 16)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 8)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 4)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 2)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 1)
            issue = cuda.laneid == 0
    if issue:
        cuda.atomic.add(array, index, total)


def lane_atomic_add(array, index, value):
    """`cuda.atomic.add` alone, for updates whose lanes are on different elements by construction
    (`primitives.atomic_add_distinct`: the index is the thread id plus a constant): combining could
    never apply, so the shuffle and vote that look for it are left out."""
    cuda.atomic.add(array, index, value)
