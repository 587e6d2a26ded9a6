"""Duplicated arrays (1-D and n-D) in reverse and forward mode, Enzyme semantics."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from test_ad_helpers import status

from gpuad.ad import differentiate
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, ReverseWithPrimal


def dot_self(a, n):
    s = 0.0
    for i in range(n):
        s += a[i] * a[i]
    return s


def stencil(a, out, n):
    for i in range(1, n - 1):
        out[i] = a[i - 1] - 2.0 * a[i] + a[i + 1] * a[i]


def inplace(a, x):
    a[0] = a[0] * x
    a[1] += math.sin(a[0])
    return a[1] * a[0]


def matrix(m, x):
    s = 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            s += m[i, j] * x ** (i + j)
    return s


def scale_rows(m, out, x):
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            out[i, j] = m[i, j] * x
    return x


def numeric_jacobian(fn, arrays, k, i, h=1e-4):
    """d(sum(w * outputs))/d arrays[k][i] by Richardson differences; fn returns a scalar."""
    def at(dx):
        arrs = [a.copy() for a in arrays]
        arrs[k].flat[i] += dx
        return fn(*arrs)
    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


@pytest.mark.parametrize("jit", [False, True])
def test_reverse_reduction_accumulates_into_shadow(jit):
    a = np.array([0.5, -1.2, 2.0, 0.3])
    da = np.full(4, 10.0)
    d = differentiate(dot_self, Reverse, (Duplicated, Const), (numba.typeof(a), numba.int64))
    fn = jit_derivative(d) if jit else d.function
    (derivs,) = fn(a, da, 3, status())
    assert derivs == (None, None)
    np.testing.assert_allclose(da, [10 + 2 * 0.5, 10 - 2.4, 10 + 4.0, 10.0])
    assert "atomic_add(d_a, i, " in d.source


@pytest.mark.parametrize("jit", [False, True])
def test_reverse_of_writes_seeds_from_shadow_and_zeroes_it(jit):
    a = np.array([0.5, -1.2, 2.0, 0.3, 1.1])
    out = np.zeros(5)
    da, dout = np.zeros(5), np.array([0.0, 1.0, 2.0, -1.0, 0.0])
    d = differentiate(stencil, Reverse, (Duplicated, Duplicated, Const),
                      (numba.typeof(a), numba.typeof(out), numba.int64))
    fn = jit_derivative(d) if jit else d.function
    fn(a, da, out, dout, 5, status())
    np.testing.assert_array_equal(dout[1:4], 0.0)  # consumed seeds are zeroed

    def weighted(a_):
        o = np.zeros(5)
        stencil(a_, o, 5)
        return float(np.dot([0.0, 1.0, 2.0, -1.0, 0.0], o))

    expected = [numeric_jacobian(weighted, [a], 0, i) for i in range(5)]
    np.testing.assert_allclose(da, expected, rtol=1e-8, atol=1e-10)


def test_forward_array_tangents():
    a = np.array([0.5, -1.2, 2.0, 0.3, 1.1])
    ta = np.array([1.0, 0.5, -0.3, 0.2, 0.7])
    out, tout = np.zeros(5), np.zeros(5)
    d = differentiate(stencil, Forward, (Duplicated, Duplicated, Const),
                      (numba.typeof(a), numba.typeof(out), numba.int64))
    d.function(a, ta, out, tout, 5, status())
    h = 1e-6
    o1, o2 = np.zeros(5), np.zeros(5)
    stencil(a + h * ta, o1, 5)
    stencil(a - h * ta, o2, 5)
    np.testing.assert_allclose(tout, (o1 - o2) / (2 * h), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("jit", [False, True])
def test_reads_of_elements_written_earlier(jit):
    a = np.array([0.7, 0.4])
    da = np.array([0.0, 0.0])
    d = differentiate(inplace, ReverseWithPrimal, (Duplicated, Active), (numba.typeof(a), numba.float64))
    fn = jit_derivative(d) if jit else d.function
    (derivs, primal) = fn(a.copy(), da, 1.3, status())

    def g(a_, x):
        return inplace(a_.copy(), x)

    assert primal == pytest.approx(g(a, 1.3))
    dx = (g(a, 1.3 + 1e-6) - g(a, 1.3 - 1e-6)) / 2e-6
    assert derivs[1] == pytest.approx(dx, rel=1e-7)
    for i in range(2):
        e = np.zeros(2)
        e[i] = 1e-6
        assert da[i] == pytest.approx((g(a + e, 1.3) - g(a - e, 1.3)) / 2e-6, rel=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_two_dimensional_arrays(jit):
    m = np.arange(6.0).reshape(2, 3) * 0.1
    dm = np.zeros_like(m)
    d = differentiate(matrix, Reverse, (Duplicated, Active), (numba.typeof(m), numba.float64))
    fn = jit_derivative(d) if jit else d.function
    (derivs,) = fn(m, dm, 0.8, status())
    np.testing.assert_allclose(dm, [[0.8 ** (i + j) for j in range(3)] for i in range(2)])
    expected = sum(m[i, j] * (i + j) * 0.8 ** (i + j - 1) for i in range(2) for j in range(3) if i + j)
    assert derivs[1] == pytest.approx(expected, rel=1e-12)
    assert "atomic_add(d_m, (i, j), " in d.source


def test_two_dimensional_write_with_scalar_return():
    m = np.arange(6.0).reshape(2, 3)
    out, dout, dm = np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 3))
    d = differentiate(scale_rows, Reverse, (Duplicated, Duplicated, Active),
                      (numba.typeof(m), numba.typeof(out), numba.float64))
    (derivs,) = d.function(m, dm, out, dout, 2.0, status())
    assert derivs[2] == pytest.approx(1.0 + m.sum())  # seed of the return + seeds of the writes
    np.testing.assert_allclose(dm, 2.0)
    np.testing.assert_array_equal(dout, 0.0)
