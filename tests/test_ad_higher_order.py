"""Forward over reverse: Hessian-vector products through nested autodiff calls."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba.core import types
from test_ad_helpers import status

from gpuad.ad import differentiate
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, autodiff


def energy(x, y):
    return x * x * y + math.sin(x * y) + math.exp(0.3 * y) / (1.0 + x * x)


def grad_dot(x, y, vx, vy):
    (dx, dy), = autodiff(Reverse, energy, Active(x), Active(y))
    return dx * vx + dy * vy


def hessian(x, y):
    """Closed-form Hessian of `energy`: (f_xx, f_xy, f_yy)."""
    s, c = math.sin(x * y), math.cos(x * y)
    e = math.exp(0.3 * y)
    q = 1.0 + x * x
    fxx = 2 * y - y * y * s + e * (6 * x * x - 2) / q ** 3
    fxy = 2 * x + c - x * y * s - 0.3 * e * 2 * x / q ** 2
    fyy = -x * x * s + 0.09 * e / q
    return fxx, fxy, fyy


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("point", [(0.7, 1.3), (-0.4, 0.9)])
def test_hessian_vector_products_are_exact(point, jit):
    x, y = point
    fxx, fxy, fyy = hessian(x, y)
    d = differentiate(grad_dot, ForwardWithPrimal, (Duplicated, Duplicated, Const, Const),
                      (types.float64,) * 4)
    fn = jit_derivative(d) if jit else d.function
    directions = [((1.0, 0.0), (1.0, 0.0)), ((0.0, 1.0), (0.0, 1.0)), ((0.3, -0.8), (0.5, 0.25))]
    for (vx, vy), (tx, ty) in directions:
        hvp, primal = fn(x, tx, y, ty, vx, vy, status())
        expected = vx * (fxx * tx + fxy * ty) + vy * (fxy * tx + fyy * ty)
        assert hvp == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert "tan_reverse_energy" in d.source


def test_reverse_over_active_nested_autodiff_is_refused_clearly():
    from gpuad.errors import UnsupportedConstruct
    with pytest.raises(UnsupportedConstruct) as info:
        differentiate(grad_dot, Reverse, (Active, Active, Const, Const), (types.float64,) * 4)
    assert info.value.location.line == grad_dot.__code__.co_firstlineno + 1


def test_forward_over_inactive_nested_autodiff():
    d = differentiate(grad_dot, Forward, (Const, Const, Duplicated, Const), (types.float64,) * 4)
    (t,) = d.function(0.7, 1.3, 0.2, 1.0, 0.0, status())
    (gx, _), = differentiate(energy, Reverse, (Active, Active), (types.float64,) * 2).function(
        0.7, 1.3, np.zeros(4, np.int64))
    assert t == pytest.approx(gx, rel=1e-14)


def looped(x, n):
    s = x
    for i in range(n):  # noqa: B007
        s = math.sin(s) * x
    return s


def grad_looped(x, n):
    (dx, dn), = autodiff(Reverse, looped, Active(x), Const(n))
    return dx


def looped_gradient(x, n, h=0.0):
    (dx, _), = differentiate(looped, Reverse, (Active, Const), (types.float64, types.int64)).function(
        x + h, n, status())
    return dx


@pytest.mark.parametrize("jit", [False, True])
def test_forward_over_taped_reverse(jit):
    # The inner adjoint keeps loop values on a tape; its tangent carries a tangent tape.
    d = differentiate(grad_looped, Forward, (Duplicated, Const), (types.float64, types.int64))
    assert "t_u__tf = tape_alloc(" in d.source
    fn = jit_derivative(d) if jit else d.function
    for x, n in ((0.7, 5), (-0.3, 9), (1.1, 0)):
        (t,) = fn(x, 1.0, n, status())
        h = 1e-4
        expected = (8 * (looped_gradient(x, n, h) - looped_gradient(x, n, -h))
                    - (looped_gradient(x, n, 2 * h) - looped_gradient(x, n, -2 * h))) / (12 * h)
        assert t == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_forward_over_taped_reverse_reports_the_inner_overflow():
    from gpuad.errors import TapeOverflow
    with pytest.raises(TapeOverflow, match="needed 200 tape entries") as info:
        autodiff(Forward, grad_looped, Duplicated(0.7, 1.0), 100)
    # the inner function's loop, in its file (the report named no file: "<unknown>")
    where = info.value.location
    assert (where.filename, where.line, where.function) == (
        looped.__code__.co_filename, looped.__code__.co_firstlineno + 2, "looped")


def spiral(x, y, steps):
    for _ in range(steps):
        x, y = x + 0.1 * math.sin(y), y + 0.1 * x * x
    return x * y


def spiral_dx(x, y, steps):
    (dx, dy, _), = autodiff(Reverse, spiral, Active(x), Active(y), steps)
    return dx


def test_forward_over_reverse_where_a_const_parameter_becomes_active():
    # y is Const for the outer forward sweep but the inner adjoint reassigns it from x.
    (t,) = autodiff(Forward, spiral_dx, Duplicated(0.3, 1.0), Const(0.7), 25)
    h = 1e-4
    g = [autodiff(Reverse, spiral, Active(0.3 + k * h), Active(0.7), 25)[0][0] for k in (-2, -1, 1, 2)]
    assert t == pytest.approx((8 * (g[2] - g[1]) - (g[3] - g[0])) / (12 * h), rel=1e-8)


def scaled_sine(x, y):
    return y * math.sin(x)


def scaled_sine_dx(x, y):
    (dx, _), = autodiff(Reverse, scaled_sine, Active(x), Active(y))
    return dx  # y * cos(x)


@pytest.mark.parametrize("y", [0.0, -0.0, 0.5])
@pytest.mark.parametrize("jit", [False, True])
def test_forward_over_reverse_where_an_inner_adjoint_is_zero(y, jit):
    """At y == 0 the inner adjoint of sin(x) is exactly zero, its derivative is not (parameters
    often start at zero): d/dy (y cos x) = cos x. A zero-guard `if` in the inner derivative
    dropped it (0.0)."""
    x = 0.3
    d = differentiate(scaled_sine_dx, Forward, (Duplicated, Duplicated), (types.float64,) * 2)
    fn = jit_derivative(d) if jit else d.function
    (d_dy,) = fn(x, 0.0, y, 1.0, status())
    assert d_dy == pytest.approx(math.cos(x), rel=1e-15)


def writes_then_reads(x, a, m):
    a[1] = math.sin(x * a[0])
    m[1, 0] = x * m[0, 1]
    return a[1] * x + m[1, 0] * a[0]


def shadow_reader(x, a, da, m, dm):
    # the inner adjoint adds into da and dm (atomic_add), then reads d_a[1], d_m[1, 0] back
    (dx, _, _), = autodiff(Reverse, writes_then_reads, Active(x), Duplicated(a, da), Duplicated(m, dm))
    return dx + 0.5 * da[0] + 0.25 * dm[0, 1]


def shadow_reader_value(x, a0, m01):
    """Closed form of shadow_reader at a = [a0, 0], m = [[0, m01], [0, 0]], zero shadows:
    f = x sin(x a0) + x m01 a0; returns f_x + 0.5 f_a0 + 0.25 f_m01."""
    c = math.cos(x * a0)
    fx = math.sin(x * a0) + x * a0 * c + m01 * a0
    fa0 = x * x * c + x * m01
    fm01 = x * a0
    return fx + 0.5 * fa0 + 0.25 * fm01


@pytest.mark.parametrize("jit", [False, True])
def test_forward_over_reverse_through_array_shadows(jit):
    """The inner adjoint's shadow updates are `atomic_add(d_a, k, v)` calls: their tangent
    (t_d_a[k] += t_v) was dropped, so the second derivative missed every path through an array
    shadow (x sin(x a0): 0.29 for 0.59)."""
    a1, a2 = types.Array(types.float64, 1, "C"), types.Array(types.float64, 2, "C")
    d = differentiate(shadow_reader, Forward, (Duplicated,) * 5, (types.float64, a1, a1, a2, a2))
    fn = jit_derivative(d) if jit else d.function
    x, a0, m01 = 0.4, 0.3, -0.7
    h = 1e-5
    for tx, ta0, tm01 in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.3, -0.5, 0.2)):
        a, m = np.array([a0, 0.0]), np.array([[0.0, m01], [0.0, 0.0]])
        ta, tm = np.array([ta0, 0.0]), np.array([[0.0, tm01], [0.0, 0.0]])
        (t,) = fn(x, tx, a, ta, np.zeros(2), np.zeros(2), m, tm, np.zeros((2, 2)), np.zeros((2, 2)), status())
        expected = (shadow_reader_value(x + h * tx, a0 + h * ta0, m01 + h * tm01)
                    - shadow_reader_value(x - h * tx, a0 - h * ta0, m01 - h * tm01)) / (2 * h)
        assert t == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_forward_over_reverse_refuses_a_shadow_without_tangent():
    # da Const in the outer call: the inner adjoint adds active values into it
    from gpuad.errors import UnsupportedConstruct

    a1, a2 = types.Array(types.float64, 1, "C"), types.Array(types.float64, 2, "C")
    with pytest.raises(UnsupportedConstruct, match="shadow `da`, which has no tangent") as info:
        differentiate(shadow_reader, Forward, (Duplicated, Duplicated, Const, Duplicated, Duplicated),
                      (types.float64, a1, a1, a2, a2))
    assert info.value.location.line == shadow_reader.__code__.co_firstlineno + 2
    assert "Duplicated(shadow, its tangent)" in str(info.value)
