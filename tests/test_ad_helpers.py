"""Shared helpers of the differentiation-engine tests: finite differences and runners."""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from gpuad.ad import differentiate
from gpuad.ad.primitives import STATUS_SIZE
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, ReverseWithPrimal


def status():
    return np.zeros(STATUS_SIZE, np.int64)


def fd(f, args, i, h=1e-3):
    """Richardson-extrapolated central difference of f w.r.t. scalar argument i (O(h^4))."""
    def at(dx):
        a = list(args)
        a[i] = a[i] + dx
        return f(*a)
    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


def argtypes_of(args):
    return tuple(numba.typeof(a) for a in args)


def is_scalar_float(a):
    return isinstance(a, float | np.floating)


def reverse_grad(f, args, jit=False, with_primal=False):
    acts = tuple(Active if is_scalar_float(a) else Const for a in args)
    mode = ReverseWithPrimal if with_primal else Reverse
    d = differentiate(f, mode, acts, argtypes_of(args))
    fn = jit_derivative(d) if jit else d.function
    return fn(*args, status())


def forward_partial(f, args, i, jit=False, with_primal=False):
    acts = tuple(Duplicated if k == i else Const for k in range(len(args)))
    mode = ForwardWithPrimal if with_primal else Forward
    d = differentiate(f, mode, acts, argtypes_of(args))
    flat = []
    for k, a in enumerate(args):
        flat.append(a)
        if k == i:
            flat.append(1.0)
    fn = jit_derivative(d) if jit else d.function
    return fn(*flat, status())


__all__ = ["fd", "reverse_grad", "forward_partial", "status", "types", "Active", "Const", "Duplicated",
           "Forward", "Reverse"]
