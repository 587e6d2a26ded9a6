"""The user-facing vocabulary of differentiation: modes and activity wrappers.

Names and meanings follow Enzyme.jl. Wrappers are plain Python classes so that
host code can construct them; inside kernels the interpreter reads them
syntactically and they never reach numba.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Mode:
    """A differentiation mode: reverse or forward, with or without the primal."""

    name: str
    reverse: bool
    with_primal: bool

    def __repr__(self) -> str:
        return self.name


Reverse = Mode("Reverse", reverse=True, with_primal=False)
ReverseWithPrimal = Mode("ReverseWithPrimal", reverse=True, with_primal=True)
Forward = Mode("Forward", reverse=False, with_primal=False)
ForwardWithPrimal = Mode("ForwardWithPrimal", reverse=False, with_primal=True)
MODES = (Reverse, ReverseWithPrimal, Forward, ForwardWithPrimal)


class Activity:
    """Base of the activity wrappers; `values` are what the wrapper carries."""

    arity = 1

    def __init__(self, *values):
        if len(values) != self.arity:
            raise TypeError(
                f"{type(self).__name__} takes {self.arity} argument(s), got {len(values)}"
            )
        self.values = values

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.values))})"


class Active(Activity):
    """A scalar whose derivative is returned (reverse) — Enzyme's `Active`."""


class Const(Activity):
    """An argument that is not differentiated."""


class Duplicated(Activity):
    """A value with its shadow: array + shadow array, or scalar + tangent (forward)."""

    arity = 2


class DuplicatedNoNeed(Duplicated):
    """Like `Duplicated`, but the primal result need not be kept."""


ACTIVITIES = (Active, Const, Duplicated, DuplicatedNoNeed)


# What `autodiff` does outside kernels, installed by the layer that compiles derivatives
# (gpuad.host), as JAX's `core.Primitive.def_impl` installs a primitive's implementation:
# this vocabulary, which every layer imports, imports nothing of gpuad's.
_host_impl: Callable | None = None


def def_host_impl(impl: Callable) -> Callable:
    """Install `impl(mode, f, args)` as `autodiff` outside kernels (used as a decorator)."""
    global _host_impl
    _host_impl = impl
    return impl


def autodiff(mode, f, *args):
    """Differentiate `f` at `args` (Enzyme.jl's `autodiff`).

    Inside a gpuad kernel this call is replaced by the overlay interpreter;
    on the host it compiles the derivative for the cpu target and calls it.
    """
    if _host_impl is None:  # `import gpuad` installs it; only a broken install gets here
        raise RuntimeError("gpuad.host is not loaded: import gpuad before calling autodiff")
    return _host_impl(mode, f, args)


def autodiff_deferred(mode, f, *args):
    """The kernel-side form of `autodiff`: a deferred-codegen call site.

    Only meaningful inside a kernel, where the interpreter lowers it to a
    marker; on the host it behaves like `autodiff`.
    """
    return autodiff(mode, f, *args)


def thread_index() -> int:
    """Global 1-D thread index (`cuda.grid(1)`); only valid inside a kernel."""
    raise RuntimeError("gpuad.thread_index() can only be called inside a gpuad kernel")
