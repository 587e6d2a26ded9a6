"""The compilation record the notebook tests display, made by the real pipeline.

`gpuad.examples.grad_f` (the README's kernel: `autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))`)
compiled for the cuda target: interpret, differentiate, lower, link and emit, IR and PTX from the
NVVM wheel; no GPU or driver is needed. Compiled once per test run; every caller gets its own
copy, since tests change their record.
"""
from __future__ import annotations

import copy
import functools

import numpy as np

from gpuad.notebook.outline import outline
from gpuad.record import CompilationRecord


@functools.cache
def _compiled() -> CompilationRecord:
    from gpuad.examples import grad_f

    xs = np.linspace(0.0, 1.0, 8)
    return grad_f.compile(xs, xs, xs, target="cuda", arch="sm_90")


def sample_record() -> CompilationRecord:
    """A fresh copy of grad_f's record (cuda, sm_90, float64 arrays)."""
    return copy.deepcopy(_compiled())


def adjoint_symbol() -> str:
    """The symbol of the derivative the linker added (the job's)."""
    return _compiled().jobs[0].symbol


def kernel_symbol() -> str:
    """The kernel's symbol: the first function the module defines (numba's version tag varies)."""
    return outline(_compiled().ir_after_link, "llvm").names[0]
