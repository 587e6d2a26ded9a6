"""What call sites let the entry skip (gpuad.ad.site_facts): atomics, unread stores."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from test_ad_helpers import status

from gpuad.ad import differentiate
from gpuad.ad.typing import jit_derivative
from gpuad.api import Const, Duplicated, DuplicatedNoNeed, Forward, Reverse

VEC = numba.typeof(np.zeros(4))
MAT = numba.typeof(np.zeros((4, 3)))
INT = numba.typeof(1)


def own_read_write(x, y, i):
    v = math.sin(x[i]) * x[i]
    y[i] = v * v
    return v


def neighbour(x, i):
    return x[i] * x[i + 1]


def copied_id(x, i):
    j = i
    return x[j] * x[j]


def moved_id(x, i):
    i = i + 1
    return x[i] * x[i]


def row(m, i):
    s = 0.0
    for k in range(m.shape[1]):
        s += m[i, k] * m[i, k]
    return s


def square(a, i):
    return a[i] * a[i]


def passed_on(x, i):
    return square(x, i) + x[i]


def own_and_other(x, y, i):
    return x[i] * y[0]


def reverse(f, argtypes, activities, thread_ids=frozenset(), exclusive=frozenset()):
    return differentiate(f, Reverse, activities, argtypes, thread_ids=thread_ids, exclusive=exclusive)


def test_thread_own_reads_and_writes_drop_the_atomic():
    d = reverse(own_read_write, (VEC, VEC, INT), (Duplicated, Duplicated, Const), {2}, {0, 1})
    assert d.own_arrays == {"x", "y"}
    assert "atomic_add" not in d.source
    assert "d_x[i] += " in d.source


@pytest.mark.parametrize("jit", [False, True])
def test_dropped_atomics_give_the_same_gradient(jit):
    x, y = np.array([0.3, 0.7, 1.1, 1.9]), np.zeros(4)
    results = []
    for own in (True, False):
        d = reverse(own_read_write, (VEC, VEC, INT), (Duplicated, Duplicated, Const),
                    {2} if own else set(), {0, 1} if own else set())
        fn = jit_derivative(d) if jit else d.function
        dx, dy = np.zeros(4), np.array([0.0, 0.0, 2.0, 0.0])
        fn(x, dx, y.copy(), dy, 2, status())
        results.append(dx)
    v = math.sin(1.1) * 1.1
    expected = (math.cos(1.1) * 1.1 + math.sin(1.1)) * (1.0 + 2.0 * 2.0 * v)
    assert results[0][2] == pytest.approx(expected, rel=1e-14)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("f, argtypes, why", [
    (neighbour, (VEC, INT), "x[i + 1] may be another thread's element"),
    (moved_id, (VEC, INT), "the id is reassigned"),
    (passed_on, (VEC, INT), "the array reaches another function"),
])
def test_atomics_kept_where_ownership_is_not_proven(f, argtypes, why):
    d = reverse(f, argtypes, (Duplicated, Const), {1}, {0})
    assert d.own_arrays == frozenset(), why
    assert "atomic_add(d_x" in d.source, why


def test_ownership_needs_both_facts_from_the_call_site():
    for ids, exclusive in (({1}, set()), (set(), {0})):
        d = reverse(square, (VEC, INT), (Duplicated, Const), ids, exclusive)
        assert "atomic_add(d_a, i" in d.source


def test_plain_copies_of_the_id_and_rows_of_matrices_are_own():
    assert reverse(copied_id, (VEC, INT), (Duplicated, Const), {1}, {0}).own_arrays == {"x"}
    d = reverse(row, (MAT, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == {"m"}
    assert "d_m[i, k] += " in d.source


def test_only_the_arrays_indexed_by_the_id_are_own():
    d = reverse(own_and_other, (VEC, VEC, INT), (Duplicated, Duplicated, Const), {2}, {0, 1})
    assert d.own_arrays == {"x"}
    assert "atomic_add(d_y, 0" in d.source


def scatter_square(x, out, n):
    for k in range(n):
        out[k] = x[k] * x[k]


def reads_back(out, x):
    out[0] = x[0] * 2.0
    return out[0] * x[0]


VEC_ARGS = (VEC, VEC, INT)


def stores_into(source, array):
    return any(line.strip().startswith(f"{array}[") for line in source.splitlines())


@pytest.mark.parametrize("mode", [Reverse, Forward])
def test_duplicated_no_need_skips_stores_nobody_reads(mode):
    x, out = np.array([0.5, 1.5, 2.5, 3.0]), np.full(4, -1.0)
    d = differentiate(scatter_square, mode, (Duplicated, DuplicatedNoNeed, Const), VEC_ARGS)
    assert not stores_into(d.source, "out")
    if mode is Reverse:
        dx, dout = np.zeros(4), np.ones(4)
        d.function(x, dx, out, dout, 4, status())
        np.testing.assert_array_equal(dx, 2.0 * x)
        np.testing.assert_array_equal(dout, 0.0)  # the seed is consumed as for Duplicated
    else:
        tout = np.zeros(4)
        d.function(x, np.ones(4), out, tout, 4, status())
        np.testing.assert_array_equal(tout, 2.0 * x)
    np.testing.assert_array_equal(out, -1.0)  # the primal store was skipped
    kept = differentiate(scatter_square, mode, (Duplicated, Duplicated, Const), VEC_ARGS)
    assert stores_into(kept.source, "out")


def test_duplicated_no_need_keeps_stores_read_back():
    d = differentiate(reads_back, Reverse, (DuplicatedNoNeed, Duplicated), (VEC, VEC))
    assert stores_into(d.source, "out")
    out, dout, x, dx = np.zeros(1), np.zeros(1), np.array([1.5]), np.zeros(1)
    d.function(out, dout, x, dx, status())
    assert dx[0] == pytest.approx(4.0 * 1.5, rel=1e-15)  # d(2x * x)/dx
    assert out[0] == 3.0
