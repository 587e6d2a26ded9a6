"""`guarded_add_mul(acc, a, b)`: the fused form of `acc + guarded_mul(a, b)` that generated updates
use (an fma on the GPU). Its value and rules at exact zeros, forward over reverse through fused
updates, and the emitter's fusions (`gpuad.ad.emit.fuse_guarded_increments`,
`fuse_guarded_temporaries`)."""
from __future__ import annotations

import math

import pytest
from numba.core import types
from test_ad_helpers import status

from gpuad.ad import differentiate
from gpuad.ad.emit import fuse_guarded_increments, fuse_guarded_temporaries, render
from gpuad.ad.primitives import guarded_add_mul, guarded_mul
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, autodiff

INF = math.inf


def update(acc, a, b):
    return guarded_add_mul(acc, a, b)


def product(a, b):
    return guarded_mul(a, b)


def compiled(fn, mode, activities, jit):
    d = differentiate(fn, mode, activities, (types.float64,) * len(activities))
    return jit_derivative(d) if jit else d.function


@pytest.mark.parametrize("jit", [False, True])
def test_a_zero_factor_times_infinity_leaves_acc_and_its_tangent_only(jit):
    fn = compiled(update, ForwardWithPrimal, (Duplicated,) * 3, jit)
    # t_acc = 1, t_b = 1: b's tangent times a == 0 adds nothing, and a * inf is not added
    tangent, value = fn(2.5, 1.0, 0.0, 0.0, INF, 1.0, status())
    assert value == 2.5 and tangent == 1.0
    tangent, value = fn(2.5, 1.0, -0.0, 0.0, math.nan, 1.0, status())
    assert value == 2.5 and tangent == 1.0
    # a's own tangent still counts (as for guarded_mul): the slope in a is b
    tangent, _ = fn(2.5, 0.0, 0.0, 1.0, 3.0, 0.0, status())
    assert tangent == 3.0


@pytest.mark.parametrize("jit", [False, True])
def test_the_primitive_adds_in_one_step_where_the_factor_is_not_zero(jit):
    fn = compiled(update, ForwardWithPrimal, (Duplicated,) * 3, jit)
    tangent, value = fn(1.0, 0.5, 2.0, -1.0, 3.0, 2.0, status())
    assert value == 7.0 and tangent == 0.5 - 3.0 + 4.0


def test_reverse_of_the_primitive_at_a_zero_factor():
    (grads,) = autodiff(Reverse, update, Active(2.0), Active(0.0), Active(INF))
    assert grads == (1.0, INF, 0.0)
    (grads,) = autodiff(Reverse, update, Active(2.0), Const(0.0), Active(INF))
    assert grads[0] == 1.0 and grads[2] == 0.0


# -- forward over reverse through the fused updates of a generated adjoint ---------------------

def root_energy(x, y):
    return y * math.sqrt(x) + x * y  # d_x: a fused update of an infinite partial at x == 0


def root_energy_dx(x, y):
    (dx, _), = autodiff(Reverse, root_energy, Active(x), Active(y))
    return dx  # y / (2 sqrt x) + y


@pytest.mark.parametrize("jit", [False, True])
def test_forward_over_reverse_where_a_fused_update_has_a_zero_adjoint_and_an_infinite_partial(jit):
    d = differentiate(root_energy_dx, ForwardWithPrimal, (Duplicated, Duplicated), (types.float64,) * 2)
    assert "guarded_add_mul(" in d.source
    fn = jit_derivative(d) if jit else d.function
    # y == 0: the sqrt term's adjoint is exactly zero, so its infinite partial adds nothing
    t, dx = fn(0.0, 0.0, 0.0, 1.0, status())
    assert dx == 0.0
    assert t == INF  # d/dy (y / (2 sqrt x) + y) at x == 0
    t, dx = fn(0.0, 1.0, 0.0, 0.0, status())
    assert dx == 0.0 and t == 0.0  # y == 0: nothing in x
    t, dx = fn(4.0, 1.0, 3.0, 0.0, status())
    assert dx == pytest.approx(3.0 / 4.0 + 3.0, rel=1e-15)
    assert t == pytest.approx(-3.0 / (4.0 * 8.0), rel=1e-15)  # -y / (4 x^1.5)
    t, _ = fn(4.0, 0.0, 3.0, 1.0, status())
    assert t == pytest.approx(1.0 / 4.0 + 1.0, rel=1e-15)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("primitive", ["guarded_mul", "guarded_add_mul"])
def test_a_zero_factor_leaves_out_the_partials_tangent_even_where_it_is_not_finite(jit, primitive):
    """Where the factor (an adjoint) is 0 the product is 0 whatever the partial, so the partial's
    tangent adds nothing even when inf or NaN: its term was guarded by that tangent instead, and
    gave inf * 0 = NaN (found on the GPU: forward over reverse through a dead `s = 1.0 / x` at
    x == 0)."""
    if primitive == "guarded_mul":
        fn = compiled(product, ForwardWithPrimal, (Duplicated,) * 2, jit)
        for t_b in (INF, -INF, math.nan):
            assert fn(0.0, 1.5, INF, t_b, status()) == (1.5 * INF, 0.0)
            assert fn(0.0, 0.0, 2.0, t_b, status()) == (0.0, 0.0)
        return
    fn = compiled(update, ForwardWithPrimal, (Duplicated,) * 3, jit)
    for t_b in (INF, -INF, math.nan):
        assert fn(2.5, 1.0, 0.0, 0.0, INF, t_b, status()) == (1.0, 2.5)
        assert fn(2.5, 1.0, -0.0, 0.0, 3.0, t_b, status()) == (1.0, 2.5)


def dead_division(x, y):
    s = 1.0 / x  # noqa: F841 - never used: its adjoint is exactly zero
    return x * 0.7 + y * math.sin(x * y)


def dead_division_grad(x, y):
    (gx, gy), = autodiff(Reverse, dead_division, Active(x), Active(y))
    return gx + 0.3 * gy


def test_forward_over_reverse_through_a_dead_division_by_zero_in_a_kernel():
    """At x == 0 the dead `1.0 / x` is inf and its partial's tangent inf or NaN; the second
    derivative is still that of the live code: d/dx (0.7 + y^2 cos(xy) + 0.3 (sin(xy) + xy cos(xy)))
    = 0.6 y at x == 0. It was NaN."""
    import numpy as np

    import gpuad

    def kernel(xs, ys, out):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (t,) = autodiff(Forward, dead_division_grad, Duplicated(xs[i], 1.0), Const(ys[i]))
            out[i] = t

    xs, ys, out = np.array([0.0, 0.5]), np.array([0.7, 0.7]), np.full(2, np.nan)
    gpuad.kernel(kernel, target="cpu").launch(2, xs, ys, out)
    x, y = 0.5, 0.7
    at_half = (-y ** 3 * math.sin(x * y) + 0.3 * (2 * y * math.cos(x * y) - x * y * y * math.sin(x * y)))
    np.testing.assert_allclose(out, [0.6 * 0.7, at_half], rtol=1e-13)


# -- the emitter's fusions, on the text ------------------------------------------------------

def test_increments_of_a_name_become_fused_updates():
    code = ["d_x += guarded_mul(d_r, y)", "d_y -= guarded_mul(d_r, x / 2.0)", "d_z -= guarded_mul(d_r, -w)",
            "d_a[i] += guarded_mul(d_r, y)", "d_w += d_r"]
    assert fuse_guarded_increments(code) == [
        "d_x = guarded_add_mul(d_x, d_r, y)", "d_y = guarded_add_mul(d_y, d_r, -(x / 2.0))",
        "d_z = guarded_add_mul(d_z, d_r, w)", "d_a[i] += guarded_mul(d_r, y)", "d_w += d_r"]


def test_a_guarded_temporary_read_once_by_a_sum_is_fused_into_it():
    code = ["t_a = np.float32(0.0)",
            ("for i in range(n):", ["t_a = guarded_mul(t_p, h)", "q = q + 1.0", "t_b = t_q - t_a",
                                    "t_c = guarded_mul(t_q, c)", "t_d = t_c + t_b"]),
            "return t_d"]
    assert fuse_guarded_temporaries(code) == [
        ("for i in range(n):", ["q = q + 1.0", "t_b = guarded_add_mul(t_q, t_p, -h)",
                                "t_d = guarded_add_mul(t_b, t_q, c)"]),
        "return t_d"]


def test_a_merged_shadow_sum_fuses_each_guarded_term_in_its_order():
    code = ["d_1 = guarded_mul(d_r, math.cos(x))", "d_2 = guarded_mul(d_r, y)",
            "a[i] = a[i] + d_0 + d_1 + d_2"]
    assert fuse_guarded_temporaries(code) == [
        "a[i] = guarded_add_mul(guarded_add_mul(a[i] + d_0, d_r, math.cos(x)), d_r, y)"]


@pytest.mark.parametrize("code", [
    ["t = guarded_mul(a, b)", "u = x + t", "w = t"],                  # read twice
    ["t = guarded_mul(a, b)", "a = 2.0", "u = x + t"],                # a rebound in between
    ["t = guarded_mul(a, b)", ("if c:", ["x = 1.0"]), "u = x + t"],   # a block in between
    ["t = guarded_mul(a, b)", "u = x * t"],                           # not a sum
    ["t = guarded_mul(a, b)", "u = t - x"],                           # t - x is not x + (-t) fused
    ["t = guarded_mul(a, b)", "u = t + t"],
    ["t = guarded_mul(a[k], b)", "u = x + t"],                        # reads memory
    ["u = x + t", "t = guarded_mul(a, b)"],                           # read before (another iteration)
])
def test_temporaries_stay_where_fusing_would_change_what_is_computed(code):
    assert fuse_guarded_temporaries(code) == code


def test_render_fuses_after_folding_zero_inits():
    code = [("def f(a, b, c, d_r):", ["d_x = np.float32(0.0)", "d_x += guarded_mul(d_r, a)",
                                       "d_x += guarded_mul(d_r, b)", "t = guarded_mul(d_r, c)",
                                       "d_y = d_x + t", "return d_y"])]
    assert render(code) == ["def f(a, b, c, d_r):", "    d_x = guarded_mul(d_r, a)",
                            "    d_x = guarded_add_mul(d_x, d_r, b)",
                            "    d_y = guarded_add_mul(d_x, d_r, c)", "    return d_y"]


def forward_sum(x, y):
    return x * y + math.sin(x) * y


def test_a_forward_sum_of_guarded_terms_is_one_chain_of_fused_updates():
    d = differentiate(forward_sum, Forward, (Duplicated, Duplicated), (types.float64,) * 2)
    assert "guarded_add_mul(guarded_mul(t_x, y), t_y, x)" in d.source
    (t,) = d.function(0.5, 1.0, 2.0, 0.0, status())
    assert t == pytest.approx(2.0 + math.cos(0.5) * 2.0, rel=1e-15)
