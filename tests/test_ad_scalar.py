"""Straight-line scalar code: every derivative checked against finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba.core import types
from test_ad_helpers import fd, forward_partial, reverse_grad, status

from gpuad.ad import differentiate
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, ReverseWithPrimal
from gpuad.errors import AutodiffCallError

K = 1.5


def poly(x, y):
    return 3.0 * x * x * y - y / x + 2.0 ** x - x ** 3 + x ** y


def trig(x, y):
    return math.sin(x) * math.cos(y) + math.tan(x * 0.3) - math.atan2(y, x)


def explog(x, y):
    return math.exp(x * y) + math.log(x) * math.sqrt(y) + math.tanh(x - y) + math.pow(x, y)


def unary(x):
    a = -x
    b = +a
    return abs(b) * abs(x - 3.0) + min(x, 1.0) + max(x, 1.0) + min(x, 2.0 * x, 0.5)


def inverse_trig(x):
    return (math.asin(x) + math.acos(x * 0.5) + math.atan(x) + math.asinh(x) + math.acosh(1.0 + x)
            + math.atanh(x))


def hyper(x):
    return math.sinh(x) + math.cosh(x) + math.log1p(x) + math.expm1(x) + math.log2(x) + math.log10(x)


def special(x, y):
    return math.erf(x) + math.erfc(y) + math.hypot(x, y) + math.fabs(x - y) + math.copysign(x, -1.0)


def piecewise(x):
    return math.floor(x) + math.ceil(x) + math.trunc(x) + x * math.floor(x) + float(int(x))


def reassign(x, y):
    z = x * y
    z = z * z + x
    z = math.sin(z)
    x = x * 2.0
    return z + x


def tuples(x, y):
    p = (x * y, x + y)
    u, v = p
    q = (p, u)
    (a, b), c = q
    return u * v + a * b * c + p[1]


def ternary(x, y):
    z = x * y if x > y else x / y
    return z + (math.sin(x) if z > 0 else -z)


def int_to_float(x, n):
    return x * float(n) + x ** n + n / x


def global_const(x):
    return K * x + math.pi * x * x


def helper(a, b):
    return a * math.sin(b)


def two_outputs(a):
    return a * a, math.exp(a)


def nested(x, y):
    s, e = two_outputs(x)
    return helper(x, y) + helper(y, 2.0) * s + e


def deep(x):
    return nested(x, x) * helper(x, x)


def boolean_logic(x, y):
    t = x > 0.5 and y > 0.5 or x < 0.0
    return x * y if t else x + y


def chained_compare(x, y):
    if 0.0 < x < y:
        return x * y
    return x - y


def mod_floordiv(x, y):
    return x % y + x // y + x * (x // y)


def augmented(x, y):
    z = x
    z += y
    z *= x
    z -= 1.0
    z /= y
    z **= 2
    return z


CORPUS = [
    (poly, (1.3, 0.7)),
    (trig, (0.4, 1.1)),
    (explog, (1.2, 0.8)),
    (unary, (0.7,)),
    (unary, (2.3,)),
    (inverse_trig, (0.3,)),
    (hyper, (1.4,)),
    (special, (0.6, 0.9)),
    (piecewise, (2.3,)),
    (reassign, (0.5, 1.5)),
    (tuples, (0.9, 1.7)),
    (ternary, (1.3, 0.8)),
    (ternary, (0.3, 0.8)),
    (int_to_float, (1.1, 3)),
    (global_const, (0.8,)),
    (nested, (0.9, 1.3)),
    (deep, (0.7,)),
    (boolean_logic, (0.7, 0.9)),
    (boolean_logic, (0.7, 0.1)),
    (chained_compare, (0.5, 1.5)),
    (chained_compare, (1.5, 0.5)),
    (mod_floordiv, (5.3, 1.7)),
    (augmented, (1.2, 0.7)),
]
IDS = [f"{f.__name__}-{i}" for i, (f, _) in enumerate(CORPUS)]


def float_indices(args):
    return [i for i, a in enumerate(args) if isinstance(a, float)]


@pytest.mark.parametrize("f,args", CORPUS, ids=IDS)
def test_reverse_matches_finite_differences(f, args):
    (derivs,), primal = reverse_grad(f, args), None
    for i, a in enumerate(args):
        if isinstance(a, float):
            assert derivs[i] == pytest.approx(fd(f, args, i), rel=1e-7, abs=1e-9)
        else:
            assert derivs[i] is None
    derivs2, primal = reverse_grad(f, args, with_primal=True)
    assert primal == pytest.approx(f(*args), rel=1e-15)
    assert derivs2 == derivs


@pytest.mark.parametrize("f,args", CORPUS, ids=IDS)
def test_forward_matches_finite_differences(f, args):
    for i in float_indices(args):
        (df,) = forward_partial(f, args, i)
        assert df == pytest.approx(fd(f, args, i), rel=1e-7, abs=1e-9)
        df2, primal = forward_partial(f, args, i, with_primal=True)
        assert df2 == df and primal == pytest.approx(f(*args), rel=1e-15)


JIT_SUBSET = [CORPUS[i] for i in (0, 2, 9, 10, 12, 15, 18)]


@pytest.mark.parametrize("f,args", JIT_SUBSET, ids=[f.__name__ for f, _ in JIT_SUBSET])
def test_generated_code_compiles_with_numba(f, args):
    (derivs,) = reverse_grad(f, args, jit=True)
    (expected,) = reverse_grad(f, args)
    assert derivs == pytest.approx(expected, rel=1e-12)
    i = float_indices(args)[0]
    (df,) = forward_partial(f, args, i, jit=True)
    assert df == pytest.approx(expected[i], rel=1e-10)


def single(x, y):
    return x * x * y + math.sin(x)


def test_float32_derivatives_have_the_argument_type():
    d = differentiate(single, Reverse, (Active, Const), (types.float32, types.float32))
    from gpuad.ad.typing import jit_derivative
    (dx, dy), = jit_derivative(d)(np.float32(0.5), np.float32(2.0), status())
    assert "np.float32(d_x)" in d.source and dy is None  # numba boxes float32 as Python float
    assert float(dx) == float(np.float32(dx))
    assert float(dx) == pytest.approx(2 * 0.5 * 2.0 + math.cos(0.5), rel=1e-6)
    d = differentiate(single, Forward, (Duplicated, Const), (types.float32, types.float32))
    (t,) = jit_derivative(d)(np.float32(0.5), np.float32(1.0), np.float32(2.0), status())
    assert float(t) == pytest.approx(2 * 0.5 * 2.0 + math.cos(0.5), rel=1e-6)


def test_const_and_int_arguments_get_none():
    (derivs,) = differentiate(int_to_float, Reverse, (Const, Active), (types.float64, types.int64)).function(
        1.5, 3, status())
    assert derivs == (None, None)


def test_forward_rejects_active():
    with pytest.raises(AutodiffCallError, match="Duplicated"):
        differentiate(single, Forward, (Active, Const), (types.float64, types.float64))


def test_reverse_rejects_duplicated_scalar():
    with pytest.raises(AutodiffCallError, match="Active"):
        differentiate(single, Reverse, (Duplicated, Const), (types.float64, types.float64))


@pytest.mark.parametrize("mode", [Reverse, ReverseWithPrimal, Forward, ForwardWithPrimal])
def test_generated_source_is_deterministic(mode):
    acts = (Active, Const) if mode.reverse else (Duplicated, Const)
    a = differentiate(nested, mode, acts, (types.float64, types.float64))
    b = differentiate(nested, mode, acts, (types.float64, types.float64))
    assert a.source == b.source and a.filename == b.filename and a.entry == b.entry
    assert a.source.count("\ndef ") + a.source.startswith("def ") >= 3  # helper, two_outputs, entry


def test_source_is_inspectable_and_namespace_by_identity():
    import inspect
    d = differentiate(nested, Reverse, (Active, Active), (types.float64, types.float64))
    assert inspect.getsource(d.function).startswith(f"def {d.entry}(")
    assert d.namespace["math"] is math
    assert d.namespace["helper"] is helper and d.namespace["two_outputs"] is two_outputs


def const_reassigned(x, y):
    y = y * x + y  # a Const parameter becomes active here
    return y * x


def test_forward_mode_of_a_const_parameter_reassigned_from_an_active_value():
    d = differentiate(const_reassigned, Forward, (Duplicated, Const), (types.float64, types.float64))
    for fn in (d.function, jit_derivative(d)):
        (t,) = fn(0.3, 1.0, 0.7, status())
        assert t == pytest.approx(2 * 0.7 * 0.3 + 0.7, rel=1e-15)
