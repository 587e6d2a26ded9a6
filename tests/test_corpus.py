"""Acceptance tests of the differentiation engine on the function corpus (tests/corpus.py).

Every corpus function is differentiated inside a cpu-target kernel (interpreter, deferred jobs,
generated derivative, numba), one thread per evaluation point, in reverse and in forward mode,
and compared with float64 central differences. tests/test_gpu_corpus.py runs the same checks
with target="cuda". Plus: tape overflow, atomic accumulation, Hessian-vector products.
"""
from __future__ import annotations

import inspect
import math

import corpus
import numpy as np
import pytest
from corpus import CORPUS, check_forward, check_reverse, corpus_params

from gpuad import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, ReverseWithPrimal, autodiff

TARGET = "cpu"


# --- the corpus itself --------------------------------------------------------------------------

REQUIRED_MATH = ["sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh",
                 "acosh", "atanh", "exp", "expm1", "log", "log1p", "log2", "log10", "erf", "erfc",
                 "hypot", "pow", "sqrt", "fabs", "copysign", "floor", "ceil", "trunc"]


def test_the_corpus_covers_what_the_issue_lists():
    assert len(CORPUS) >= 60
    text = "\n".join(inspect.getsource(e.f) for e in CORPUS)
    missing = [name for name in REQUIRED_MATH if f"math.{name}(" not in text]
    assert missing == []
    for construct in ["min(", "max(", "abs(", " if ", "elif", "else:", "while ", "break", "continue",
                      "range(", " ** ", "float(", "+=", "[i, j]"]:
        assert construct in text, construct
    kinds = {type(k).__name__ for e in CORPUS for k in e.args}
    assert kinds == {"F", "C", "I", "A"}
    assert any(len(k.shape) == 2 for e in CORPUS for k in e.args if isinstance(k, corpus.A))
    modes = {corpus.mode_for(e, d) for e in CORPUS for d in ("reverse", "forward")}
    assert modes == {Reverse, ReverseWithPrimal, Forward, ForwardWithPrimal}


def test_generated_kernels_have_source_and_literal_autodiff_calls():
    entry = corpus.BY_NAME["integers_inactive"]
    name, source = corpus.kernel_source(entry, ReverseWithPrimal)
    assert ("(r0, _, _,), primal_i = autodiff(ReverseWithPrimal, integers_inactive, Active(p0[i]), "
            "p1[i], Const(p2[i]))") in source
    k = corpus.make_kernel(entry, ReverseWithPrimal, TARGET)
    assert inspect.getsource(k.pyfunc) == source


# --- the corpus through kernels ------------------------------------------------------------------

@pytest.mark.parametrize("entry", corpus_params("reverse", TARGET))
def test_reverse_in_kernel(entry):
    assert check_reverse(entry, TARGET) >= corpus.POINTS // 2


@pytest.mark.parametrize("entry", corpus_params("forward", TARGET))
def test_forward_in_kernel(entry):
    assert check_forward(entry, TARGET) >= corpus.POINTS // 2


@pytest.mark.parametrize("entry", corpus_params("reverse", "python"))
def test_reverse_engine_numbers(entry):
    """The same kernels and checks with the generated reverse derivative run as plain Python:
    the engine's numbers on their own, independent of the interpreter and numba."""
    assert check_reverse(entry, "python") >= corpus.POINTS // 2


# --- return conventions of the four modes on the host -------------------------------------------

def fd_scalar(f, args, k, h=1e-4):
    def at(dx):
        a = list(args)
        a[k] += dx
        return f(*a)
    return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)


def test_host_modes_follow_the_return_conventions():
    f, x, n, c = corpus.integers_inactive, 0.7, 3, 2
    dx = fd_scalar(f, [x, n, c], 0)
    result = autodiff(Reverse, f, Active(x), n, Const(c))
    assert len(result) == 1 and len(result[0]) == 3 and result[0][1:] == (None, None)
    assert result[0][0] == pytest.approx(dx, rel=1e-9)
    (derivs, primal) = autodiff(ReverseWithPrimal, f, Active(x), n, Const(c))
    assert derivs[0] == pytest.approx(dx, rel=1e-9) and derivs[1:] == (None, None)
    assert primal == pytest.approx(f(x, n, c), rel=1e-15)
    result = autodiff(Forward, f, Duplicated(x, 1.0), n, Const(c))
    assert len(result) == 1 and result[0] == pytest.approx(dx, rel=1e-9)
    df, primal = autodiff(ForwardWithPrimal, f, Duplicated(x, 2.0), n, Const(c))
    assert df == pytest.approx(2.0 * dx, rel=1e-9) and primal == pytest.approx(f(x, n, c), rel=1e-15)


def test_host_const_float_has_no_derivative():
    (dx, dc), = autodiff(Reverse, corpus.const_floats, Active(0.4), Const(-0.3))
    assert dc is None
    assert dx == pytest.approx(-0.3 * math.exp(-0.12) + 0.09, rel=1e-12)


def test_host_reverse_with_duplicated_array():
    a, da = np.array([0.3, -0.4, 0.9, 1.2]), np.array([1.0, 2.0, -1.0, 0.5])
    (derivs,) = autodiff(Reverse, corpus.array_writes, Duplicated(a, da), Active(0.8))
    x, seeds = 0.8, [1.0, 2.0, -1.0, 0.5]
    # array_writes: a[0] = x*x; a[2] = sin(x)*a[1]; return a[3]*x
    assert derivs[0] is None
    assert derivs[1] == pytest.approx(seeds[0] * 2 * x + seeds[2] * math.cos(x) * -0.4 + 1.2, rel=1e-12)
    np.testing.assert_allclose(da, [0.0, seeds[1] + seeds[2] * math.sin(x), 0.0, seeds[3] + x],
                               rtol=1e-12)
    np.testing.assert_allclose(a, [x * x, -0.4, math.sin(x) * -0.4, 1.2], rtol=1e-15)


# --- tape overflow -------------------------------------------------------------------------------

def test_tape_overflow_raises_and_leaves_results_untouched():
    corpus.check_tape_overflow(TARGET)


# --- atomics -------------------------------------------------------------------------------------

def test_threads_accumulate_into_one_shadow_element_exactly():
    corpus.check_atomic_accumulation(TARGET)


# --- Hessian-vector products (forward over reverse) ----------------------------------------------

def test_hessian_vector_product_on_host():
    rng = np.random.default_rng(7)
    for x, y, vx, vy in rng.uniform(-1.0, 1.0, (6, 4)):
        (hx,) = autodiff(Forward, corpus.hvp_grad_x, Duplicated(x, vx), Duplicated(y, vy))
        (hy,) = autodiff(Forward, corpus.hvp_grad_y, Duplicated(x, vx), Duplicated(y, vy))
        np.testing.assert_allclose([hx, hy], corpus.hvp_expected(x, y, vx, vy), rtol=1e-7, atol=1e-9)


def test_hessian_vector_product_in_kernel():
    corpus.check_hvp_kernel(TARGET)


@pytest.mark.parametrize("entry", corpus.hvp_params())
def test_hessian_vector_products_over_the_corpus(entry):
    assert corpus.check_hvp(entry, "python") >= corpus.POINTS // 4


@pytest.mark.parametrize("entry", corpus.hvp_params(corpus.HVP_IN_KERNELS))
def test_hessian_vector_products_through_tapes_in_kernels(entry):
    assert corpus.check_hvp(entry, TARGET) >= corpus.POINTS // 4
