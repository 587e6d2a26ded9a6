"""CUDA's thread geometry and the intrinsics gpuad treats specially, by identity, in one place.

The interpreter finds thread ids through `THREAD_INDEX` calls; the engine reads thread
geometry (`cuda.threadIdx.x`...) as integers and refuses, inside differentiated functions, the
calls that only make sense in a kernel (atomics, local/shared/constant memory, barriers).
"""
from __future__ import annotations

import ast
import functools

from gpuad import api


@functools.cache
def cuda_intrinsics() -> tuple[tuple, tuple, dict]:
    """By identity: the thread-geometry owners (`cuda.threadIdx`...), the functions returning the
    global thread index, and the CUDA calls a differentiated function may not make (with why)."""
    from numba import cuda

    owners = (cuda.threadIdx, cuda.blockIdx, cuda.blockDim, cuda.gridDim)
    refused = {getattr(cuda.atomic, name): "atomic updates" for name in dir(cuda.atomic)
               if not name.startswith("_")}
    refused.update({cuda.local.array: "local arrays", cuda.shared.array: "shared memory",
                    cuda.const.array_like: "constant memory", cuda.syncthreads: "barriers"})
    return owners, (cuda.grid, api.thread_index), refused


def is_global_thread_index(callee, args: list, keywords: list) -> bool:
    """`cuda.grid(1)` or `gpuad.thread_index()`, from a call's resolved callee and its AST
    arguments: the thread's global id in a 1-D launch."""
    from numba import cuda

    if callee is api.thread_index:
        return not args and not keywords
    one = len(args) == 1 and isinstance(args[0], ast.Constant) and args[0].value == 1
    return callee is cuda.grid and one and not keywords
