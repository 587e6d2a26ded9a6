"""Shared shadows reduced per block before they reach global memory (the cuda target).

When every thread of a launch adds into the same few shadow elements (the gradient of shared
coefficients, parameters or a loss: `Duplicated(c, dc)` with `dc` a kernel parameter), global
atomics on those elements serialise the whole grid. The hand-written structure is a per-block
accumulator: gpuad gives each block a copy of the shadow in shared memory (zeroed, then the
derivative's atomics land there and warps combine theirs, `warp_atomics`), and after the
kernel's body every block adds its copy into the real shadow: one global atomic per block per
non-zero element.

The kernel becomes a wrapper around its body (called as a device function, so a `return` in
the body ends the body only and every thread reaches both barriers):

    zero the block's copies; syncthreads; body(..., copy of dc, ...); syncthreads; flush

When that is right (`reducible_shadows`, decided from the kernel's source; `launch_bytes`,
from the launch's arguments):
- the shadow parameter is used in the kernel only as the shadow of `Duplicated` arguments of
  reverse-mode `autodiff` calls: nothing in the kernel reads it, so nobody can see the partial
  sums, and forward mode (which reads tangents) never meets a zeroed copy;
- each such call differentiates a function that writes no memory: its reverse sweep only
  *adds* into the shadows of the arrays it reads (stores and increments would read and zero
  shadow elements, which the copy does not hold);
- the kernel declares no shared memory of its own (the copies use dynamic shared memory);
- at launch: the shadows are 1-D, C-contiguous, of one float dtype, overlap no other argument,
  and fit `MAX_BYTES` together. Otherwise the launch runs the kernel without copies.
"""
from __future__ import annotations

import ast
import functools

import numpy as np

# Small shadows only (coefficients, parameters, a loss): every block zeroes and scans its copy,
# and shared memory taken from every block lowers how many blocks an SM holds.
MAX_BYTES = 4 * 1024
_REVERSE_MODES = ("Reverse", "ReverseWithPrimal")


@functools.lru_cache(maxsize=512)
def reducible_shadows(pyfunc) -> tuple[int, ...]:
    """Parameter positions of the kernel whose shadows may be reduced per block (see above)."""
    from gpuad.ad.normalize import may_write_memory
    from gpuad.interpreter import name_uses, static_value
    from gpuad.targets.launch import duplicated_arguments

    parsed, namespace, locals_, duplicated = duplicated_arguments(pyfunc)
    tree = parsed.tree
    if any(isinstance(n, ast.Attribute) and n.attr in ("shared", "syncthreads") for n in ast.walk(tree)):
        return ()
    params = [a.arg for a in tree.args.args]
    shadow_uses: dict[str, set] = {}  # parameter name -> the Name nodes that pass it as a shadow
    for found in duplicated:
        try:
            mode = static_value(found.call.args[0], namespace, locals_)
            fn = static_value(found.call.args[1], namespace, locals_)
        except Exception:  # noqa: BLE001 - not static: stage 1 says what is wrong
            continue
        if getattr(mode, "name", None) not in _REVERSE_MODES or may_write_memory(fn):
            continue
        primal, shadow = found.arg.args
        if (isinstance(primal, ast.Name) and isinstance(shadow, ast.Name) and shadow.id in params
                and primal.id != shadow.id):
            shadow_uses.setdefault(shadow.id, set()).add(id(shadow))
    uses = name_uses(tree)
    return tuple(sorted(
        params.index(name) for name, passed in shadow_uses.items()
        if all(id(use) in passed and isinstance(use.ctx, ast.Load) for use, _ in uses.get(name, []))
    ))


def eligible_types(positions: tuple[int, ...], argtypes: tuple) -> tuple[int, ...]:
    """Those of `positions` whose type allows a copy: 1-D C-contiguous arrays of the same float
    dtype (one dynamic shared-memory region holds them all)."""
    from numba.core import types

    def fits(ty) -> bool:
        return (isinstance(ty, types.Array) and ty.ndim == 1 and ty.layout == "C" and ty.mutable
                and ty.dtype in (types.float32, types.float64))

    kept = tuple(p for p in positions if fits(argtypes[p]))
    dtypes = {argtypes[p].dtype for p in kept}
    return kept if len(dtypes) == 1 else ()


def launch_bytes(positions: tuple[int, ...], args) -> int:
    """Dynamic shared memory the copies need for this launch; 0: launch without copies."""
    from gpuad.compiler import numba_adapter

    if not positions:
        return 0
    total = sum(args[p].size * args[p].dtype.itemsize for p in positions)
    if total == 0 or total > MAX_BYTES:
        return 0
    spans = [numba_adapter.memory_span(a) for a in args]
    for p in positions:  # a copy is only the shadow if no other argument is the same memory
        mine = spans[p]
        if mine is None or any(other is not None and k != p and other[0] == mine[0]
                               and other[1] < mine[2] and mine[1] < other[2]
                               for k, other in enumerate(spans)):
            return 0
    return int(total)


def wrap_kernel(body, params: list[str], positions: tuple[int, ...], dtype):
    """The kernel that runs `body` (a device function taking `params`, the status array last)
    with block copies of the shadows at `positions`."""
    from numba import cuda

    names = [f"a{k}" for k in range(len(params))]  # the wrapper's own names: no clash possible
    lines = [f"def block_reduced({', '.join(names)}):",
             "    buf = cuda.shared.array(0, dtype)",
             "    t = cuda.threadIdx.x + cuda.blockDim.x * (cuda.threadIdx.y"
             " + cuda.blockDim.y * cuda.threadIdx.z)",
             "    nt = cuda.blockDim.x * cuda.blockDim.y * cuda.blockDim.z",
             "    o0 = 0"]
    args = list(names)
    for k, p in enumerate(positions):
        lines += [f"    for e in range(t, a{p}.shape[0], nt):",
                  f"        buf[o{k} + e] = 0",
                  f"    c{k} = buf[o{k}:o{k} + a{p}.shape[0]]",
                  f"    o{k + 1} = o{k} + a{p}.shape[0]"]
        args[p] = f"c{k}"
    lines += ["    cuda.syncthreads()", f"    body({', '.join(args)})", "    cuda.syncthreads()"]
    for k, p in enumerate(positions):
        lines += [f"    for e in range(t, a{p}.shape[0], nt):",
                  f"        v = buf[o{k} + e]",
                  "        if v != 0:",
                  f"            cuda.atomic.add(a{p}, e, v)"]
    namespace = {"cuda": cuda, "body": body, "dtype": dtype, "np": np}
    exec(compile("\n".join(lines) + "\n", "<gpuad block-reduced kernel>", "exec"), namespace)
    return namespace["block_reduced"]
