"""gpuad: GPU kernels in Python that differentiate the functions they call.

See docs/design.md for the pipeline: interpret → differentiate → lower → link →
emit → launch. Enzyme.jl's names, Python spelling.
"""
from gpuad import (
    config,  # noqa: F401 - gpuad.config.verbose
    host,  # noqa: F401 - installs autodiff's implementation outside kernels (api.def_host_impl)
)
from gpuad.api import (
    Active,
    Const,
    Duplicated,
    DuplicatedNoNeed,
    Forward,
    ForwardWithPrimal,
    Reverse,
    ReverseWithPrimal,
    autodiff,
    autodiff_deferred,
    thread_index,
)
from gpuad.errors import GpuadError
from gpuad.kernel import Kernel, kernel
from gpuad.method_table import CPU, CUDA, MethodTable, overlay
from gpuad.notebook import display  # noqa: F401 - installs the displays of records and gradchecks (def_display)
from gpuad.record import CompilationRecord

__version__ = "0.1.0"

__all__ = [
    "Active", "Const", "Duplicated", "DuplicatedNoNeed", "Forward", "ForwardWithPrimal",
    "Reverse", "ReverseWithPrimal", "autodiff", "autodiff_deferred", "thread_index",
    "GpuadError", "Kernel", "kernel", "CPU", "CUDA", "MethodTable", "overlay",
    "CompilationRecord", "rule", "gradcheck", "gradcheck_kernel", "jacobian_check",
]


def __getattr__(name):
    # Heavier parts load on first use so that `import gpuad` stays cheap.
    if name == "rule":
        from gpuad.ad.rules import rule

        return rule
    if name in ("gradcheck", "gradcheck_kernel", "jacobian_check"):
        from gpuad import gradient_check

        return getattr(gradient_check, name)
    raise AttributeError(f"module 'gpuad' has no attribute {name!r}")


def load_ipython_extension(ipython):
    """`%load_ext gpuad`: registers %%gpukernel and %gpuad_info."""
    from gpuad.notebook import load_ipython_extension as load  # a missing notebook extra says so

    load(ipython)
