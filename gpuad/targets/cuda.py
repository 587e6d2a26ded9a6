"""The cuda target: overlays for kernels on the GPU, the driver's hooks for stages 3-5, and stage 6.

Lowering runs without a GPU (numba-cuda and NVVM from PyPI wheels), so every
user sees the IR and PTX; only launching needs a device.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from numba import cuda

from gpuad import api
from gpuad.ad import primitives
from gpuad.ad.primitives import (
    CHECKPOINT_OVERFLOW,
    FLAG,
    LINE,
    NEEDED,
    NEEDED_INTS,
    RAN,
    TAPE_OVERFLOW,
)
from gpuad.compiler import lineinfo, numba_adapter, numba_intrinsics
from gpuad.compiler.emit import emit_ptx, parse_arch
from gpuad.compiler.jobs import DeferredJob, JobRegistry
from gpuad.compiler.link import JobModule, link_deferred
from gpuad.compiler.llvm_text import merge_texts
from gpuad.errors import EmissionError
from gpuad.interpreter import DeferredSite
from gpuad.method_table import CUDA
from gpuad.record import CompilationRecord
from gpuad.targets import block_shadows
from gpuad.targets import status as status_array
from gpuad.targets.warp_atomics import lane_atomic_add, warp_atomic_add


def cuda_thread_index():
    """`gpuad.thread_index()` on the GPU."""
    return cuda.grid(1)


def cuda_report(status, flag, line, ran, floats, ints):
    """`primitives.report` for many threads at once: atomics keep the largest needs."""
    if cuda.atomic.cas(status, FLAG, 0, flag) == 0:
        status[LINE] = line
    cuda.atomic.max(status, RAN, ran)
    cuda.atomic.max(status, NEEDED, floats)
    cuda.atomic.max(status, NEEDED_INTS, ints)


def cuda_report_tape_overflow(status, line, ran, floats, ints):
    cuda_report(status, TAPE_OVERFLOW, line, ran, floats, ints)


def cuda_report_checkpoint_overflow(status, line, ran, floats, ints):
    cuda_report(status, CHECKPOINT_OVERFLOW, line, ran, floats, ints)


def _install_overlays() -> None:
    CUDA.add(api.thread_index, cuda_thread_index)
    CUDA.add(primitives.atomic_add, warp_atomic_add)
    CUDA.add(primitives.atomic_add_distinct, lane_atomic_add)
    CUDA.add(primitives.tape_alloc, cuda.local.array, spelled=(cuda, "local.array"))
    CUDA.add(primitives.guarded_mul, numba_intrinsics.cuda_guarded_mul(), listed=False)
    CUDA.add(primitives.guarded_add_mul, numba_intrinsics.cuda_guarded_add_mul(), listed=False)
    CUDA.add(primitives.report_tape_overflow, cuda_report_tape_overflow)
    CUDA.add(primitives.report_checkpoint_overflow, cuda_report_checkpoint_overflow)
    CUDA.mark_builtin()


_install_overlays()


@dataclass
class LoweredKernel:
    """Stage 3's artefact: the kernel module as lowered, markers included."""

    symbol: str
    ir_text: str
    argtypes: tuple


@dataclass
class CudaTarget:
    """The driver's hooks for the GPU (`gpuad.compiler.driver.Target`): numba-cuda lowers to
    LLVM IR, gpuad's linker links the jobs' modules, NVVM emits PTX.

    `thread_ownership=False` keeps every shadow update atomic, for launches
    that break `ownership_holds`. `block_shadows`: parameter positions whose shadows each block
    accumulates in shared memory first (`block_shadows.py`).
    """

    arch: str = "sm_90"
    fastmath: bool = False
    thread_ownership: bool = True
    block_shadows: tuple = ()
    # numba-cuda's line info, read into the record's line map and then removed (`lineinfo.py`).
    lineinfo: bool = True
    name = "cuda"
    table = CUDA

    @property
    def cc(self) -> tuple[int, int]:
        return parse_arch(self.arch)

    def bind_function(self, resolved):
        return numba_adapter.device_function(resolved.pyfunc, lineinfo=self.lineinfo)

    def bind_site(self, site: DeferredSite, jobs: JobRegistry):
        def job_for_types(flat_types):
            job = jobs.job_for(site, flat_types)
            return job.id, job.return_type, job.flat_types

        return numba_adapter.deferred_call_intrinsic(job_for_types, f"autodiff_deferred_{site.id}")

    def lower_job(self, job: DeferredJob, resolved) -> None:
        argtypes = tuple(_unliteral(t) for t in job.flat_types)
        lowered = numba_adapter.lower_cuda(resolved.pyfunc, argtypes, kernel=False, cc=self.cc,
                                           fastmath=self.fastmath, lineinfo=self.lineinfo)
        job.flat_types = argtypes
        job.symbol, job.return_type = lowered.symbol, lowered.return_type
        job.ir_text = merge_texts(lowered.modules).text()

    def lower(self, resolved, argtypes: tuple) -> LoweredKernel:
        full_types = (*argtypes, status_array.status_type())
        kernel = resolved.pyfunc
        if self.block_shadows:
            params = list(inspect.signature(kernel).parameters)
            dtype = argtypes[self.block_shadows[0]].dtype
            kernel = block_shadows.wrap_kernel(numba_adapter.device_function(kernel, self.lineinfo), params,
                                               self.block_shadows, dtype)
        lowered = numba_adapter.lower_cuda(kernel, full_types, kernel=True, cc=self.cc,
                                           fastmath=self.fastmath, lineinfo=self.lineinfo)
        return LoweredKernel(lowered.symbol, merge_texts(lowered.modules).text(), full_types)

    def link(self, lowered: LoweredKernel, jobs: JobRegistry) -> str:
        def job_module(job_id: int) -> JobModule:
            job = jobs.by_id(job_id)
            return JobModule(job.ir_text, job.symbol)

        return link_deferred(lowered.ir_text, job_module).ir_text

    def emit(self, linked: str) -> str:
        if not self.lineinfo:
            return emit_ptx(linked, arch=self.arch, fastmath=self.fastmath)
        try:
            return emit_ptx(lineinfo.locations_only(linked), arch=self.arch, fastmath=self.fastmath)
        except EmissionError:
            # The line table only serves the viewer: where NVVM refuses the debug info that is
            # left, the PTX is emitted without it (its lines then map to no source line), and a
            # module NVVM refuses for another reason is refused again, as it would be without.
            return emit_ptx(lineinfo.strip_ir(linked).text, arch=self.arch, fastmath=self.fastmath)

    def record(self, output, pyfunc) -> CompilationRecord:
        """The compilation record of a kernel the driver compiled for this target."""
        jobs = output.jobs.jobs
        before, after, ptx = (lineinfo.strip_ir(output.lowered.ir_text), lineinfo.strip_ir(output.linked),
                              lineinfo.strip_ptx(output.emitted))
        return CompilationRecord(
            kernel_name=pyfunc.__name__, target="cuda", arch=self.arch,
            signature=tuple(str(t) for t in output.lowered.argtypes[:-1]),
            source=inspect.getsource(pyfunc),
            overlays=list(output.pipeline.interpreter.overlays),
            jobs=[job.record() for job in jobs],
            adjoint_sources={job.id: job.derivative.source for job in jobs},
            ir_before_link=before.text, ir_after_link=after.text, ptx=ptx.text,
            timings=output.timings,
            line_map=lineinfo.line_map({"ir_before_link": before, "ir_after_link": after, "ptx": ptx},
                                       _shown_sources(pyfunc, jobs),
                                       {job.id: job.derivative.source for job in jobs}),
        )


def _shown_sources(pyfunc, jobs) -> dict:
    """Where each source the viewer shows starts: the kernel, each differentiated function
    (`job N`) and each generated derivative (`derivative N`, from its first line)."""
    shown = {"kernel": lineinfo.python_source(pyfunc)}
    for job in jobs:
        shown[f"job {job.id}"] = lineinfo.python_source(job.site.function)
        shown[f"derivative {job.id}"] = (os.path.abspath(job.derivative.filename), 1)
    return {name: where for name, where in shown.items() if where is not None}


def _unliteral(t):
    from numba.core import types

    return types.unliteral(t)


def load_ptx(ptx: str, symbol: str, argtypes: tuple, checks_status: bool) -> numba_adapter.PtxKernel:
    return numba_adapter.PtxKernel(ptx, symbol, argtypes, status_array.SIZE, checks_status)


def ownership_holds(griddim, blockdim, args) -> bool:
    """Whether a launch keeps what dropping atomics assumed (`gpuad.interpreter.site_ownership`).

    `cuda.grid(1)` is unique per thread only in a 1-D grid of 1-D blocks, and
    an exclusive shadow is only exclusive if no other array argument shares
    its memory.
    """
    if not (_is_1d(griddim) and _is_1d(blockdim)):
        return False
    spans = sorted(s for s in map(numba_adapter.memory_span, args) if s is not None)
    return all(a[2] <= b[1] or a[0] != b[0] for a, b in zip(spans, spans[1:]))


def _is_1d(dim) -> bool:
    return not isinstance(dim, tuple) or all(d == 1 for d in dim[1:])


def launch(kernel: numba_adapter.PtxKernel, griddim, blockdim, args, on_status,
           groups=(), writes=None, defer: bool = False, shared_bytes: int = 0):
    """Run on the current GPU; `on_status(status)` may raise before write-back.

    `groups` (`launch.host_array_groups`) are positions of numpy arguments
    sharing one buffer: each group is copied to the device once, and copied
    back only if the kernel may write it (`writes`) and the array is writeable.
    With `defer`, a launch of a kernel that checks its status and copies
    nothing back returns its `status.InFlight` unread; otherwise None. `shared_bytes`: dynamic
    shared memory per block (`block_shadows`).
    """
    if not groups:  # device arrays and scalars only: nothing to copy
        return kernel(griddim, blockdim, args, on_status, defer, shared_bytes)
    writes = [True] * len(args) if writes is None else writes
    device_args, write_back = list(args), []
    for group in groups:
        first = args[group[0]]
        targets = [k for k in group if args[k].flags.writeable]
        if len(group) == 1 and targets and writes[group[0]]:
            continue  # numba-cuda copies it in and back, as for any numpy argument
        copy = cuda.to_device(first)
        for k in group:
            device_args[k] = copy
        if targets and any(writes[k] for k in targets):
            write_back.append((args[targets[0]], copy))
    flight = kernel(griddim, blockdim, tuple(device_args), on_status, defer and not write_back, shared_bytes)
    for original, copy in write_back:
        copy.copy_to_host(original)
    return flight


def resident_threads() -> int | None:
    """How many threads the current GPU holds at once (CUDA reserves local memory for all)."""
    try:
        device = cuda.get_current_device()
        return device.MULTIPROCESSOR_COUNT * device.MAX_THREADS_PER_MULTI_PROCESSOR
    except Exception:  # noqa: BLE001 - only used to word an error
        return None
