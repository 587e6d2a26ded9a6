"""Deferred jobs: one derivative per (function, mode, activities, argument types).

A job is created when numba types an `autodiff_deferred` call site, because
only then are the argument types known. The job runs stage 2 (generate the
derivative's Python source) and hands the result to `compile_job`, the
driver's hook (`gpuad.compiler.driver.Pipeline.build_job`), which interprets
and lowers it for the target as a separate compilation unit. Identical jobs
from several call sites are one job, compiled once.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from gpuad.ad.cache_key import derivative_key
from gpuad.compiler import numba_adapter
from gpuad.compiler.compile_lock import locked
from gpuad.compiler.stages import StageClock
from gpuad.errors import AutodiffCallError, GpuadError, LoweringError
from gpuad.interpreter import DeferredSite
from gpuad.record import JobRecord

log = logging.getLogger("gpuad")


@dataclass(frozen=True)
class JobFacts:
    """What a launch needs of a compiled job: whether it can report a failure through the status
    array and which loop lines its overflow reports name, the arrays it updates without atomics,
    and the function it differentiates. Plain data, so a compiled kernel can be kept on disk
    (`gpuad.compiler.disk_cache`)."""

    can_fail: bool
    overflow_lines: frozenset
    own_arrays: frozenset
    filename: str
    function: str
    overflow_owners: tuple = ()  # (line, file, function): the loop each reported line is in
    tape_growth: tuple = ()  # (line, growth): how the reporting tape grows with the capacity


@dataclass
class DeferredJob:
    id: int
    site: DeferredSite
    primal_types: tuple  # numba type of each parameter of the function
    flat_types: tuple  # numba types of the flattened call arguments, status included
    derivative: Any = None  # gpuad.ad.Derivative
    return_type: Any = None
    symbol: str = ""  # LLVM symbol (cuda) or "" (cpu)
    ir_text: str = ""  # the job's own module (cuda), nested markers included
    compiled: Any = None  # what the cpu target calls
    call_sites: list[str] = field(default_factory=list)
    parent: int | None = None

    def facts(self) -> JobFacts:
        code = self.site.function.__code__
        d = self.derivative
        return JobFacts(d.can_fail, d.overflow_lines, frozenset(d.own_arrays), code.co_filename,
                        code.co_name, d.overflow_owners, d.tape_growth)

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id,
            function=self.site.function.__qualname__,
            mode=self.site.mode.name,
            activities=tuple(a.__name__ for a in self.site.activities),
            argument_types=tuple(str(t) for t in self.primal_types),
            symbol=self.symbol,
            call_sites=tuple(self.call_sites),
            parent=self.parent,
            own_shadows=tuple(sorted(self.derivative.own_arrays)) if self.derivative else (),
            source=_source_of(self.site.function),
        )


def _source_of(function) -> str:
    """The function's source for the viewers' Source tab; "" when Python cannot find it."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def primal_types(activities: tuple[type, ...], flat_types: tuple) -> tuple:
    """The type of each wrapped argument's primal value (shadows dropped)."""
    from numba.core import types

    flat = [types.unliteral(t) for t in flat_types[:-1]]  # last is the status array
    primals, i = [], 0
    for activity in activities:
        primals.append(flat[i])
        i += activity.arity
    return tuple(primals)


@dataclass
class JobRegistry:
    """All jobs of one kernel compilation, keyed so identical jobs are shared."""

    compile_job: Callable[[DeferredJob], None]
    tape_capacity: int | None = None
    clock: StageClock = field(default_factory=StageClock)  # the compilation's, shared with the driver
    jobs: list[DeferredJob] = field(default_factory=list)
    _by_key: dict[tuple, DeferredJob] = field(default_factory=dict)
    _building: list[int] = field(default_factory=list)

    @locked
    def job_for(self, site: DeferredSite, flat_types: tuple) -> DeferredJob:
        primals = primal_types(site.activities, flat_types)
        # derivative_key: the function's code, the globals it reads, its callees and the rules now.
        key = (derivative_key(site.function), site.mode, site.activities, primals, site.thread_ids,
               site.exclusive, site.private, site.distinct_lanes)
        job = self._by_key.get(key)
        where = f"{site.location.filename}:{site.location.line}"
        if job is not None:
            log.debug("job %d (%s of %s): shared with %s", job.id, site.mode.name, site.function.__qualname__,
                      where)
        else:
            job = DeferredJob(len(self.jobs) + 1, site, primals, tuple(flat_types))
            job.parent = self._building[-1] if self._building else None
            self._by_key[key] = job
            self.jobs.append(job)
            try:
                self._build(job)
            except BaseException:  # an interrupt too: never keep a half-built job
                self._forget(key, job)
                raise
        if where not in job.call_sites:
            job.call_sites.append(where)
        return job

    def _forget(self, key: tuple, job: DeferredJob) -> None:
        """Drop a job whose build failed, and the jobs created while building it.

        Those came last (ids are handed out in order, under the compile lock);
        a retry builds them again.
        """
        self._by_key.pop(key, None)
        dropped = self.jobs[self.jobs.index(job):]
        del self.jobs[self.jobs.index(job):]
        for stale in [k for k, j in self._by_key.items() if any(j is d for d in dropped)]:
            del self._by_key[stale]

    def _build(self, job: DeferredJob) -> None:
        from gpuad.ad import differentiate  # looked up per call: tests interrupt it there

        self._building.append(job.id)
        try:
            options = {"thread_ids": job.site.thread_ids, "exclusive": job.site.exclusive,
                       "private": job.site.private, "distinct_lanes": job.site.distinct_lanes,
                       "where": job.site.location}
            if self.tape_capacity is not None:
                options["tape_capacity"] = self.tape_capacity
            with self.clock("differentiate") as span, numba_adapter.outside_enclosing_compilation():
                job.derivative = differentiate(
                    job.site.function, job.site.mode, job.site.activities, job.primal_types, **options
                )
            log.debug("job %d: differentiated %s (%s) in %.2f s", job.id, job.site.function.__qualname__,
                      job.site.mode.name, span.seconds)
            self.compile_job(job)
        except AutodiffCallError as exc:  # a malformed call: point at the call, not at the function
            raise AutodiffCallError(exc.message, job.site.location, exc.hint) from exc
        except GpuadError:
            raise
        except Exception as exc:  # numba's errors: say which job and where it came from
            raise LoweringError(
                f"compiling the derivative of {job.site.function.__qualname__} "
                f"({job.site.mode.name}) failed: {exc}",
                job.site.location,
            ) from exc
        finally:
            self._building.pop()

    def by_id(self, job_id: int) -> DeferredJob:
        return self.jobs[job_id - 1]

