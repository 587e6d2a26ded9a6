"""`@gpuad.kernel`: a Python kernel compiled through gpuad's pipeline.

`kernel.compile(*args)` runs stages 1–5 for the CUDA target (no GPU needed)
through the stage driver (`gpuad.compiler.driver`) and returns the compilation
record; launching runs stage 6 on the kernel's target. A Kernel caches its
compilations (per argument types, target and options) and launches them.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Any, Callable

from gpuad.ad.cache_key import derivative_key
from gpuad.compiler import disk_cache, driver, numba_adapter
from gpuad.compiler.compile_lock import first_call, locked
from gpuad.compiler.numba_errors import numba_failure
from gpuad.errors import GpuadError, LaunchError, SourceLocation
from gpuad.record import CompilationRecord
from gpuad.targets import check_target, default_target
from gpuad.targets import launch as launch_checks
from gpuad.targets import status as st

log = logging.getLogger("gpuad")  # stages and cache hits at DEBUG
DEFAULT_BLOCK = 256
# Generated code that can fail calls these primitives; only such kernels make
# the host wait for the status array after a launch.
FAILURE_REPORTS = ("report_tape_overflow", "report_checkpoint_overflow")


@dataclasses.dataclass
class _Compiled:
    record: CompilationRecord
    argtypes: tuple
    symbol: str
    jobs: list = dataclasses.field(default_factory=list)  # JobFacts: error reports, atomics
    device_kernel: Any = None  # loaded PTX, once launched on a GPU

    @property
    def drops_atomics(self) -> bool:
        return any(job.own_arrays for job in self.jobs)


class Kernel:
    """A GPU kernel whose body may call `autodiff` (API: the README; stages: docs/design.md)."""

    def __init__(self, pyfunc: Callable, *, target: str | None = None, arch: str = "sm_90",
                 fastmath: bool = False, tape_capacity: int | None = None):
        self.pyfunc = pyfunc
        self.name = pyfunc.__name__
        self.target = check_target(target) if target else None
        self.arch = arch
        self.fastmath = fastmath
        self.tape_capacity = tape_capacity
        self._cuda: dict[tuple, _Compiled] = {}
        self._cpu: dict[tuple, Any] = {}
        self.__doc__ = pyfunc.__doc__
        self.__wrapped__ = pyfunc

    def __repr__(self) -> str:
        return f"<gpuad.kernel {self.name}>"

    def __call__(self, *args):
        raise LaunchError(
            f"kernel {self.name} needs a launch configuration",
            hint=f"use {self.name}[blocks, threads](...) or {self.name}.launch(n, ...)",
        )

    # -- compilation -------------------------------------------------------

    def argument_types(self, args) -> tuple:
        n_params = len(inspect.signature(self.pyfunc).parameters)
        if len(args) != n_params:
            raise LaunchError(f"kernel {self.name} takes {n_params} arguments, got {len(args)}",
                              self._location())
        types = []
        for i, value in enumerate(args):
            try:
                types.append(numba_adapter.typeof(value))
            except Exception as exc:  # numba cannot type it: say which argument
                raise LaunchError(
                    f"argument {i} of kernel {self.name} has type {type(value).__name__}, "
                    "which a kernel cannot take", self._location(),
                    hint="pass numpy/CuPy/numba device arrays, ints, floats or bools",
                ) from exc
            # What the CUDA pipeline refuses, both targets refuse before compiling.
            launch_checks.check_argument_type(self.pyfunc, i, types[-1])
        launch_checks.check_kernel_source(self.pyfunc)
        return tuple(types)

    def compile(self, *args, target: str | None = None, arch: str | None = None,
                fastmath: bool | None = None) -> CompilationRecord:
        """Stages 1–5 for these arguments' types; nothing runs."""
        target = check_target(target or self.target or default_target())
        compiled = self._compile_cuda(self.argument_types(args), arch or self.arch,
                                      self.fastmath if fastmath is None else fastmath)
        return dataclasses.replace(compiled.record, target=target)

    @locked
    def _compile_cuda(self, argtypes, arch, fastmath, thread_ownership=True) -> _Compiled:
        from gpuad.method_table import CUDA
        from gpuad.targets import cuda as cuda_target  # installs its overlays first

        key = (argtypes, arch, fastmath, CUDA.version, thread_ownership, derivative_key(self.pyfunc))
        if key in self._cuda:
            log.debug("kernel %s: cuda compile cache hit (%s)", self.name, arch)
            return self._cuda[key]
        from gpuad.ad import DEFAULT_TAPE_CAPACITY

        stored_as = disk_cache.kernel_key(key[-1], argtypes, arch, fastmath, thread_ownership,
                                          self.tape_capacity or DEFAULT_TAPE_CAPACITY)
        if stored_as is not None and (compiled := self._from_disk(stored_as)) is not None:
            self._cuda[key] = compiled
            return compiled
        log.debug("kernel %s: cuda compile cache miss (%s): interpret, differentiate, lower, link, emit",
                  self.name, arch)
        target = cuda_target.CudaTarget(arch, fastmath, thread_ownership)
        output = driver.compile(self.pyfunc, argtypes, target, self.tape_capacity)
        record = target.record(output, self.pyfunc)
        compiled = _Compiled(record, output.lowered.argtypes, output.lowered.symbol,
                             [job.facts() for job in output.jobs.jobs])
        self._cuda[key] = compiled
        if stored_as is not None:
            disk_cache.store(stored_as, {"record": record, "argtypes": compiled.argtypes,
                                         "symbol": compiled.symbol, "jobs": compiled.jobs})
        log.debug("kernel %s: compiled for %s in %.2f s (%s)", self.name, arch, sum(record.timings.values()),
                  ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in record.timings.items()))
        return compiled

    def _from_disk(self, stored_as: str) -> _Compiled | None:
        start = time.perf_counter()
        entry = disk_cache.load(stored_as)
        if entry is None:
            return None
        seconds = time.perf_counter() - start
        log.debug("kernel %s: disk cache hit (%.3f s)", self.name, seconds)
        record = dataclasses.replace(entry["record"], timings={"disk cache": seconds})
        return _Compiled(record, entry["argtypes"], entry["symbol"], entry["jobs"])

    # -- launching -----------------------------------------------------------

    def __getitem__(self, config) -> Callable:
        """`kernel[blocks, threads]`, checked against CUDA's limits on both targets."""
        griddim, blockdim = launch_checks.launch_config(self.pyfunc, config)
        return lambda *args: self._launch(griddim, blockdim, args)

    def launch(self, n: int, *args, block: int = DEFAULT_BLOCK) -> None:
        """Run `n` threads (numba-cuda's `kernel[ceil(n/block), block]`); n = 0 runs nothing."""
        config = launch_checks.threads_config(self.pyfunc, n, block)
        if config is None:
            self.argument_types(args)  # still a bad argument is an error
            return
        self._launch(*config, args, n_threads=int(n))

    def _launch(self, griddim, blockdim, args, n_threads=None) -> None:
        argtypes = self.argument_types(args)
        launch_checks.check_shadows(self.pyfunc, args)
        writes = launch_checks.may_write(self.pyfunc, args)
        groups = launch_checks.host_array_groups(self.pyfunc, args, writes)
        from gpuad.compiler import local_memory  # a frame over CUDA's limit fails on both targets
        local_memory.check_launch(self, argtypes)
        if (self.target or default_target()) == "cpu":
            grid, block = _as_int(griddim), _as_int(blockdim)
            n_threads = grid * block if n_threads is None else n_threads
            self._launch_cpu(argtypes, n_threads, block, args, groups, writes)
        else:
            self._launch_cuda(argtypes, griddim, blockdim, args, groups, writes)

    def _launch_cpu(self, argtypes, n_threads: int, block: int, args, groups, writes) -> None:
        try:
            cpu_kernel = self._cpu_kernel(argtypes)
            with first_call(cpu_kernel.run):  # numba compiles the kernel on its first launch
                def facts():
                    return [job.facts() for job in cpu_kernel.jobs.jobs]

                cpu_kernel.launch(n_threads, block, args, self._status_check(facts),
                                  groups, writes)
        except GpuadError:
            raise
        except Exception as exc:  # numba's typing errors happen at the first call
            if type(exc).__module__.split(".")[0] != "numba":
                raise
            raise numba_failure(exc, self.name, self._location(), "cpu") from exc

    def _launch_cuda(self, argtypes, griddim, blockdim, args, groups, writes) -> None:
        from gpuad.targets import cuda as cuda_target

        compiled = self._compile_cuda(argtypes, self._device_arch(), self.fastmath)
        if compiled.drops_atomics and not cuda_target.ownership_holds(griddim, blockdim, args):
            # A 2-D grid or aliased arrays: the variant that keeps every atomic.
            compiled = self._compile_cuda(argtypes, self._device_arch(), self.fastmath, False)
        if compiled.device_kernel is None:
            can_fail = any(report in src for src in compiled.record.adjoint_sources.values()
                           for report in FAILURE_REPORTS)
            compiled.device_kernel = cuda_target.load_ptx(
                compiled.record.ptx, compiled.symbol, compiled.argtypes, checks_status=can_fail
            )
        try:
            cuda_target.launch(compiled.device_kernel, griddim, blockdim, args,
                               self._status_check(lambda: compiled.jobs), groups, writes)
        except Exception as exc:
            if "CUDA_ERROR_OUT_OF_MEMORY" not in str(exc) or not compiled.record.local_memory_bytes:
                raise
            from gpuad.compiler import local_memory

            frame = compiled.record.local_memory_bytes
            raise local_memory.out_of_memory(self.name, frame, self.tape_capacity,
                                             cuda_target.resident_threads(), self._location()) from exc

    def _status_check(self, jobs: Callable[[], list]) -> Callable:
        """`on_status` for a launch; `jobs()` gives its JobFacts once the launch has run (the cpu
        target creates its jobs while numba compiles the kernel at its first launch)."""
        from gpuad.ad import DEFAULT_TAPE_CAPACITY

        capacity = self.tape_capacity or DEFAULT_TAPE_CAPACITY
        return lambda status: st.raise_for_status(status, self.name, jobs(), capacity)

    def _device_arch(self) -> str:
        major, minor = numba_adapter.device_compute_capability()
        return f"sm_{major}{minor}"

    @locked
    def _cpu_kernel(self, argtypes):
        from gpuad.method_table import CPU
        from gpuad.targets import cpu

        # derivative_key: the code and globals of the kernel, of what it calls and differentiates, the rules
        key = (argtypes, CPU.version, derivative_key(self.pyfunc))
        if key not in self._cpu:
            log.debug("kernel %s: cpu build cache miss", self.name)
            self._cpu[key] = cpu.build_kernel(self.pyfunc, argtypes, self.tape_capacity)
        else:
            log.debug("kernel %s: cpu build cache hit", self.name)
        return self._cpu[key]

    def _location(self) -> SourceLocation:
        code = self.pyfunc.__code__
        return SourceLocation(code.co_filename, code.co_firstlineno, "kernel", self.name)


def _as_int(dim) -> int:
    """The x size of a checked (x, y, z) dimension; the cpu target emulates 1-D launches only."""
    if any(d != 1 for d in dim[1:]):
        raise LaunchError(f"the cpu target emulates 1-D launches only, got {dim}",
                          hint="use kernel.launch(n, ...) or the cuda target")
    return dim[0]


def kernel(pyfunc: Callable | None = None, **options) -> Kernel | Callable[[Callable], Kernel]:
    """Decorator: `@gpuad.kernel` or `@gpuad.kernel(target="cpu", tape_capacity=256)`."""
    if pyfunc is None:
        return lambda fn: Kernel(fn, **options)
    return Kernel(pyfunc, **options)
