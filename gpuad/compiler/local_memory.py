"""Per-thread local memory: what a kernel's PTX declares, checked against CUDA's limit.

A kernel's local frame holds its `cuda.local.array`s and the derivative's
tape (`tape_capacity` entries per loop with a run-time trip count, more for
nested loops). CUDA refuses a launch whose frame exceeds what a thread may
have with a bare CUDA_ERROR_INVALID_VALUE; gpuad says why before launching.

NVVM declares each function's frame in the PTX as
`.local .align 8 .b8 __local_depot0[SIZE];`. A thread needs its kernel's
frame plus, at the deepest call, the frames of the functions on that call
chain (NVVM usually inlines everything: then the kernel's is all). ptxas may
add register spills to this; the PTX figure is what the source asks for.
"""
from __future__ import annotations

import ast
import re

from gpuad.errors import LocalMemoryExceeded, SourceLocation

# CUDA C Programming Guide, "Technical Specifications per Compute Capability":
# 512 KiB of local memory per thread for every compute capability >= 2.0.
MAX_LOCAL_BYTES_PER_THREAD = 512 * 1024
# The cpu target compiles the CUDA pipeline to measure the frame only when the
# kernel may come near the limit (a tape or local array of this size or more).
CPU_CHECK_FROM_BYTES = 8 * 1024

_FUNCTION = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+|\.extern\s+)*\.(entry|func)\s+(?:\([^)]*\)\s*)?"
                       r"([\w$.]+)", re.M)
_LOCAL = re.compile(r"\.local\s+(?:\.align\s+\d+\s+)?\.[bsuf](\d+)\s+[\w$]+(?:\[(\d+)\])?")


def function_frames(ptx: str) -> dict[str, tuple[bool, int, str]]:
    """name -> (is an entry, bytes of its own `.local` declarations, its text)."""
    heads = list(_FUNCTION.finditer(ptx))
    frames = {}
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(ptx)
        body = ptx[head.end():end]
        own = sum(int(bits) // 8 * int(count or 1) for bits, count in _LOCAL.findall(body))
        name = head.group(2)
        if name not in frames or "{" in body:  # a definition replaces a prototype
            frames[name] = (head.group(1) == "entry", own, body if "{" in body else "")
    return frames


def local_frame_bytes(ptx: str) -> int:
    """The most per-thread local memory any kernel entry of `ptx` needs (0 when none)."""
    frames = function_frames(ptx)
    callees = {name: [c for c in frames if c != name and re.search(rf"(?<![\w$.]){re.escape(c)}(?![\w$])",
                                                                     body)]
               for name, (_, _, body) in frames.items()}
    memo: dict[str, int] = {}

    def need(name: str, chain: frozenset) -> int:
        if name not in memo:
            deeper = [need(c, chain | {name}) for c in callees[name] if c not in chain]
            memo[name] = frames[name][1] + max(deeper, default=0)
        return memo[name]

    return max((need(name, frozenset()) for name, (entry, _, _) in frames.items() if entry), default=0)


def check_frame(kernel_name: str, frame: int, tape_capacity: int | None,
                where: SourceLocation | None = None, limit: int = MAX_LOCAL_BYTES_PER_THREAD) -> None:
    """Raise `LocalMemoryExceeded` when a thread's frame is over the device's limit."""
    if frame <= limit:
        return
    from gpuad.ad import DEFAULT_TAPE_CAPACITY

    capacity = tape_capacity or DEFAULT_TAPE_CAPACITY
    raise LocalMemoryExceeded(
        f"kernel {kernel_name} needs {frame} bytes ({frame / 1024:.0f} KiB) of local memory per thread; "
        f"CUDA allows at most {limit} bytes ({limit // 1024} KiB) per thread (the launch would fail "
        f"with CUDA_ERROR_INVALID_VALUE). The tape holds tape_capacity={capacity} entries per loop "
        "with a run-time trip count", where,
        hint="checkpoint the loop (a `# gpuad: checkpoint` comment on its `for` line: the tape then "
        f"holds about sqrt(n) entries), or use a smaller tape_capacity (e.g. "
        f"{_fitting_capacity(capacity, frame, limit)}), or smaller cuda.local.arrays",
    )


def out_of_memory(kernel_name: str, frame: int, tape_capacity: int | None, resident_threads: int | None,
                  where: SourceLocation | None = None) -> LocalMemoryExceeded:
    """The error for a launch CUDA refused with CUDA_ERROR_OUT_OF_MEMORY: CUDA reserves the
    per-thread frame for every thread the GPU can hold at once, not only the launched ones."""
    from gpuad.ad import DEFAULT_TAPE_CAPACITY

    capacity = tape_capacity or DEFAULT_TAPE_CAPACITY
    reserve = (f" x {resident_threads} resident threads = {frame * resident_threads / 2**30:.1f} GiB"
               if resident_threads else "")
    return LocalMemoryExceeded(
        f"the GPU ran out of memory launching kernel {kernel_name}: it needs {frame} bytes "
        f"({frame / 1024:.0f} KiB) of local memory per thread, which CUDA reserves for every thread the "
        f"device can run at once ({frame} B{reserve}), on top of the arrays and of other processes on "
        f"this GPU. The tape holds tape_capacity={capacity} entries per loop with a run-time trip count",
        where,
        hint="checkpoint the loop (a `# gpuad: checkpoint` comment on its `for` line), use a smaller "
        f"tape_capacity (e.g. {max(1, capacity // 4)}) or smaller cuda.local.arrays, or free GPU memory",
    )


def _fitting_capacity(capacity: int, frame: int, limit: int) -> int:
    """A capacity that would fit if the frame shrank in proportion to it."""
    return max(1, capacity * limit // frame // 2)


def check_launch(kernel, argtypes: tuple) -> None:
    """Before a launch on either target: the kernel's frame, measured in its CUDA PTX, fits.

    The cpu target emulates CUDA, so it refuses the same kernels; it compiles
    the CUDA pipeline for that only where the kernel may come near the limit.
    """
    from gpuad.errors import GpuadError
    from gpuad.targets import default_target

    if (kernel.target or default_target()) == "cpu":
        if _estimate(kernel) < CPU_CHECK_FROM_BYTES:
            return
        try:
            record = kernel._compile_cuda(argtypes, kernel.arch, kernel.fastmath).record
        except GpuadError:  # not for CUDA: the cpu launch reports its own errors
            return
    else:
        record = kernel._compile_cuda(argtypes, kernel._device_arch(), kernel.fastmath).record
    check_frame(kernel.name, record.local_memory_bytes, kernel.tape_capacity, kernel._location())


def _estimate(kernel) -> int:
    """A cheap lower bound of the frame: one 8-byte tape, and the kernel's literal local arrays."""
    from gpuad.ad import DEFAULT_TAPE_CAPACITY

    tape = 8 * (kernel.tape_capacity or DEFAULT_TAPE_CAPACITY)
    return tape + 8 * sum(_literal_local_arrays(kernel.pyfunc))


def _literal_local_arrays(pyfunc) -> list[int]:
    """Element counts of `<...>.local.array(<int or tuple of ints>, ...)` calls in the kernel."""
    from gpuad.errors import InterpretError
    from gpuad.source import function_source  # not the interpreter's: it sits above the record

    counts = []
    tree = function_source(pyfunc, InterpretError, "define kernels and the functions they call in a file or "
                           "notebook cell, not with exec() or lambda").tree
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                and node.func.attr == "array" and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "local"):
            continue
        shape = node.args[0]
        dims = shape.elts if isinstance(shape, ast.Tuple) else [shape]
        if all(isinstance(d, ast.Constant) and isinstance(d.value, int) for d in dims):
            size = 1
            for d in dims:
                size *= d.value
            counts.append(size)
    return counts
