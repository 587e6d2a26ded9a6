"""The cpu target: the same kernel source run by numba on the CPU.

Threads run one after another; the thread index is emulated through the
status array (see `status.py`), so atomics become plain adds. Deferred call
sites call the generated derivative directly (there is no marker to link on
the CPU); the IR and PTX a user sees still come from the cuda pipeline.
"""
from __future__ import annotations

import sys
import traceback
import types as pytypes
from dataclasses import dataclass

import numpy as np

from gpuad import api
from gpuad.ad import primitives
from gpuad.compiler import driver, numba_adapter, numba_intrinsics
from gpuad.compiler.jobs import DeferredJob, JobRegistry
from gpuad.errors import OutOfBounds, SourceLocation
from gpuad.interpreter import DeferredSite, Interpreter
from gpuad.method_table import CPU
from gpuad.targets import status as st


# Thread-index emulation: these take the status array as the interpreter's
# hidden parameter, which carries the emulated thread index (see status.py).
def cpu_thread_index(_gpuad_status):
    return _gpuad_status[st.TID]


def cpu_grid(ndim, _gpuad_status):
    return _gpuad_status[st.TID]


def cpu_thread_idx_x(_gpuad_status):
    return _gpuad_status[st.TID] % _gpuad_status[st.BLOCK]


def cpu_block_idx_x(_gpuad_status):
    return _gpuad_status[st.TID] // _gpuad_status[st.BLOCK]


def cpu_block_dim_x(_gpuad_status):
    return _gpuad_status[st.BLOCK]


def cpu_grid_dim_x(_gpuad_status):
    return _gpuad_status[st.GRID]


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
    CPU.add(primitives.atomic_add_distinct, cpu_atomic_add)
    CPU.add(cuda.local.array, cpu_local_array)
    CPU.add(primitives.tape_alloc, cpu_local_array)
    CPU.add(primitives.guarded_mul, numba_intrinsics.cpu_guarded_mul(), listed=False)
    CPU.add(primitives.guarded_add_mul, numba_intrinsics.cpu_guarded_add_mul(), listed=False)


_install_overlays()


def cpu_jit(pyfunc):
    """numba's CPU compiler as on the GPU (inf/nan for x/0), but memory-safe.

    Bounds checks make an out-of-range index an IndexError instead of a
    read or write of foreign memory (a segfault or a hang); `launch` turns
    it into `OutOfBounds`. They cost about nothing on kernels that are
    dominated by the launch's copies, and little on loops (README).
    """
    import numba

    return numba.njit(cache=False, error_model="numpy", boundscheck=True)(pyfunc)


@dataclass
class CpuTarget:
    """The driver's hooks for the CPU (`gpuad.compiler.driver.Target`): numba CPU dispatchers,
    compiled at their first call (a kernel's first launch, a host autodiff's first call), so the
    jobs are built then; a deferred site calls its derivative directly, so nothing is linked."""

    name = "cpu"
    table = CPU
    thread_ownership = True

    def bind_function(self, resolved):
        return cpu_jit(resolved.pyfunc)

    def bind_site(self, site: DeferredSite, jobs: JobRegistry):
        return _site_function(site, jobs)

    def lower_job(self, job: DeferredJob, resolved) -> None:
        job.compiled = cpu_jit(resolved.pyfunc)

    def lower(self, resolved, argtypes: tuple):
        """The kernel body's dispatcher, and how many arguments the launch passes it."""
        return cpu_jit(resolved.pyfunc), len(argtypes)

    def link(self, lowered, jobs: JobRegistry):
        return lowered  # each site's stub calls its job's dispatcher (`_site_function`)

    def emit(self, linked):
        """The launch loop: every emulated thread runs the kernel body once."""
        body, n_args = linked
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
        return cpu_jit(namespace["run"])


def _site_function(site: DeferredSite, registry: JobRegistry):
    """A stub whose numba overload calls the job's derivative for the argument types."""
    from numba.core import types
    from numba.extending import overload

    arity = sum(a.arity for a in site.activities) + 1
    params = ", ".join(f"a{i}" for i in range(arity))
    namespace: dict = {}
    exec(f"def autodiff_deferred_{site.id}({params}):\n    pass", namespace)  # noqa: S102
    stub = namespace[f"autodiff_deferred_{site.id}"]
    stub._gpuad_site = (site, registry)  # for replaying a thread in Python (`_replay`)

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
    body: object = None  # the kernel as rewritten by stage 1, in Python (for error reports)
    name: str = ""

    def launch(self, n_threads: int, block: int, args: tuple, on_status, groups=None, writes=None) -> None:
        """Run `n_threads`; `groups` are positions of numpy arguments sharing one buffer
        (`launch.host_array_groups`), `writes[k]` whether the kernel may write argument k."""
        from gpuad.targets.launch import host_array_groups

        writes = [True] * len(args) if writes is None else writes
        if groups is None:
            groups = host_array_groups(self.body, args, writes)
        # Run on copies, one per buffer, so that a failing launch leaves the caller's arrays untouched.
        copies, write_back = _stage_copies(args, groups, writes)
        status = st.new_status()
        grid = -(-n_threads // block)
        try:
            self.run(n_threads, block, grid, *copies, status)
        except IndexError as exc:  # numba's bounds check: nothing is written back
            raise self._out_of_bounds(int(status[st.TID]), copies, status) from exc
        on_status(status)
        for original, copy in write_back:
            original[...] = copy

    def _out_of_bounds(self, tid: int, copies, status) -> OutOfBounds:
        """The error for thread `tid`; replaying it in Python finds the line and the index."""
        where, detail = _replay(self.body, copies, status)
        code = self.body.__code__
        return OutOfBounds(
            f"kernel {self.name}, thread {tid}: {detail or 'an index is out of bounds'}; "
            "nothing was written back", where or SourceLocation(code.co_filename, code.co_firstlineno,
                                                                 "kernel", self.name),
            hint="guard the access (e.g. `if i < a.shape[0]:`): launch(n) runs n threads, "
            "kernel[blocks, threads] runs blocks*threads; on a GPU this access would read or "
            "corrupt other memory without an error",
        )


def _stage_copies(args, groups, writes):
    """Copies of the numpy arguments (one per group) and the (original, copy) pairs to write back.

    A read-only array gets a read-only copy, so numba refuses writes to it as
    CUDA does; only groups the kernel may write are written back.
    """
    copies = list(args)
    write_back = []
    for group in groups:
        first = args[group[0]]
        copy = np.array(first, copy=True)
        for k in group:
            view = copy.view()
            view.setflags(write=args[k].flags.writeable)
            copies[k] = view
        targets = [k for k in group if args[k].flags.writeable]
        if targets and any(writes[k] for k in targets):
            write_back.append((args[targets[0]], copy))
    return copies, write_back


def _replay(body, copies, status) -> tuple[SourceLocation | None, str]:
    """Run the failing thread again in Python: numpy names the index, the traceback the line.

    Best effort: where Python and numba differ, the error has no line.
    """
    try:
        with np.errstate(all="ignore"):
            _python_version(body, {})(*copies, status)
    except IndexError as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
        own = [f for f in frames if not f.filename.startswith(_GPUAD_DIR)]
        if not own:
            return None, str(exc)
        frame = own[-1]
        return SourceLocation(frame.filename, frame.lineno, (frame.line or "")[:80], frame.name), str(exc)
    except Exception:  # noqa: BLE001 - the replay is a diagnosis, never the error itself
        return None, ""
    return None, ""


_GPUAD_DIR = sys.modules["gpuad"].__path__[0]


def _python_version(fn, memo: dict):
    """`fn` with every numba function it calls replaced by its Python source, recursively."""
    from numba.core.dispatcher import Dispatcher

    if id(fn) in memo:
        return memo[id(fn)]
    namespace = dict(fn.__globals__)
    clone = pytypes.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    memo[id(fn)] = clone
    for name, value in fn.__globals__.items():
        if isinstance(value, Dispatcher):
            namespace[name] = _python_version(value.py_func, memo)
        elif isinstance(value, pytypes.FunctionType) and hasattr(value, "_gpuad_site"):
            namespace[name] = _python_site(*value._gpuad_site, memo)
    return clone


def _python_site(site, registry, memo):
    def call(*flat):
        from numba.core import types

        flat_types = tuple(types.unliteral(numba_adapter.typeof(v)) for v in flat)
        return _python_version(registry.job_for(site, flat_types).compiled.py_func, memo)(*flat)

    return call


def build_kernel(pyfunc, argtypes: tuple, tape_capacity=None) -> CpuKernel:
    """The kernel through the stage driver; numba compiles it (and builds its jobs) at its first launch."""
    output = driver.compile(pyfunc, argtypes, CpuTarget(), tape_capacity)
    return CpuKernel(output.emitted, output.pipeline.interpreter, output.jobs, output.resolved.pyfunc,
                     pyfunc.__name__)
