"""The cpu target: the same kernel source run by numba on the CPU.

Threads run one after another; the thread index is emulated through the
status array (see `status.py`), so atomics become plain adds. Deferred call
sites call the generated derivative directly (there is no marker to link on
the CPU); the IR and PTX a user sees still come from the cuda pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuad import api
from gpuad.ad import primitives
from gpuad.compiler import numba_adapter
from gpuad.compiler.jobs import DeferredJob, JobRegistry
from gpuad.interpreter import DeferredSite, Interpreter
from gpuad.method_table import CPU
from gpuad.targets import status as st


# Thread-index emulation: these take the status array as the interpreter's
# hidden parameter, which carries the emulated thread index (see status.py).
def cpu_thread_index(_gpuad_status):
    return _gpuad_status[4]


def cpu_grid(ndim, _gpuad_status):
    return _gpuad_status[4]


def cpu_thread_idx_x(_gpuad_status):
    return _gpuad_status[4] % _gpuad_status[5]


def cpu_block_idx_x(_gpuad_status):
    return _gpuad_status[4] // _gpuad_status[5]


def cpu_block_dim_x(_gpuad_status):
    return _gpuad_status[5]


def cpu_grid_dim_x(_gpuad_status):
    return _gpuad_status[6]


def cpu_atomic_add(array, index, value):
    old = array[index]
    array[index] += value
    return old


def cpu_local_array(shape, dtype):
    return np.empty(shape, dtype)


def _install_overlays() -> None:
    from numba import cuda

    CPU.add(api.thread_index, cpu_thread_index, needs_context=True)
    CPU.add(cuda.grid, cpu_grid, needs_context=True)
    for owner, replacement in [
        (cuda.threadIdx, cpu_thread_idx_x),
        (cuda.blockIdx, cpu_block_idx_x),
        (cuda.blockDim, cpu_block_dim_x),
        (cuda.gridDim, cpu_grid_dim_x),
    ]:
        CPU.add_attribute(owner, "x", replacement, needs_context=True)
    CPU.add(cuda.atomic.add, cpu_atomic_add)
    CPU.add(primitives.atomic_add, cpu_atomic_add)
    CPU.add(cuda.local.array, cpu_local_array)
    CPU.add(primitives.tape_alloc, cpu_local_array)


_install_overlays()


def new_registry(tape_capacity=None) -> tuple[Interpreter, JobRegistry]:
    """An interpreter and job registry whose jobs become numba CPU functions."""
    interp: Interpreter

    def compile_job(job: DeferredJob) -> None:
        resolved = interp.resolve(job.derivative.function)
        job.compiled = numba_adapter.cpu_jit(resolved.pyfunc)

    registry = JobRegistry(compile_job, tape_capacity)

    def bind_site(site: DeferredSite):
        return _site_function(site, registry)

    interp = Interpreter(CPU, lambda resolved: numba_adapter.cpu_jit(resolved.pyfunc), bind_site)
    return interp, registry


def _site_function(site: DeferredSite, registry: JobRegistry):
    """A stub whose numba overload calls the job's derivative for the argument types."""
    from numba.core import types
    from numba.extending import overload

    arity = sum(a.arity for a in site.activities) + 1
    params = ", ".join(f"a{i}" for i in range(arity))
    namespace: dict = {}
    exec(f"def autodiff_deferred_{site.id}({params}):\n    pass", namespace)  # noqa: S102
    stub = namespace[f"autodiff_deferred_{site.id}"]

    def implementation(flat_types):
        job = registry.job_for(site, tuple(types.unliteral(t) for t in flat_types))
        impl_ns = {"derivative": job.compiled}
        exec(f"def impl({params}):\n    return derivative({params})", impl_ns)  # noqa: S102
        return impl_ns["impl"]

    # numba wants the typing function's parameters spelled like the stub's.
    typer_ns = {"implementation": implementation}
    exec(f"def typer({params}):\n    return implementation(({params},))", typer_ns)  # noqa: S102
    overload(stub)(typer_ns["typer"])
    return stub


@dataclass
class CpuKernel:
    """A kernel compiled for the CPU: a numba loop over emulated threads.

    Every thread runs even after one reported an error, so that the report
    holds what the whole launch needs (a tape-overflow hint that suffices).
    """

    run: object  # njit function (n, block, grid, *args, status)
    interpreter: Interpreter
    jobs: JobRegistry

    def launch(self, n_threads: int, block: int, args: tuple, on_status) -> None:
        # Run on copies so that a failing launch leaves the caller's arrays untouched.
        copies = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
        status = st.new_status()
        grid = -(-n_threads // block)
        self.run(n_threads, block, grid, *copies, status)
        on_status(status)
        for original, copy in zip(args, copies):
            if isinstance(original, np.ndarray):
                original[...] = copy


def build_kernel(pyfunc, n_args: int, tape_capacity=None) -> CpuKernel:
    interp, registry = new_registry(tape_capacity)
    resolved = interp.resolve(pyfunc)
    body = numba_adapter.cpu_jit(resolved.pyfunc)
    params = ", ".join(f"a{i}" for i in range(n_args))
    source = (
        f"def run(n, block, grid, {params}, status):\n"
        f"    status[{st.BLOCK}] = block\n"
        f"    status[{st.GRID}] = grid\n"
        f"    for tid in range(n):\n"
        f"        status[{st.TID}] = tid\n"
        f"        body({params}, status)\n"
    )
    namespace = {"body": body}
    exec(source, namespace)  # noqa: S102
    return CpuKernel(numba_adapter.cpu_jit(namespace["run"]), interp, registry)
