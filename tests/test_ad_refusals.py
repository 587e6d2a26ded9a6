"""Unsupported constructs are refused with the original file, line and construct."""
from __future__ import annotations

import inspect
import math

import numba
import numpy as np
import pytest
from numba.core import types

import gpuad
from gpuad.ad import differentiate
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, autodiff
from gpuad.errors import AutodiffCallError, UnsupportedConstruct


def uses_try(x):
    try:
        y = x * 2.0
    except ValueError:
        y = 0.0
    return y


def uses_with(x):
    with open("f") as fh:  # noqa: F841
        x = x * 2.0
    return x


def uses_generator(x):
    yield x


def recursive(x):
    if x < 1.0:
        return x
    return recursive(x * 0.5) * 2.0


def uses_attribute(x):
    return x.real * 2.0


def uses_list(x):
    v = [x, x]
    return v[0]


def for_over_list(x):
    s = 0.0
    for v in (x, x):
        s += v
    return s


def stores_into_const(a, x):
    a[0] = x * 2.0
    return a[0]


def unknown_call(x):
    return np.exp(x)


def slices(a):
    return a[1:].sum()


FIRST = {f: inspect.getsourcelines(f)[1] for f in (uses_try, uses_with, uses_generator, recursive,
                                                     uses_attribute, uses_list, for_over_list,
                                                     stores_into_const, unknown_call, slices)}

CASES = [
    (uses_try, 1, "try", (types.float64,), (Active,)),
    (uses_with, 1, "with", (types.float64,), (Active,)),
    (uses_generator, 1, "yield", (types.float64,), (Active,)),
    (recursive, 3, "recursive(x * 0.5)", (types.float64,), (Active,)),
    (uses_attribute, 1, "x.real", (types.float64,), (Active,)),
    (uses_list, 1, "list", (types.float64,), (Active,)),
    (for_over_list, 2, "(x, x)", (types.float64,), (Active,)),
    (stores_into_const, 1, "a[...] = ", (types.float64[:], types.float64), (Const, Active)),
    (unknown_call, 1, "np.exp(x)", (types.float64,), (Active,)),
    (slices, 1, "a[1:]", (types.float64[:],), (Duplicated,)),
]


@pytest.mark.parametrize("f,offset,construct,argtypes,acts", CASES, ids=[c[0].__name__ for c in CASES])
def test_refusal_points_at_the_original_line(f, offset, construct, argtypes, acts):
    with pytest.raises(UnsupportedConstruct) as info:
        differentiate(f, Reverse, acts, argtypes)
    loc = info.value.location
    assert loc.filename == __file__
    assert loc.line == FIRST[f] + offset
    assert construct in loc.construct
    assert loc.function == f.__name__
    assert info.value.hint


def closure_maker(k):
    def inner(x):
        return math.sin(k * x)
    return inner


def test_closures_resolve_free_variables():
    f = closure_maker(3.0)
    (dx,), = differentiate(f, Reverse, (Active,), (types.float64,)).function(0.2, np.zeros(4, np.int64))
    assert dx == pytest.approx(3.0 * math.cos(0.6))


def test_njit_functions_are_differentiated_through_py_func():
    h = numba.njit(closure_maker(2.0))
    (dx,), = differentiate(h, Reverse, (Active,), (types.float64,)).function(0.2, np.zeros(4, np.int64))
    assert dx == pytest.approx(2.0 * math.cos(0.4))


def untypable_local(x):
    marker = object()  # noqa: F841 - numba cannot type it
    return x * x


def test_what_numba_cannot_type_is_refused_at_the_users_function():
    from gpuad.errors import LoweringError
    with pytest.raises(LoweringError, match="numba cannot type untypable_local") as info:
        differentiate(untypable_local, Reverse, (Active,), (types.float64,))
    assert info.value.location.filename == __file__
    assert info.value.location.line == untypable_local.__code__.co_firstlineno


# ---- complex values: no rule knows them, so they are refused instead of giving zero derivatives

J = 2j


def square(z):
    return z * z


def first_squared(a):
    return a[0] * a[0]


def modulus_of_built(x):
    y = x * 3.0
    z = complex(x, y)
    return abs(z)


def modulus_of_global(x):
    y = x * 3.0
    z = y * J
    return abs(z)


COMPLEX_ARRAY = types.complex128[::1]


@pytest.mark.parametrize("mode", [Reverse, Forward])
@pytest.mark.parametrize("f, acts, argtypes", [
    (square, (Active,), (types.complex128,)),
    (square, (Const,), (types.complex64,)),
    (first_squared, (Duplicated,), (COMPLEX_ARRAY,)),
    (first_squared, (Const,), (COMPLEX_ARRAY,)),
    (square, (Const,), (types.Tuple((types.float64, types.complex128)),)),
])
def test_complex_arguments_are_refused_by_name(mode, f, acts, argtypes):
    if mode is Forward and acts == (Active,):
        acts = (Duplicated,)
    with pytest.raises(AutodiffCallError, match=r"argument 0 \(`\w`\) is complex .*does not support complex"):
        differentiate(f, mode, acts, argtypes)


def test_complex_active_scalars_and_arrays_are_refused_on_the_host():
    with pytest.raises(AutodiffCallError, match="complex"):
        autodiff(Reverse, square, Active(1 + 2j))
    with pytest.raises(AutodiffCallError, match="complex"):
        autodiff(Reverse, first_squared, Duplicated(np.ones(2, complex), np.zeros(2, complex)))


def complex_kernel(a, da):
    i = gpuad.thread_index()
    if i < a.size:
        autodiff(Reverse, first_squared, Duplicated(a, da))


def test_complex_arrays_are_refused_in_kernels():
    a, da = np.ones(4, complex), np.zeros(4, complex)
    with pytest.raises(AutodiffCallError, match="complex") as info:
        gpuad.kernel(complex_kernel, target="cpu").launch(4, a, da)
    # reported at the kernel's autodiff call, the line of the mistake
    assert (info.value.location.function, info.value.location.line) == (
        "complex_kernel", complex_kernel.__code__.co_firstlineno + 3)
    with pytest.raises(AutodiffCallError, match="complex"):
        gpuad.kernel(complex_kernel).compile(a, da)


@pytest.mark.parametrize("mode", [Reverse, Forward])
@pytest.mark.parametrize("f", [modulus_of_built, modulus_of_global])
def test_complex_values_computed_in_the_body_are_refused_at_their_line(mode, f):
    act = Active if mode is Reverse else Duplicated
    with pytest.raises(UnsupportedConstruct, match="complex value .*does not support complex") as info:
        differentiate(f, mode, (act,), (types.float64,))
    assert info.value.location.filename == __file__
    assert info.value.location.line == f.__code__.co_firstlineno + 2
    assert info.value.location.function == f.__name__
