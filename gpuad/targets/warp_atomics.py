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
lanes are only combined when the element *addresses* are equal, so different arrays, or
different indices naming different elements, never merge. Only the order of the float
additions changes, which atomics never fixed anyway.
"""
from __future__ import annotations

from numba import cuda

from gpuad.compiler import numba_intrinsics

FULL_WARP = 0xFFFFFFFF


element_address = numba_intrinsics.cuda_element_address()


def warp_atomic_add(array, index, value):
    """`cuda.atomic.add(array, index, value)`, one atomic per warp when the warp agrees on the element."""
    mask = cuda.activemask()
    if mask == FULL_WARP:
        address = element_address(array, index)
        if cuda.all_sync(FULL_WARP, address == cuda.shfl_sync(FULL_WARP, address, 0)):
            total = value
            total += cuda.shfl_xor_sync(FULL_WARP, total, 16)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 8)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 4)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 2)
            total += cuda.shfl_xor_sync(FULL_WARP, total, 1)
            if cuda.laneid == 0:
                cuda.atomic.add(array, index, total)
            return
    cuda.atomic.add(array, index, value)
