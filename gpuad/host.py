"""`autodiff` outside kernels: compile the derivative for the cpu target and call it.

Installed as `gpuad.api.autodiff`'s implementation (`api.def_host_impl`) when gpuad is imported;
the compiler loads on the first call. A host `autodiff` is one job without a kernel: it enters
the stage driver's pipeline at stage 2 (`gpuad.compiler.driver`).
"""
from __future__ import annotations

from gpuad import api
from gpuad.ad import DEFAULT_TAPE_CAPACITY
from gpuad.compiler import driver, numba_adapter
from gpuad.compiler.compile_lock import compiling, first_call, load_toolchain
from gpuad.errors import AutodiffCallError, LoweringError, SourceLocation
from gpuad.interpreter import DeferredSite, is_plain_function
from gpuad.targets import status as st

_pipeline = None
_pipeline_version = -1


def _jobs():
    # One cache of host jobs per process, like numba's dispatchers; a change
    # to the cpu method table starts a new one.
    global _pipeline, _pipeline_version
    from gpuad.method_table import CPU
    from gpuad.targets import cpu  # its overlays import numba-cuda: loaded on first use

    if _pipeline is None or _pipeline_version != CPU.version:
        _pipeline, _pipeline_version = driver.Pipeline(cpu.CpuTarget()), CPU.version
    return _pipeline.jobs


@api.def_host_impl
def host_autodiff(mode, f, args):
    load_toolchain()  # numba's first import, safe from Ctrl-C
    if not isinstance(mode, api.Mode):
        raise AutodiffCallError(f"the first argument of autodiff must be a mode, got {mode!r}",
                                hint="use gpuad.Reverse, ReverseWithPrimal, Forward or ForwardWithPrimal")
    if not is_plain_function(f):
        raise AutodiffCallError(f"{f!r} is not a plain Python function",
                                hint="pass a function defined with `def`")
    _check_shadows(f, args)
    activities = tuple(type(a) if isinstance(a, api.Activity) else api.Const for a in args)
    flat = [v for a in args for v in (a.values if isinstance(a, api.Activity) else (a,))]
    status = st.new_status()
    flat_types = tuple(numba_adapter.typeof(v) for v in flat) + (st.status_type(),)
    code = f.__code__
    site = DeferredSite(-1, f, mode, activities,
                        SourceLocation(code.co_filename, code.co_firstlineno, "autodiff", f.__name__))
    with compiling():  # the job cache is shared by every thread
        job = _jobs().job_for(site, flat_types)
    try:
        with first_call(job.compiled):  # numba compiles the derivative on this first call
            result = job.compiled(*flat, status)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "numba":
            raise
        raise LoweringError(
            f"numba could not compile the derivative gpuad generated for {f.__qualname__} "
            f"({mode.name}): {str(exc).strip().splitlines()[0]}", site.location,
            hint="the generated source is in the error's cause; if the failing line comes from "
            "a rule of yours (gpuad.rule), make that rule compile with numba, otherwise please "
            "report it as a gpuad bug",
        ) from exc
    st.raise_for_status(status, f.__name__, [job.facts()], DEFAULT_TAPE_CAPACITY)
    return result


def _check_shadows(f, args) -> None:
    """Each Duplicated shadow has its primal's shape and dtype, before anything compiles or runs."""
    from gpuad.targets.launch import check_shadow_matches

    code = f.__code__
    for k, arg in enumerate(args):
        if isinstance(arg, api.Duplicated):
            where = SourceLocation(code.co_filename, code.co_firstlineno, "autodiff", f.__name__)
            check_shadow_matches(*arg.values, where, f"autodiff of {f.__name__}, argument {k}")
