"""`@gpuad.kernel`: a Python kernel compiled through gpuad's pipeline.

`kernel.compile(*args)` runs stages 1–5 for the CUDA target (no GPU needed)
through the stage driver (`gpuad.compiler.driver`) and returns the compilation
record; launching runs stage 6 on the kernel's target. A Kernel caches its
compilations (per argument types, target and options) and launches them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import time
from typing import Any, Callable

import numpy as np

from gpuad.ad.cache_key import derivative_key
from gpuad.compiler import disk_cache, driver, numba_adapter
from gpuad.compiler.compile_lock import first_call, locked
from gpuad.compiler.numba_errors import numba_failure
from gpuad.errors import GpuadError, LaunchError, SourceLocation
from gpuad.record import CompilationRecord
from gpuad.targets import block_shadows, check_target, default_target, dispatch
from gpuad.targets import launch as launch_checks
from gpuad.targets import status as st

log = logging.getLogger("gpuad")  # stages and cache hits at DEBUG
DEFAULT_BLOCK = 256
# When the host reads a launch's status: at once, or at the next launch / kernel.check().
CHECK_MODES = ("blocking", "deferred")


@dataclasses.dataclass
class _Compiled:
    record: CompilationRecord
    argtypes: tuple
    symbol: str
    jobs: list = dataclasses.field(default_factory=list)  # JobFacts: error reports, atomics
    device_kernel: Any = None  # loaded PTX, once launched on a GPU
    on_status: Any = None  # with the device kernel: raises for a launch's status
    report: Any = None  # with the device kernel: (status, earlier) -> the error, for deferred reads

    @property
    def drops_atomics(self) -> bool:
        return any(job.own_arrays for job in self.jobs)


@dataclasses.dataclass
class _Plan:
    """What launches with one argument signature share, while `watch` holds (`targets/dispatch.py`)."""

    watch: dispatch.KeyWatch
    argtypes: tuple
    writes: list  # per argument, whether the kernel may write it (`launch.may_write`)
    host_arrays: int  # numpy arguments: grouped (and checked for overlaps) at every launch
    shadows: bool  # Duplicated pairs of parameters: their shapes are checked at every launch
    arch: str = ""
    compiled: _Compiled | None = None  # cuda
    all_atomic: _Compiled | None = None  # cuda, for launches that break thread ownership
    block_shadows: tuple = ()  # cuda: parameters whose shadows blocks may reduce (`block_shadows.py`)
    block_reduced: _Compiled | None = None  # cuda, the variant with those block copies
    cpu_kernel: Any = None


class Kernel:
    """A GPU kernel whose body may call `autodiff` (API: the README; stages: docs/design.md)."""

    def __init__(self, pyfunc: Callable, *, target: str | None = None, arch: str = "sm_90",
                 fastmath: bool = False, tape_capacity: int | None = None, check: str = "blocking"):
        if check not in CHECK_MODES:
            raise LaunchError(f"gpuad.kernel(check={check!r}): check is one of {', '.join(CHECK_MODES)}",
                              hint="'blocking' waits for the status after each launch of a kernel that can "
                              "overflow; 'deferred' reads it at the next launch or kernel.check()")
        self.check_mode = check
        self.pyfunc = pyfunc
        self.name = pyfunc.__name__
        self.target = check_target(target) if target else None
        self.arch = arch
        self.fastmath = fastmath
        self.tape_capacity = tape_capacity
        self._cuda: dict[tuple, _Compiled] = {}
        self._cpu: dict[tuple, Any] = {}
        self._plans = dispatch.BoundedCache()
        self._pending = st.Pending(self.name)
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
        n_params = self.pyfunc.__code__.co_argcount if _plain_parameters(self.pyfunc) else \
            len(inspect.signature(self.pyfunc).parameters)
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
    def _compile_cuda(self, argtypes, arch, fastmath, thread_ownership=True, block_copies=()) -> _Compiled:
        from gpuad.method_table import CUDA
        from gpuad.targets import cuda as cuda_target  # installs its overlays first

        key = (argtypes, arch, fastmath, CUDA.version, thread_ownership, self.tape_capacity,
               block_copies, derivative_key(self.pyfunc))
        if key in self._cuda:
            log.debug("kernel %s: cuda compile cache hit (%s)", self.name, arch)
            return self._cuda[key]
        from gpuad.ad import DEFAULT_TAPE_CAPACITY

        stored_as = disk_cache.kernel_key(key[-1], argtypes, arch, fastmath, thread_ownership,
                                          self.tape_capacity or DEFAULT_TAPE_CAPACITY, *block_copies)
        if stored_as is not None and (compiled := self._from_disk(stored_as)) is not None:
            self._cuda[key] = compiled
            return compiled
        log.debug("kernel %s: cuda compile cache miss (%s): interpret, differentiate, lower, link, emit",
                  self.name, arch)
        target = cuda_target.CudaTarget(arch, fastmath, thread_ownership, block_copies)
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

    def check(self) -> None:
        """Wait for this kernel's launches whose status is unread (`check="deferred"`) and raise
        the first error one of them reported; nothing to do for blocking launches."""
        self._pending.check(wait=True)

    def _launch(self, griddim, blockdim, args, n_threads=None) -> None:
        if len(self._pending):  # an earlier launch's error is raised before this one runs
            self._pending.check(keep=st.Pending.LIMIT - 1)
        target = self.target or default_target()
        plan = self._plan(args, target)
        if plan.shadows:
            launch_checks.check_shadows(self.pyfunc, args)
        groups = launch_checks.host_array_groups(self.pyfunc, args, plan.writes) if plan.host_arrays else ()
        if target == "cpu":
            grid, block = _as_int(griddim), _as_int(blockdim)
            n_threads = grid * block if n_threads is None else n_threads
            self._launch_cpu(plan, n_threads, block, args, groups)
        else:
            self._launch_cuda(plan, griddim, blockdim, args, groups)

    def _plan(self, args, target: str) -> _Plan:
        """The launch's plan for these arguments' signature, made again when anything the
        compiled kernel depends on changed (`dispatch.KeyWatch`)."""
        signature = dispatch.signature(args)
        if signature is None:  # other argument kinds: typed at every launch, exact all the same
            signature = (self.argument_types(args), tuple(map(type, args)))
        key = (signature, target, self.arch, self.fastmath, self.tape_capacity)
        plan = self._plans.get(key)
        if plan is not None and plan.watch.holds():
            return plan
        return self._plans.put(key, self._new_plan(args, target))

    def _new_plan(self, args, target: str) -> _Plan:
        """Everything a launch checks and looks up that depends on argument types only."""
        from gpuad.compiler import local_memory  # a frame over CUDA's limit fails on both targets
        from gpuad.method_table import CPU, CUDA
        from gpuad.targets import cpu, cuda  # noqa: F401 - their overlays, installed before the watch

        watch = dispatch.KeyWatch(self.pyfunc, (CUDA, CPU))  # before compiling (see KeyWatch)
        log.debug("kernel %s: new launch plan (%s target)", self.name, target)
        argtypes = self.argument_types(args)
        launch_checks.check_shadows(self.pyfunc, args)
        writes = launch_checks.may_write(self.pyfunc, args)
        host_arrays = sum(isinstance(a, np.ndarray) for a in args)
        if host_arrays:
            launch_checks.host_array_groups(self.pyfunc, args, writes)  # overlaps: before compiling
        local_memory.check_launch(self, argtypes)
        plan = _Plan(watch, argtypes, writes, host_arrays, bool(launch_checks.shadow_pairs(self.pyfunc)))
        if target == "cpu":
            with self._numba_errors():
                plan.cpu_kernel = self._cpu_kernel(argtypes)
        else:
            plan.arch = self._device_arch()
            plan.compiled = self._compile_cuda(argtypes, plan.arch, self.fastmath)
            plan.block_shadows = block_shadows.eligible_types(block_shadows.reducible_shadows(self.pyfunc),
                                                              argtypes)
        return plan

    def _launch_cpu(self, plan: _Plan, n_threads: int, block: int, args, groups) -> None:
        """The cpu target runs synchronously and copies results back: it reads the status at
        once, whatever `check` says."""
        cpu_kernel = plan.cpu_kernel
        with self._numba_errors(), first_call(cpu_kernel.run):  # numba compiles it on its first launch
            def facts():
                return [job.facts() for job in cpu_kernel.jobs.jobs]

            cpu_kernel.launch(n_threads, block, args, self._status_check(facts), list(groups), plan.writes)

    @contextlib.contextmanager
    def _numba_errors(self):
        """numba's own errors on the cpu target (typing errors happen at the first call) as gpuad's."""
        try:
            yield
        except GpuadError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "numba":
                raise
            raise numba_failure(exc, self.name, self._location(), "cpu") from exc

    def _launch_cuda(self, plan: _Plan, griddim, blockdim, args, groups) -> None:
        from gpuad.targets import cuda as cuda_target

        compiled, shared_bytes = plan.compiled, 0
        if compiled.drops_atomics and not cuda_target.ownership_holds(griddim, blockdim, args):
            # A 2-D grid or aliased arrays: the variant that keeps every atomic.
            if plan.all_atomic is None:
                plan.all_atomic = self._compile_cuda(plan.argtypes, plan.arch, self.fastmath, False)
            compiled = plan.all_atomic
        elif shared_bytes := block_shadows.launch_bytes(plan.block_shadows, args):
            # Shared shadows small enough for a copy per block: reduced there before global atomics.
            if plan.block_reduced is None:
                plan.block_reduced = self._compile_cuda(plan.argtypes, plan.arch, self.fastmath,
                                                        block_copies=plan.block_shadows)
            compiled = plan.block_reduced
        device_kernel = compiled.device_kernel or self._load(compiled)
        try:
            flight = cuda_target.launch(device_kernel, griddim, blockdim, args, compiled.on_status, groups,
                                        plan.writes, defer=self.check_mode == "deferred",
                                        shared_bytes=shared_bytes)
        except Exception as exc:
            if "CUDA_ERROR_OUT_OF_MEMORY" not in str(exc) or not compiled.record.local_memory_bytes:
                raise
            from gpuad.compiler import local_memory

            frame = compiled.record.local_memory_bytes
            raise local_memory.out_of_memory(self.name, frame, self.tape_capacity,
                                             cuda_target.resident_threads(), self._location()) from exc
        if flight is not None:
            self._pending.add(flight, compiled.report)

    def _load(self, compiled: _Compiled):
        """Load the PTX on the current GPU, once; with how the launch reads its status."""
        from gpuad.targets import cuda as cuda_target

        can_fail = any(job.can_fail for job in compiled.jobs)
        capacity = self._capacity()
        compiled.on_status = self._status_check(lambda: compiled.jobs)
        compiled.report = lambda status, earlier: st.status_error(status, self.name, compiled.jobs,
                                                                  capacity, earlier)
        compiled.device_kernel = cuda_target.load_ptx(
            compiled.record.ptx, compiled.symbol, compiled.argtypes, checks_status=can_fail
        )
        return compiled.device_kernel

    def _capacity(self) -> int:
        from gpuad.ad import DEFAULT_TAPE_CAPACITY

        return self.tape_capacity or DEFAULT_TAPE_CAPACITY

    def _status_check(self, jobs: Callable[[], list]) -> Callable:
        """`on_status` for a launch; `jobs()` gives its JobFacts once the launch has run (the cpu
        target creates its jobs while numba compiles the kernel at its first launch)."""
        capacity = self._capacity()
        return lambda status: st.raise_for_status(status, self.name, jobs(), capacity)

    def _device_arch(self) -> str:
        major, minor = numba_adapter.device_compute_capability()
        return f"sm_{major}{minor}"

    @locked
    def _cpu_kernel(self, argtypes):
        from gpuad.method_table import CPU
        from gpuad.targets import cpu

        # derivative_key: the code and globals of the kernel, of what it calls and differentiates, the rules
        key = (argtypes, CPU.version, self.tape_capacity, derivative_key(self.pyfunc))
        if key not in self._cpu:
            log.debug("kernel %s: cpu build cache miss", self.name)
            self._cpu[key] = cpu.build_kernel(self.pyfunc, argtypes, self.tape_capacity)
        else:
            log.debug("kernel %s: cpu build cache hit", self.name)
        return self._cpu[key]

    def _location(self) -> SourceLocation:
        code = self.pyfunc.__code__
        return SourceLocation(code.co_filename, code.co_firstlineno, "kernel", self.name)


def _plain_parameters(pyfunc) -> bool:
    """Only positional-or-keyword parameters: co_argcount counts them all."""
    code = pyfunc.__code__
    return not (code.co_kwonlyargcount or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS))


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
