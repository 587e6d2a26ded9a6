"""The stage driver: one function whose body is the pipeline of the README (docs/design.md).

    1 interpret → 2 differentiate (jobs) → 3 lower → 4 link → 5 emit

Model: GPUCompiler.jl's `src/driver.jl`, whose `compile(target, job)` runs the same stages
for every target and asks the target, through hooks, how to do the target-specific ones.
Here a `Target` (`gpuad/targets/cuda.py`, `gpuad/targets/cpu.py`) says which method table
overlays calls, how functions and `autodiff` sites bind for numba, and how it lowers, links
and emits.

Stage 2 runs inside stage 3: an `autodiff` site's argument types exist only while numba types
the code that calls it, so numba's typing asks the job registry (`compiler/jobs.py`) for the
site's job; the registry differentiates it and hands the derivative back to the driver
(`Pipeline.build_job`), which interprets and lowers it like any other function. A derivative
that calls `autodiff` itself gives a job of its own, built the same way. One `StageClock`
times every stage, nested ones included (`compiler/stages.py`): `timings` are each stage's own
seconds under the README's names. A compile that takes over a second shows which stage it is
in (`compiler/progress.py`: the clock names the stage, `progress.subject` what is compiled).

A host `autodiff` (`gpuad/host.py`) is one job without a kernel: it enters the same pipeline
at stage 2 (`Pipeline.jobs.job_for`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gpuad.compiler import progress
from gpuad.compiler.compile_lock import locked
from gpuad.compiler.jobs import DeferredJob, JobRegistry
from gpuad.compiler.numba_errors import numba_failure
from gpuad.compiler.stages import StageClock
from gpuad.errors import GpuadError, SourceLocation
from gpuad.interpreter import DeferredSite, Interpreter, ResolvedFunction
from gpuad.method_table import MethodTable

log = logging.getLogger("gpuad")


class Target(Protocol):
    """What differs between targets; every other step is the driver's."""

    name: str  # "cuda" or "cpu", as errors and records name it
    table: MethodTable  # the overlays stage 1 applies
    thread_ownership: bool  # False: the engine keeps every shadow update atomic

    def bind_function(self, resolved: ResolvedFunction) -> Any:
        """What a call of an interpreted function binds to (a numba dispatcher)."""

    def bind_site(self, site: DeferredSite, jobs: JobRegistry) -> Any:
        """What an `autodiff` site binds to: numba asks `jobs` for its job when typing it."""

    def lower_job(self, job: DeferredJob, resolved: ResolvedFunction) -> None:
        """Stage 3 for one job's derivative: make it a compilation unit (kept on `job`)."""

    def lower(self, resolved: ResolvedFunction, argtypes: tuple) -> Any:
        """Stage 3 for the kernel."""

    def link(self, lowered: Any, jobs: JobRegistry) -> Any:
        """Stage 4: put the jobs' units where the lowered kernel's sites call them."""

    def emit(self, linked: Any) -> Any:
        """Stage 5: what runs (PTX for cuda, a numba loop over emulated threads for cpu)."""


class Pipeline:
    """What the stages of one compilation share: the target, stage 1's interpreter, the jobs
    of stage 2 and the clock."""

    def __init__(self, target: Target, tape_capacity: int | None = None):
        self.target = target
        self.clock = StageClock()
        self.jobs = JobRegistry(self.build_job, tape_capacity, self.clock)
        self.interpreter = Interpreter(target.table, target.bind_function,
                                       lambda site: target.bind_site(site, self.jobs),
                                       thread_ownership=target.thread_ownership)

    def build_job(self, job: DeferredJob) -> None:
        """The registry's hook once a job is differentiated: stages 1 and 3 for its derivative."""
        with progress.subject(f"the derivative of {job.site.function.__qualname__}"):
            with self.clock("interpret"):
                resolved = self.interpreter.resolve(job.derivative.function)
            with self.clock("lower") as span:
                self.target.lower_job(job, resolved)
        log.debug("job %d: compiled by numba in %.2f s", job.id, span.seconds)


@dataclass
class Output:
    """Every stage's artefact, for the target to assemble what its caller keeps."""

    pipeline: Pipeline
    resolved: ResolvedFunction  # the kernel as stage 1 rewrote it
    lowered: Any
    linked: Any
    emitted: Any

    @property
    def jobs(self) -> JobRegistry:
        return self.pipeline.jobs

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.pipeline.clock.seconds)


@locked
def compile(pyfunc, argtypes: tuple, target: Target, tape_capacity: int | None = None) -> Output:
    """Stages 1-5 of kernel `pyfunc` for `argtypes` on `target`."""
    with progress.subject(f"kernel {pyfunc.__qualname__} ({target.name})"):
        return _compile(pyfunc, argtypes, target, tape_capacity)


def _compile(pyfunc, argtypes: tuple, target: Target, tape_capacity: int | None) -> Output:
    pipeline = Pipeline(target, tape_capacity)
    clock = pipeline.clock
    with clock("interpret"), _numba_failures(pyfunc, target):
        resolved = pipeline.interpreter.resolve(pyfunc)
    with clock("lower"), _numba_failures(pyfunc, target):  # builds the jobs numba's typing meets
        lowered = target.lower(resolved, argtypes)
    with clock("link"):
        linked = target.link(lowered, pipeline.jobs)
    with clock("emit"):
        emitted = target.emit(linked)
    return Output(pipeline, resolved, lowered, linked, emitted)


@contextlib.contextmanager
def _numba_failures(pyfunc, target: Target):
    """numba's own errors in stages 1 and 3, said in the kernel's terms (`numba_errors`)."""
    try:
        yield
    except GpuadError:
        raise
    except Exception as exc:
        code = pyfunc.__code__
        where = SourceLocation(code.co_filename, code.co_firstlineno, "kernel", pyfunc.__name__)
        raise numba_failure(exc, pyfunc.__name__, where, target.name) from exc
