"""Soundness classes of the engine's front end: rebinding (gpuad/ad/ssa.py), generated names that
no user name can reach (normalize.GENERATED_PREFIXES), each expression evaluated once, no NaN from
values whose adjoint is structurally zero, tuples holding active values."""
from __future__ import annotations

import itertools
import math
import re

import corpus
import numpy as np
import pytest

from gpuad import Active, Const, Duplicated, Forward, Reverse, ReverseWithPrimal, autodiff
from gpuad.ad.normalize import GENERATED_PREFIXES, RESERVED
from gpuad.errors import AutodiffCallError

_serial = itertools.count()


def define(source: str, name: str = "f", **globals_):
    return corpus.exec_source(source, f"<soundness {next(_serial)}>", {"math": math, **globals_})[name]


def fd(f, x, *rest, h=1e-5):
    return (f(x + h, *rest) - f(x - h, *rest)) / (2 * h)


def both(f, x, *rest):
    """(reverse, forward) derivatives of f with respect to its first (scalar) argument."""
    (rev,) = autodiff(Reverse, f, Active(x), *map(Const, rest))
    (fwd,) = autodiff(Forward, f, Duplicated(x, 1.0), *map(Const, rest))
    return rev[0], fwd


# --- rebinding ----------------------------------------------------------------------------------

REBINDINGS = {
    "loop variable reassigned": "s = 0.0\nfor j in range(n):\n    j = j + 1\n    s += x * j\nreturn s",
    "loop variable reassigned twice": "s = 0.0\nfor j in range(n):\n    j = j * 2\n    s += x * j\n"
                                      "    j = j + 1\n    s += x * x * j\nreturn s",
    "loop variable used after the loop": "s = x\nfor j in range(n):\n    s = s * x\nreturn s * j",
    "loop variable bound before as float": "j = 0.5 * x\ns = j\nfor j in range(n):\n    s += x * j\nreturn s",
    "parameter rebound": "x0 = x\nx = x * x\nx = math.sin(x) + x0\nreturn x * x0",
    "rebound on one branch": "y = x * 2.0\nif x > 0.0:\n    y = y * y\nreturn y * x",
    "rebound on both branches": "y = x\nif x > 0.0:\n    y = math.sin(y)\nelse:\n    y = math.cos(y)\n"
                                "return y * x",
    "rebound in a loop and after": "y = x\nfor k in range(n):\n    y = y * 0.5 + x\ny = y * y\nreturn y",
    "int then float": "k = n\nk = k * x\nreturn k * x",
    "float loop variable read after the loop": "i = 0.5 * x\nfor i in range(n):\n    x = x * 2.0\n"
                                               "return x * i",
    # Found by the random programs: names bound only on some paths (a zero-trip loop, one branch).
    "bound in a loop of one branch": "for j in range(1):\n    for i in range(n):\n        pass\n"
                                     "if x > 0.0:\n    pass\nelse:\n    for i in range(0):\n        pass\n"
                                     "return x * x",
    "bound on a branch and in a zero-trip loop": "if math.tanh(x) > 0.2:\n    w = x\nelse:\n"
                                                 "    for i in range(n):\n        w = x\nreturn x * 0.7",
}


@pytest.mark.parametrize("name", list(REBINDINGS))
@pytest.mark.parametrize("x,n", [(0.7, 3), (-1.3, 3), (0.6, 0)])
def test_rebinding_matches_finite_differences(name, x, n):
    body = "".join(f"    {line}\n" for line in REBINDINGS[name].splitlines())
    f = define(f"def f(x, n):\n{body}")
    try:
        f(x, n)
    except NameError:  # unbound in Python too on this path
        return
    rev, fwd = both(f, x, n)
    assert rev == pytest.approx(fd(f, x, n), rel=1e-6)
    assert fwd == pytest.approx(rev, rel=1e-12)


def test_array_parameter_rebound_to_a_float():
    f = define("def f(v, x):\n    v = v[0] * x\n    return v * v\n")
    a, da = np.array([3.0]), np.zeros(1)
    ((_, dx),) = autodiff(Reverse, f, Duplicated(a, da), Active(2.0))
    assert (dx, da[0]) == (2 * 9.0 * 2.0, 2 * 3.0 * 4.0)
    (df,) = autodiff(Forward, f, Duplicated(a, np.array([1.0])), Duplicated(2.0, 0.0))
    assert df == 2 * 3.0 * 4.0


def user_names() -> list[str]:
    """Names a user may write that look like the engine's own."""
    names = sorted(RESERVED - {"None", "math", "np", "float", "int", "min", "max", "abs", "range", "len",
                               "bool", "builtins"})
    stems = ["x", "ret", "t0", "s0", "c0", "n0", "k0", "tf", "spf", "done", "skip0", "d_x", "_x", "h"]
    names += [p + s for p in GENERATED_PREFIXES for s in stems]
    return list(dict.fromkeys(names + ["u__x", "u_d_x", "_ret", "_primal", "_v1_y", "_vi0", "d__ret"]))


def test_user_names_from_the_engines_prefixes_do_not_collide():
    names = user_names()
    lines = [f"    {n} = x * {k + 1}.0" for k, n in enumerate(names)]
    total = " + ".join(f"{n} * {n}" for n in names)
    f = define("def h(x):\n    return x * x\n\ndef f(x):\n" + "\n".join(lines)
               + f"\n    return h({total})\n", "f")
    squares = sum((k + 1) ** 2 for k in range(len(names)))
    expected = 4 * 0.5 ** 3 * squares ** 2  # f = h(x^2 * squares) = x^4 * squares^2
    rev, fwd = both(f, 0.5)
    assert rev == pytest.approx(expected, rel=1e-12)
    assert fwd == pytest.approx(expected, rel=1e-12)


# --- evaluation once, in order ------------------------------------------------------------------

CHAINS = ["0.0 < bump(c, x) < 10.0", "bump(c, x) < 10.0 > bump(c, x)", "0.0 < bump(c, x) < bump(c, x) < 99.0",
          "1e9 < bump(c, x) < 10.0", "0.0 < x < bump(c, x) < 99.0"]


@pytest.mark.parametrize("chain", CHAINS)
def test_chained_comparison_evaluates_each_operand_once(chain):
    source = (f"def bump(c, x):\n    c[0] += 1.0\n    return c[0] * x\n\n"
              f"def f(x, c):\n    if {chain}:\n        return x * x\n    return x\n")
    f = define(source)
    expected_calls = np.zeros(1)
    expected = f(0.5, expected_calls)
    for mode in (ReverseWithPrimal, Forward):
        calls = np.zeros(1)
        args = (Active(0.5),) if mode is ReverseWithPrimal else (Duplicated(0.5, 1.0),)
        result = autodiff(mode, f, *args, Const(calls))
        assert calls[0] == expected_calls[0], (mode, chain)
        if mode is ReverseWithPrimal:
            assert result[1] == expected


# --- no NaN from what does not contribute --------------------------------------------------------

SINGULAR = {
    "unused reciprocal": ("t = 1.0 / x\nreturn x * 2.0", 0.0, 2.0),
    "guarded sqrt": ("s = math.sqrt(x)\nif x == 0.0:\n    return 0.0\nreturn s", 0.0, 0.0),
    "guarded log": ("u = math.log(x)\nif x > 0.0:\n    return u * x\nreturn x", 0.0, 1.0),
    "unused log of zero": ("u = math.log(x * x)\nreturn 3.0 * x", 0.0, 3.0),
    "unused log of a negative (NaN partial)": ("u = math.log(x)\nreturn x * 2.0", -1.0, 2.0),
    "sqrt on the other branch of a ternary": ("return math.sqrt(x) if x > 0.0 else x * 5.0", 0.0, 5.0),
    "unused division chain": ("a = 1.0 / x\nb = a * a\nc = math.sqrt(b - b)\nreturn x", 0.0, 1.0),
    "dead in a loop": ("s = x\nfor k in range(3):\n    t = 1.0 / (x - 1.0)\n    s = s * 2.0\nreturn s",
                       1.0, 8.0),
}


@pytest.mark.parametrize("name", list(SINGULAR))
def test_no_nan_from_values_that_do_not_contribute(name):
    body, x, expected = SINGULAR[name]
    f = define("def f(x):\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    rev, fwd = both(f, x)
    assert rev == expected and fwd == expected


# --- tuples ------------------------------------------------------------------------------------

TUPLE_HELPERS = """
def inner(t):
    return t[0] * math.cos(t[1])

def nested(p, q):
    return inner(p[0]) * p[1] + q[0] * q[1][1]

def passes_on(t, s):
    u = (t[1], t[0] * s)
    return inner(u) + inner(t)

def reads_array(t, k):
    return t[0][k] * t[1] + t[0][0]
"""
TUPLE_CALLS = {
    "built in the call": "return inner((x, x * 3.0))",
    "bound first": "p = (x * x, 0.5)\n    return inner(p)",
    "nested tuples": "return nested(((x, 2.0 * x), x * x), (x, (1.0, math.sin(x))))",
    "passed on": "return passes_on((x, x * 0.5), x)",
    "in a loop": "s = 0.0\n    for k in range(3):\n        s += inner((x * k, x + k))\n    return s",
    "unpacked result": "a, b = (x, x * x)\n    return inner((b, a))",
    "with an array": "return reads_array((v, x), 1)",
}


@pytest.mark.parametrize("name", list(TUPLE_CALLS))
@pytest.mark.parametrize("x", [0.4, -1.1])
def test_tuples_passed_to_helpers_carry_derivatives(name, x):
    f = define(TUPLE_HELPERS + f"\ndef f(x, v):\n    {TUPLE_CALLS[name]}\n")
    v = np.array([0.3, -0.8])
    rev, fwd = both(f, x, v)
    assert rev == pytest.approx(fd(f, x, v), rel=1e-6, abs=1e-9)
    assert fwd == pytest.approx(rev, rel=1e-12, abs=1e-15)


def test_tuple_with_an_array_carries_the_arrays_shadow():
    f = define(TUPLE_HELPERS + "\ndef f(x, v):\n    return reads_array((v, x), 1)\n")
    v, dv = np.array([0.3, -0.8]), np.zeros(2)
    ((dx, _),) = autodiff(Reverse, f, Active(2.0), Duplicated(v, dv))
    assert (dx, *dv) == (-0.8, 1.0, 2.0)
    (df,) = autodiff(Forward, f, Duplicated(2.0, 0.0), Duplicated(v, np.array([1.0, 0.0])))
    assert df == 1.0


def test_tuple_of_constants_passed_to_a_helper_differentiates():
    f = define("def inner(t, a):\n    return t[0] * a + t[1]\n\n"
               "def f(a, c):\n    return inner((c, 2.0), a)\n")
    assert both(f, 2.0, 3.0) == (3.0, 3.0)


@pytest.mark.parametrize("mode,activity", [(Reverse, Active((1.0, 2.0))),
                                           (Forward, Duplicated((1.0, 2.0), (1.0, 0.0)))])
def test_tuple_valued_activities_are_refused(mode, activity):
    f = define("def f(t):\n    return t[0] * t[1]\n")
    with pytest.raises(AutodiffCallError, match="tuple argument 0"):
        autodiff(mode, f, activity)


def test_tuple_from_constants_merged_with_an_active_tuple():
    """The random programs on the GPU: `s = h((0.3, 0.25))` in one branch, `s = h((x * y, y))`
    in the other; the first call's results are active only through the merge (forward crashed)."""
    f = define("def h(t):\n    return (t[1] * 0.5, math.sin(t[0]))\n\n"
               "def f(x, y):\n    if x > 0.0:\n        s = h((0.3, 0.25))\n    else:\n"
               "        s = h((x * y, y))\n    return (s[0] - s[1]) * x\n")
    for x in (0.7, -0.7):
        rev, fwd = both(f, x, 0.4)
        assert rev == fwd == pytest.approx(fd(f, x, 0.4), rel=1e-8)


def test_augmented_store_reads_the_element_before_the_right_side_runs():
    """`a[0] += g(a, x)`: Python loads a[0] first, then calls g (which here overwrites a[0])."""
    f = define("def g(a, x):\n    a[0] = 10.0 * x\n    return x\n\n"
               "def f(x, a):\n    a[0] += g(a, x)\n    return a[0] * x\n")
    a = np.array([3.0])
    expected = f(2.0, a.copy())  # (3 + x) * x = 10
    slope = fd(lambda x: f(x, a.copy()), 2.0)  # 3 + 2x = 7
    for mode in (ReverseWithPrimal, Forward):
        b = a.copy()
        arg = Active(2.0) if mode is ReverseWithPrimal else Duplicated(2.0, 1.0)
        shadow = np.zeros(1)
        result = autodiff(mode, f, arg, Duplicated(b, shadow))
        assert b[0] == 5.0
        if mode is ReverseWithPrimal:
            assert result[1] == expected
            assert result[0][0] == pytest.approx(slope)
        else:
            assert result[0] == pytest.approx(slope)


INCREMENTS = {  # a[k] += e / -= e where e cannot write memory: the adjoint only reads d_a[k]
    "add": "y[0] += x * a[1]\ny[1] -= math.sin(x)\nreturn y[0] * y[1]",
    "element into itself": "a[0] += a[0]\nreturn a[0] * x",
    "twice in a loop": "for k in range(3):\n    y[k % 2] += x * a[k]\nreturn y[0] + y[1] * x",
    "through an alias": "w = y\nw[1] += x * x\ny[1] -= a[0] * x\nreturn w[1] * y[0]",
    "a helper's value": "y[0] += value_of(x, a)\ny[1] -= 2.0 * value_of(a[2], a)\nreturn y[0] * y[1]",
    "written out": "y[0] = y[0] + x * a[1]\ny[1] = y[1] - value_of(x, a)\nreturn y[0] * y[1]",
    # conversions and numpy ufuncs compute values, they write nothing (the random programs found
    # `acc[0] += 0.2 * math.atan(float(k) * 0.3)` taken for a general store: racy on the GPU)
    "conversions": "for k in range(2):\n    y[k] += float(k + 1) * x * np.float64(a[k])\nreturn y[0] * y[1]",
    "a ufunc's value": "for k in range(2):\n    y[k] -= np.sqrt(float(k + 2)) * x * a[k]\nreturn y[0] * y[1]",
}


def value_of(x, a):  # reads its array, writes nothing: `y[k] += value_of(...)` is an increment
    return math.sin(x) * a[0] + x * x


@pytest.mark.parametrize("name", INCREMENTS)
def test_increment_adjoint_reads_the_shadow_without_zeroing_it(name):
    body = "".join(f"    {line}\n" for line in INCREMENTS[name].splitlines())
    f = define(f"def f(x, a, y):\n{body}", value_of=value_of, np=np)
    from numba.core import types

    from gpuad.ad import differentiate

    vec = types.float64[::1]
    d = differentiate(f, Reverse, (Active, Duplicated, Duplicated), (types.float64, vec, vec))
    assert not re.search(r"d_y\[[^]]*\] = ", d.source)  # the shadow is read, never zeroed
    a0, y0, x = np.array([0.7, -0.4, 1.3]), np.array([0.2, 0.5]), 0.6
    # L = value + <seed, y after>: every partial against central differences
    seed = np.array([0.3, -0.8])
    def loss(x, a, y):
        a, y = a.copy(), y.copy()
        return f(x, a, y) + seed @ y
    da, dy = np.zeros(3), seed.copy()
    (dx, *_), = autodiff(Reverse, f, Active(x), Duplicated(a0.copy(), da), Duplicated(y0.copy(), dy))
    assert dx == pytest.approx(fd(loss, x, a0, y0), rel=1e-7)
    for arr, grad in ((a0, da), (y0, dy)):
        for k in range(arr.size):
            e = np.zeros(arr.size)
            e[k] = 1e-6
            plus = loss(x, *((a0 + e, y0) if arr is a0 else (a0, y0 + e)))
            minus = loss(x, *((a0 - e, y0) if arr is a0 else (a0, y0 - e)))
            assert grad[k] == pytest.approx((plus - minus) / 2e-6, rel=1e-6, abs=1e-9), (name, k)
    ta, ty = np.array([0.1, 0.2, -0.3]), np.array([0.5, -0.1])
    tan_a, tan_y = ta.copy(), ty.copy()
    (df,) = autodiff(Forward, f, Duplicated(x, 1.0), Duplicated(a0.copy(), tan_a),
                     Duplicated(y0.copy(), tan_y))
    h = 1e-6
    y_plus, y_minus = y0 + h * ty, y0 - h * ty
    f_plus = f(x + h, a0 + h * ta, y_plus)
    f_minus = f(x - h, a0 - h * ta, y_minus)
    assert df == pytest.approx((f_plus - f_minus) / (2 * h), rel=1e-6)
    np.testing.assert_allclose(tan_y, (y_plus - y_minus) / (2 * h), rtol=1e-6, atol=1e-9)


def test_zero_tangent_times_a_nan_partial_adds_nothing():
    """d/dy x**y is NaN at x < 0; along a direction that does not move y it must not matter."""
    f = define("def f(x, y):\n    return x ** y\n")
    (df,) = autodiff(Forward, f, Duplicated(-2.0, 1.0), Duplicated(2.0, 0.0))
    assert df == -4.0


def test_name_first_bound_in_both_branches_and_counted_in_loops():
    """Found by the random programs (F8): `i` is bound in both branches, each followed by a loop that
    counts it; with a return inside one loop the renamed form read an unbound version."""
    f = define("def f(x, a, n):\n    if a[1] > 0.0:\n        i = 0\n        while i < n:\n"
               "            i += 1\n            if x > 5.0:\n                return x\n"
               "        if x > 0.2:\n            return x * x\n"
               "    else:\n        i = 0\n        while i < n:\n            i += 1\n    return x * 3.0\n")
    for sign, expected in ((1.0, 0.5), (-1.0, 3.0)):
        a = np.full(3, sign)
        assert both(f, 0.25, a, 2) == (expected, expected)


@pytest.mark.parametrize("body,x,expected", [
    ("s = x\nfor k in range(2):\n    s = s\n    s = s * x\nreturn s", 2.0, 12.0),
    ("if x > 0.0:\n    z = x * x\n    z = z\nelse:\n    z = x\nreturn z", 2.0, 4.0),
    ("z = x * x\nz = z\nreturn z * x", 2.0, 12.0),
])
def test_self_assignment_keeps_the_adjoint(body, x, expected):
    """`s = s` is a no-op; as an adjoint it read `d_s += d_s; d_s = 0` and dropped the gradient."""
    f = define("def f(x):\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    assert both(f, x) == (expected, expected)
