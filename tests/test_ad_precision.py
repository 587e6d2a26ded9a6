"""Precision follows the primal: float32 code gets float32 adjoints, tangents, tapes and constants.

A float64 literal in generated code (`d_ret += 1.0`, a rule's `0.5 / out`) makes numba promote the
whole adjoint chain, and the tape, to float64. Checked in the PTX of real kernels (CUDA pipeline,
no GPU needed): a float32 gradient kernel whose primal has no float64 instruction has none either.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import gpuad
from gpuad import Active, Const, Duplicated, Forward, Reverse, autodiff


def horner(c, x, n):
    s = c[0]
    for k in range(1, n):
        s = s * x + c[k]
    return s


def rational(x, y):
    return x * x * x / (x * x + y * y) + math.sqrt(y * y + x)


def powers(x, y):
    # integer exponents: the rule folds to `2 * x ** 1`, whose int multiplier must not promote
    # (a negative exponent is float64 in numba's primal already)
    return x ** 2 * y + y ** 3 + math.tanh(x) * y ** 1 + x ** 0


def smooth(x, y):
    t = math.tanh(x * y)
    if t > y:
        return t * t
    return math.atan(t) + math.hypot(x, y)


@gpuad.kernel
def horner_reverse(c, dc, xs, dxs, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (_, d, _), = autodiff(Reverse, horner, Duplicated(c, dc), Active(xs[i]), Const(n))
        dxs[i] = d


@gpuad.kernel
def horner_forward(c, tc, xs, out, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d,) = autodiff(Forward, horner, Duplicated(c, tc), Duplicated(xs[i], xs[i]), Const(n))
        out[i] = d


@gpuad.kernel
def horner_primal(c, xs, out, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = horner(c, xs[i], n)


def scalar_kernels(f):
    @gpuad.kernel
    def primal(xs, ys, out):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            out[i] = f(xs[i], ys[i])

    @gpuad.kernel
    def reverse(xs, ys, out):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
            out[i] = dx + dy

    @gpuad.kernel
    def forward(xs, ys, out):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (d,) = autodiff(Forward, f, Duplicated(xs[i], ys[i]), Duplicated(ys[i], xs[i]))
            out[i] = d

    return primal, reverse, forward


def f64_instructions(kernel, *args) -> list:
    return re.findall(r"\b[\w.]*\.f64\b", kernel.compile(*args).ptx)


V = np.ones(16, np.float32)


def test_float32_taped_loop_has_no_float64_instruction():
    assert f64_instructions(horner_primal, V, V, V, 4) == []
    assert f64_instructions(horner_reverse, V, V, V, V, 4) == []
    assert f64_instructions(horner_forward, V, V, V, V, 4) == []


@pytest.mark.parametrize("f", [rational, smooth, powers])
def test_float32_scalar_gradients_add_no_float64_instruction(f):
    primal, reverse, forward = scalar_kernels(f)
    base = f64_instructions(primal, V, V, V)
    assert len(f64_instructions(reverse, V, V, V)) <= len(base)
    assert len(f64_instructions(forward, V, V, V)) <= len(base)


def test_float32_tape_and_results():
    """The generated tape is float32 and the host derivative matches float64 to float32 rounding."""
    from numba.core import types

    from gpuad.ad import differentiate

    a32 = types.Array(types.float32, 1, "C")
    d = differentiate(horner, Reverse, (Duplicated, Active, Const), (a32, types.float32, types.int64))
    assert "tape_alloc(" in d.source and "np.float64)" not in d.source
    c = np.array([0.5, -1.25, 2.0, 0.75], np.float32)
    dc = np.zeros(4, np.float32)
    ((_, dx, _),) = autodiff(Reverse, horner, Duplicated(c, dc), Active(np.float32(0.3)), Const(4))
    c64, dc64 = c.astype(np.float64), np.zeros(4)
    ((_, dx64, _),) = autodiff(Reverse, horner, Duplicated(c64, dc64), Active(0.3), Const(4))
    assert dx == pytest.approx(dx64, rel=1e-6)
    np.testing.assert_allclose(dc, dc64, rtol=1e-6)


def test_rule_templates_fold_constant_arguments():
    import ast

    from gpuad.ad import ir
    from gpuad.ad.emit import Namespace
    from gpuad.ad.rules import _POW_DX, TEMPLATE_GLOBALS, fill_template

    def partial(exponent, float32):
        values = {"x": ir.Var("x"), "y": ir.Const(exponent), "out": ir.Var("out")}
        return ast.unparse(fill_template(_POW_DX, values, Namespace(), TEMPLATE_GLOBALS, float32))

    assert partial(2, True) == "np.float32(2) * x ** 1"
    assert partial(2, False) == "2 * x ** 1"
    assert partial(0, True) == "np.float32(0.0)"
    assert partial(-2, False) == "-2 * x ** (-2 - 1.0)"  # mixed int/float: left to numba
