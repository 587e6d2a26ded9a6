"""Every rule of `gpuad.ad.rules.DERIVATIVES` at its edge points, through the real host path.

Table-driven: each case names the rule it checks, a small function using it, and points
(arguments -> expected partials, one per active argument) at the edges: +-0, +-inf, negative
bases, integer exponents 0/1/2/-1, float exponents 0.0/0.5/2.0, huge and tiny values, ties.
The expected values are the conventions of the README ("Derivatives at singular points"):
exact where the convention is exact (0, +-inf, NaN, 0.5), to rounding otherwise.

Each case compiles once per mode through numba's cpu target (`gpuad.autodiff` on the host,
where a raw `ZeroDivisionError` used to escape) and is evaluated at all its points; reverse
(all arguments Active) and forward (one Duplicated argument at a time, the rest Const) must
both give the expected partials.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numba
import numpy as np
import pytest

import gpuad
from gpuad import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, ReverseWithPrimal, autodiff
from gpuad.ad.primitives import ATOMIC_ADDS, guarded_add_mul, guarded_mul
from gpuad.ad.rules import DERIVATIVES

INF, NAN = math.inf, math.nan
R2 = math.sqrt(0.5)
NEAR1 = 1.0 - 2.0 ** -30  # 1 - NEAR1 * NEAR1 loses ~30 bits; (1 - x)(1 + x) is exact here
NEAR1_SLOPE = 1.0 / (2.0 ** -29 - 2.0 ** -60)  # 1 / (1 - NEAR1 ** 2), exactly


# ------------------------------------------------------------------ functions under test
def pow_0(x):
    return x ** 0


def pow_1(x):
    return x ** 1


def pow_2(x):
    return x ** 2


def pow_3(x):
    return x ** 3


def pow_m1(x):
    return x ** -1


def pow_0f(x):
    return x ** 0.0


def pow_1f(x):
    return x ** 1.0


def pow_2f(x):
    return x ** 2.0


def pow_half(x):
    return x ** 0.5


def pow_m1f(x):
    return x ** -1.0


def pow_n(x, n):
    return x ** n


def pow_xy(x, y):
    return x ** y


def math_pow(x, y):
    return math.pow(x, y)


def math_pow_n(x, n):
    return math.pow(x, n)


def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def mul(x, y):
    return x * y


def div(x, y):
    return x / y


def floordiv(x, y):
    return x - x // y + y  # x // y contributes nothing: partials (1, 1)


def mod(x, y):
    return x % y


def neg(x):
    return -x


def pos(x):
    return +x


def builtin_abs(x):
    return abs(x)


def builtin_min(x, y):
    return min(x, y)


def builtin_max(x, y):
    return max(x, y)


def relu(x):
    return max(x, 0.0)


def to_float(x):
    return float(x)


def frac_int(x):
    return x - int(x)


def frac_round(x):
    return x - round(x)


def frac_floor(x):
    return x - math.floor(x)


def frac_ceil(x):
    return x - math.ceil(x)


def frac_trunc(x):
    return x - math.trunc(x)


def plus_isnan(x):
    return x + (1.0 if math.isnan(x) else 0.0)


def plus_isinf(x):
    return x + (1.0 if math.isinf(x) else 0.0)


def plus_isfinite(x):
    return x + (1.0 if math.isfinite(x) else 0.0)


def sin(x):
    return math.sin(x)


def cos(x):
    return math.cos(x)


def tan(x):
    return math.tan(x)


def asin(x):
    return math.asin(x)


def acos(x):
    return math.acos(x)


def atan(x):
    return math.atan(x)


def atan2(y, x):
    return math.atan2(y, x)


def sinh(x):
    return math.sinh(x)


def cosh(x):
    return math.cosh(x)


def tanh(x):
    return math.tanh(x)


def asinh(x):
    return math.asinh(x)


def acosh(x):
    return math.acosh(x)


def atanh(x):
    return math.atanh(x)


def exp(x):
    return math.exp(x)


def expm1(x):
    return math.expm1(x)


def log(x):
    return math.log(x)


def log1p(x):
    return math.log1p(x)


def log2(x):
    return math.log2(x)


def log10(x):
    return math.log10(x)


def sqrt(x):
    return math.sqrt(x)


def hypot(x, y):
    return math.hypot(x, y)


def erf(x):
    return math.erf(x)


def erfc(x):
    return math.erfc(x)


def fabs(x):
    return math.fabs(x)


def copysign(x, y):
    return math.copysign(x, y)


def degrees(x):
    return math.degrees(x)


def radians(x):
    return math.radians(x)


def to_float64(x):
    return np.float64(x)


def to_float32(x):
    return np.float32(x)


def guarded_product(a, b):
    return guarded_mul(a, b)


def guarded_update(acc, a, b):
    return guarded_add_mul(acc, a, b)


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    rule: object      # the DERIVATIVES key this case checks
    f: object
    points: tuple     # ((args...), (partial wrt each active argument...))
    const: tuple = ()  # positions passed as Const (integer exponents)

    @property
    def active(self) -> tuple:
        nargs = len(self.points[0][0])
        return tuple(i for i in range(nargs) if i not in self.const)


def C(rule, f, *points, const=()):
    return Case(rule, f, tuple((args if isinstance(args, tuple) else (args,),
                                want if isinstance(want, tuple) else (want,)) for args, want in points),
                tuple(const))


POW = operator.pow
LN2 = math.log(2.0)
CASES = [
    # x ** n, n an int literal (numba's integer power: 0.0 ** -1 raises, see below)
    C(POW, pow_0, (0.0, 0.0), (-0.0, 0.0), (2.0, 0.0), (-3.0, 0.0), (INF, 0.0), (-INF, 0.0), (NAN, 0.0)),
    C(POW, pow_1, (0.0, 1.0), (-0.0, 1.0), (-3.0, 1.0), (INF, 1.0), (1e300, 1.0)),
    C(POW, pow_2, (0.0, 0.0), (-0.0, 0.0), (-3.0, -6.0), (INF, INF), (-INF, -INF), (1e300, 2e300)),
    C(POW, pow_3, (0.0, 0.0), (-2.0, 12.0), (1e200, INF)),
    C(POW, pow_m1, (2.0, -0.25), (-2.0, -0.25), (INF, 0.0), (1e300, 0.0), (1e-200, -INF)),
    # x ** y, y a float literal
    C(POW, pow_0f, (0.0, 0.0), (-0.0, 0.0), (-3.0, 0.0), (INF, 0.0), (NAN, 0.0)),
    C(POW, pow_1f, (0.0, 1.0), (-0.0, 1.0), (-3.0, 1.0), (INF, 1.0)),
    C(POW, pow_2f, (0.0, 0.0), (-3.0, -6.0), (INF, INF), (-INF, -INF)),
    C(POW, pow_half, (0.0, INF), (-0.0, INF), (4.0, 0.25), (INF, 0.0), (-4.0, NAN)),
    C(POW, pow_m1f, (0.0, -INF), (-0.0, -INF), (2.0, -0.25), (INF, 0.0), (-INF, 0.0)),
    # x ** n, n an int variable (Const)
    C(POW, pow_n, ((0.0, 0), 0.0), ((-0.0, 0), 0.0), ((0.0, 1), 1.0), ((0.0, 2), 0.0), ((0.0, 3), 0.0),
      ((2.0, -1), -0.25), ((1e-200, -1), -INF), ((-2.0, 3), 12.0), ((INF, 0), 0.0), const=(1,)),
    C(math.pow, math_pow_n, ((0.0, 0), 0.0), ((0.0, 1), 1.0), ((0.0, 2), 0.0), ((2.0, -1), -0.25),
      ((1e-200, -1), -INF), ((-2.0, 3), 12.0), const=(1,)),
    # x ** y and math.pow(x, y), both active: d/dy is 0 at x == 0 and where x ** y is 0, NaN for x < 0
    *(C(rule, f, ((0.0, 0.0), (0.0, 0.0)), ((0.0, 0.5), (INF, 0.0)), ((0.0, 1.0), (1.0, 0.0)),
        ((0.0, 2.0), (0.0, 0.0)), ((0.0, -1.0), (-INF, 0.0)), ((-0.0, 0.5), (INF, 0.0)),
        ((2.0, 3.0), (12.0, 8.0 * LN2)), ((-2.0, 2.0), (-4.0, NAN)), ((-2.0, 0.5), (NAN, NAN)),
        ((1.0, 5.0), (5.0, 0.0)), ((INF, -1.0), (0.0, 0.0)), ((INF, 2.0), (INF, INF)),
        ((2.0, -2000.0), (0.0, 0.0)), ((0.5, -2000.0), (-INF, -INF)))
      for rule, f in [(POW, pow_xy), (math.pow, math_pow)]),
    C(operator.add, add, ((INF, 1.0), (1.0, 1.0)), ((0.0, -0.0), (1.0, 1.0))),
    C(operator.sub, sub, ((INF, 1.0), (1.0, -1.0)), ((0.0, -0.0), (1.0, -1.0))),
    C(operator.mul, mul, ((0.0, 0.0), (0.0, 0.0)), ((2.0, 3.0), (3.0, 2.0)), ((INF, 2.0), (2.0, INF)),
      ((1e300, 1e300), (1e300, 1e300))),
    C(operator.truediv, div, ((1.0, 0.0), (INF, -INF)), ((1.0, -0.0), (-INF, -INF)),
      ((2.0, 4.0), (0.25, -0.125)), ((1.0, INF), (0.0, 0.0)), ((1e300, 1e-300), (1e300, -INF))),
    C(operator.floordiv, floordiv, ((5.5, 2.0), (1.0, 1.0)), ((4.0, 2.0), (1.0, 1.0)),
      ((1.0, 0.1), (1.0, 1.0))),
    # d/dy (x % y) is minus the quotient Python uses: 1.0 % 0.1 == 1.0 - 9 * 0.1 (1.0 / 0.1 rounds to 10)
    C(operator.mod, mod, ((1.0, 0.1), (1.0, -9.0)), ((5.5, 2.0), (1.0, -2.0)), ((-5.5, 2.0), (1.0, 3.0)),
      ((5.5, -2.0), (1.0, 3.0)), ((4.0, 2.0), (1.0, -2.0)), ((1.0, INF), (1.0, 0.0)),
      ((1.0, 0.0), (NAN, NAN)), ((INF, 2.0), (NAN, NAN))),
    C(operator.neg, neg, (0.0, -1.0), (INF, -1.0)),
    C(operator.pos, pos, (0.0, 1.0), (-INF, 1.0)),
    # |x| at 0: 0, whatever the sign of the zero (abs and fabs alike)
    *(C(rule, f, (0.0, 0.0), (-0.0, 0.0), (2.0, 1.0), (-2.0, -1.0), (INF, 1.0), (-INF, -1.0))
      for rule, f in [(abs, builtin_abs), (math.fabs, fabs)]),
    # min/max: half to each argument at a tie; otherwise 1 to the argument returned (Python returns
    # min(1.0, nan) == 1.0 but min(nan, 1.0) is NaN: then NaN)
    C(min, builtin_min, ((1.0, 1.0), (0.5, 0.5)), ((1.0, 2.0), (1.0, 0.0)), ((2.0, 1.0), (0.0, 1.0)),
      ((0.0, -0.0), (0.5, 0.5)), ((INF, INF), (0.5, 0.5)), ((-INF, 1.0), (1.0, 0.0)),
      ((1.0, NAN), (1.0, 0.0)), ((NAN, 1.0), (NAN, NAN))),
    C(max, builtin_max, ((1.0, 1.0), (0.5, 0.5)), ((1.0, 2.0), (0.0, 1.0)), ((2.0, 1.0), (1.0, 0.0)),
      ((0.0, -0.0), (0.5, 0.5)), ((-INF, -INF), (0.5, 0.5)), ((1.0, NAN), (1.0, 0.0)),
      ((NAN, 1.0), (NAN, NAN))),
    C(max, relu, (0.0, 0.5), (-0.0, 0.5), (1.0, 1.0), (-1.0, 0.0), (INF, 1.0)),
    C(float, to_float, (0.0, 1.0), (INF, 1.0)),
    C(np.float64, to_float64, (0.0, 1.0), (-2.5, 1.0), (INF, 1.0)),
    C(np.float32, to_float32, (0.0, 1.0), (-2.5, 1.0), (INF, 1.0)),
    # piecewise-constant functions contribute nothing: x - floor(x) has derivative 1
    *(C(rule, f, (2.5, 1.0), (-2.5, 1.0), (2.0, 1.0), (0.0, 1.0))
      for rule, f in [(int, frac_int), (round, frac_round), (math.floor, frac_floor), (math.ceil, frac_ceil),
                      (math.trunc, frac_trunc)]),
    *(C(rule, f, (1.0, 1.0), (INF, 1.0), (NAN, 1.0))
      for rule, f in [(math.isnan, plus_isnan), (math.isinf, plus_isinf), (math.isfinite, plus_isfinite)]),
    C(math.sin, sin, (0.0, 1.0), (INF, NAN)),
    C(math.cos, cos, (0.0, 0.0), (INF, NAN)),
    C(math.tan, tan, (0.0, 1.0), (INF, NAN)),
    # one-sided infinite slopes at the ends of the domain, NaN outside it
    C(math.asin, asin, (1.0, INF), (-1.0, INF), (0.0, 1.0), (0.5, 1.0 / math.sqrt(0.75)), (2.0, NAN),
      (-2.0, NAN), (NEAR1, math.sqrt(NEAR1_SLOPE))),
    C(math.acos, acos, (1.0, -INF), (-1.0, -INF), (0.0, -1.0), (0.5, -1.0 / math.sqrt(0.75)), (2.0, NAN),
      (-NEAR1, -math.sqrt(NEAR1_SLOPE))),
    C(math.atan, atan, (0.0, 1.0), (1.0, 0.5), (INF, 0.0), (-INF, 0.0), (1e200, 0.0)),
    C(math.sinh, sinh, (0.0, 1.0), (1000.0, INF), (-1000.0, INF)),
    C(math.cosh, cosh, (0.0, 0.0), (1000.0, INF), (-1000.0, -INF)),
    C(math.tanh, tanh, (0.0, 1.0), (INF, 0.0), (-INF, 0.0), (1e300, 0.0)),
    C(math.asinh, asinh, (0.0, 1.0), (1.0, R2), (1e200, 1e-200), (-1e200, 1e-200), (INF, 0.0), (-INF, 0.0)),
    C(math.acosh, acosh, (1.0, INF), (2.0, 1.0 / math.sqrt(3.0)), (1e200, 1e-200), (INF, 0.0), (0.5, NAN)),
    C(math.atanh, atanh, (1.0, INF), (-1.0, INF), (0.0, 1.0), (0.5, 1.0 / 0.75), (2.0, NAN), (-2.0, NAN),
      (NEAR1, NEAR1_SLOPE)),
    C(math.exp, exp, (0.0, 1.0), (-INF, 0.0), (1000.0, INF)),
    C(math.expm1, expm1, (0.0, 1.0), (-INF, 0.0), (1000.0, INF)),
    C(math.log, log, (0.0, INF), (-0.0, INF), (2.0, 0.5), (1e-300, 1e300), (INF, 0.0), (-1.0, NAN),
      (NAN, NAN)),
    C(math.log1p, log1p, (0.0, 1.0), (-1.0, INF), (1.0, 0.5), (INF, 0.0), (-2.0, NAN)),
    C(math.log2, log2, (0.0, INF), (-0.0, INF), (2.0, 0.5 / LN2), (INF, 0.0), (-1.0, NAN)),
    C(math.log10, log10, (0.0, INF), (-0.0, INF), (10.0, 0.1 / math.log(10.0)), (INF, 0.0), (-1.0, NAN)),
    # sqrt at 0 is +inf for both zeros (sqrt(-0.0) is -0.0)
    C(math.sqrt, sqrt, (0.0, INF), (-0.0, INF), (4.0, 0.25), (1e-300, 5e149), (INF, 0.0), (-1.0, NAN)),
    # atan2 and hypot: 0 at the origin; no overflow or underflow for huge or tiny arguments
    C(math.atan2, atan2, ((0.0, 0.0), (0.0, 0.0)), ((-0.0, -0.0), (0.0, 0.0)), ((1.0, 0.0), (0.0, -1.0)),
      ((0.0, 1.0), (1.0, 0.0)), ((0.0, -1.0), (-1.0, 0.0)), ((3.0, 4.0), (4.0 / 25.0, -3.0 / 25.0)),
      ((1e-200, 1e-200), (5e199, -5e199)), ((1e200, 1e200), (5e-201, -5e-201)),
      ((1.0, INF), (0.0, 0.0)), ((INF, 1.0), (0.0, 0.0)), ((INF, INF), (0.0, 0.0))),
    C(math.hypot, hypot, ((0.0, 0.0), (0.0, 0.0)), ((-0.0, 0.0), (0.0, 0.0)), ((3.0, 4.0), (0.6, 0.8)),
      ((-3.0, 4.0), (-0.6, 0.8)), ((0.0, -2.0), (0.0, -1.0)), ((1e300, 1e300), (R2, R2)),
      ((1e-300, 1e-300), (R2, R2)), ((INF, 1.0), (1.0, 0.0)), ((-INF, 1.0), (-1.0, 0.0)),
      ((1.0, INF), (0.0, 1.0))),
    C(math.erf, erf, (0.0, 2.0 / math.sqrt(math.pi)), (30.0, 0.0), (INF, 0.0), (-INF, 0.0)),
    C(math.erfc, erfc, (0.0, -2.0 / math.sqrt(math.pi)), (30.0, 0.0), (INF, 0.0)),
    # copysign(x, y) = |x| sign(y): 0 at x == 0 like abs; piecewise constant in y
    C(math.copysign, copysign, ((0.0, 1.0), (0.0, 0.0)), ((-0.0, -1.0), (0.0, 0.0)),
      ((2.0, -1.0), (-1.0, 0.0)), ((-2.0, -1.0), (1.0, 0.0)), ((2.0, -0.0), (-1.0, 0.0)),
      ((-2.0, 3.0), (-1.0, 0.0)), ((INF, 1.0), (1.0, 0.0))),
    C(math.degrees, degrees, (0.0, 180.0 / math.pi), (INF, 180.0 / math.pi)),
    C(math.radians, radians, (0.0, math.pi / 180.0), (-INF, math.pi / 180.0)),
    # the zero-guarded product of generated code (forward over reverse differentiates it): each
    # factor's partial is the other, and a zero factor still passes on the other's infinity
    C(guarded_mul, guarded_product, ((2.0, 3.0), (3.0, 2.0)), ((0.0, 3.0), (3.0, 0.0)),
      ((0.0, INF), (INF, 0.0)), ((-1.5, 0.0), (0.0, -1.5)), ((INF, 2.0), (2.0, INF))),
    # the fused update acc + guarded_mul(a, b): the same partials, and 1 for acc
    C(guarded_add_mul, guarded_update, ((1.0, 2.0, 3.0), (1.0, 3.0, 2.0)),
      ((1.0, 0.0, INF), (1.0, INF, 0.0)), ((INF, 0.0, 2.0), (1.0, 2.0, 0.0)),
      ((-1.0, -1.5, 0.0), (1.0, 0.0, -1.5)), ((0.0, INF, 2.0), (1.0, 2.0, INF))),
]

NOT_USER_FACING = set(ATOMIC_ADDS)  # appear only in generated code


def agrees(got, want) -> bool:
    """Exact for the conventional values (0, +-inf, NaN, halves), to rounding otherwise."""
    if got is None:
        return False
    got = float(got)
    if math.isnan(want):
        return math.isnan(got)
    if want == 0.0 or math.isinf(want) or want in (0.5, 1.0, -1.0):
        return got == want
    return got == pytest.approx(want, rel=1e-13, abs=0.0)


def wrapped(case: Case, args, wrap, exclusive=None):
    """Activities of one call: integer exponents Const, `wrap(i, value)` for the others."""
    out = []
    for i, a in enumerate(args):
        if i in case.const or (exclusive is not None and i != exclusive):
            out.append(Const(a))
        else:
            out.append(wrap(i, a))
    return out


def mismatches(case: Case, convert=float) -> list:
    """(mode, args, argument, got, want) wherever a sweep disagrees with the convention."""
    bad = []
    for args, want in case.points:
        args = tuple(a if i in case.const else convert(a) for i, a in enumerate(args))
        (grads,) = autodiff(Reverse, case.f, *wrapped(case, args, lambda i, a: Active(a)))
        for k, i in enumerate(case.active):
            if not agrees(grads[i], want[k]):
                bad.append(("reverse", args, i, grads[i], want[k]))
        for k, i in enumerate(case.active):
            seeded = wrapped(case, args, lambda j, a: Duplicated(a, convert(1.0)), exclusive=i)
            (t,) = autodiff(Forward, case.f, *seeded)
            if not agrees(t, want[k]):
                bad.append(("forward", args, i, t, want[k]))
    return bad


def case_id(case: Case) -> str:
    return case.f.__name__


def test_every_rule_has_edge_cases():
    covered = {c.rule for c in CASES}
    assert set(DERIVATIVES) - NOT_USER_FACING - covered == set()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rule_at_edge_points(case):
    assert mismatches(case) == []


def float32_points(case: Case) -> Case:
    """The points whose arguments and partials float32 represents (no 1e300, no 0.1)."""
    def representable(v):
        return math.isnan(v) or math.isinf(v) or (abs(v) < 1e30 and float(np.float32(v)) == v)
    points = tuple(p for p in case.points if all(map(representable, p[0] + p[1])))
    return Case(case.rule, case.f, points, case.const)


F32_CASES = [float32_points(c) for c in CASES if c.f in (
    pow_0, pow_half, pow_n, pow_xy, builtin_abs, builtin_min, sqrt, log, hypot, atan2, copysign, mod)]


@pytest.mark.parametrize("case", F32_CASES, ids=case_id)
def test_float32_rules_at_edge_points(case):
    """Same conventions for float32 arguments (numba boxes float32 results as Python floats)."""
    assert case.points
    bad = [m for m in mismatches(case, np.float32)
           if not (m[4] != 0.0 and math.isfinite(m[4]) and m[3] == pytest.approx(m[4], rel=1e-6, abs=0.0))]
    assert bad == []


def test_negative_int_literal_power_of_zero_is_ieee_as_on_cuda():
    """`x ** -1` in a differentiated function: the exponent is taken as a float, so the cpu target
    gives CUDA's IEEE values (inf, and -inf for the derivative) instead of numba's ZeroDivisionError."""
    assert autodiff(ReverseWithPrimal, pow_m1, Active(0.0)) == ((-math.inf,), math.inf)
    assert autodiff(ForwardWithPrimal, pow_m1, Duplicated(0.0, 1.0)) == (-math.inf, math.inf)
    assert autodiff(ReverseWithPrimal, pow_m1, Active(-0.0)) == ((-math.inf,), -math.inf)


@pytest.mark.parametrize("f, args", [(pow_n, (0.0, -1)), (math_pow_n, (0.0, -1))],
                         ids=["pow_n", "math_pow_n"])
def test_negative_int_power_of_zero_raises_as_the_primal_does(f, args):
    """`0.0 ** n` with a run-time int n = -1 raises ZeroDivisionError in Python and in numba's integer
    power alike (math.pow with an int exponent too): the primal raises; the derivative adds no error
    of its own (x ** 0 at 0 and x ** -1 at 1e-200, where x * x underflows, are in the table above)."""
    with pytest.raises(ZeroDivisionError):
        numba.njit(f)(*args)
    with pytest.raises(ZeroDivisionError):
        autodiff(Reverse, f, Active(args[0]), *args[1:])



# ------------------------------------------------------------------ the cuda target
# The templates use math.nan/inf/isinf/hypot, `//` and conditional expressions: the same
# conventions must hold in code numba-cuda compiles. One kernel per function (autodiff
# names its function statically); each thread differentiates at one point of the table.
def store(out, i, a, b, c, d):
    out[i, 0] = a
    out[i, 1] = b
    out[i, 2] = c
    out[i, 3] = d


def binary_edges_kernel_pow(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (dx, dy), = autodiff(Reverse, pow_xy, Active(xs[i]), Active(ys[i]))
        tx, = autodiff(Forward, pow_xy, Duplicated(xs[i], 1.0), Const(ys[i]))
        ty, = autodiff(Forward, pow_xy, Const(xs[i]), Duplicated(ys[i], 1.0))
        store(out, i, dx, dy, tx, ty)
        out[i, 4] = pow_xy(xs[i], ys[i])


def binary_edges_kernel_mod(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (dx, dy), = autodiff(Reverse, mod, Active(xs[i]), Active(ys[i]))
        tx, = autodiff(Forward, mod, Duplicated(xs[i], 1.0), Const(ys[i]))
        ty, = autodiff(Forward, mod, Const(xs[i]), Duplicated(ys[i], 1.0))
        store(out, i, dx, dy, tx, ty)
        out[i, 4] = mod(xs[i], ys[i])


def binary_edges_kernel_hypot(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (dx, dy), = autodiff(Reverse, hypot, Active(xs[i]), Active(ys[i]))
        tx, = autodiff(Forward, hypot, Duplicated(xs[i], 1.0), Const(ys[i]))
        ty, = autodiff(Forward, hypot, Const(xs[i]), Duplicated(ys[i], 1.0))
        store(out, i, dx, dy, tx, ty)
        out[i, 4] = hypot(xs[i], ys[i])


def binary_edges_kernel_atan2(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (dx, dy), = autodiff(Reverse, atan2, Active(xs[i]), Active(ys[i]))
        tx, = autodiff(Forward, atan2, Duplicated(xs[i], 1.0), Const(ys[i]))
        ty, = autodiff(Forward, atan2, Const(xs[i]), Duplicated(ys[i], 1.0))
        store(out, i, dx, dy, tx, ty)
        out[i, 4] = atan2(xs[i], ys[i])


def binary_edges_kernel_min(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (dx, dy), = autodiff(Reverse, builtin_min, Active(xs[i]), Active(ys[i]))
        tx, = autodiff(Forward, builtin_min, Duplicated(xs[i], 1.0), Const(ys[i]))
        ty, = autodiff(Forward, builtin_min, Const(xs[i]), Duplicated(ys[i], 1.0))
        store(out, i, dx, dy, tx, ty)
        out[i, 4] = builtin_min(xs[i], ys[i])


def unary_edges_kernel(xs, out):
    i = gpuad.thread_index()
    if i < xs.size:
        (a,), = autodiff(Reverse, sqrt, Active(xs[i]))
        (b,), = autodiff(Reverse, log, Active(xs[i]))
        (c,), = autodiff(Reverse, builtin_abs, Active(xs[i]))
        (d,), = autodiff(Reverse, atanh, Active(xs[i]))
        e, = autodiff(Forward, pow_0, Duplicated(xs[i], 1.0))
        g, = autodiff(Forward, pow_m1f, Duplicated(xs[i], 1.0))
        store(out, i, a, b, c, d)
        out[i, 4] = e
        out[i, 5] = g


BINARY_KERNELS = {pow_xy: binary_edges_kernel_pow, mod: binary_edges_kernel_mod,
                  hypot: binary_edges_kernel_hypot, atan2: binary_edges_kernel_atan2,
                  builtin_min: binary_edges_kernel_min}
# where numba-cuda's primal differs from Python's (and numba's cpu target): 1.0 % inf is NaN,
# min(nan, 1.0) is 1.0
CUDA_PRIMAL_DIFFERS = {mod: {(1.0, INF)}, builtin_min: {(NAN, 1.0)}}
UNARY_KERNEL_FUNCTIONS = (sqrt, log, builtin_abs, atanh, pow_0, pow_m1f)


def case_of(f) -> Case:
    (case,) = [c for c in CASES if c.f is f]
    return case


@pytest.mark.gpu
@pytest.mark.parametrize("f", list(BINARY_KERNELS), ids=lambda f: f.__name__)
def test_binary_rules_at_edge_points_on_gpu(f):
    case = case_of(f)
    xs = np.array([args[0] for args, _ in case.points])
    ys = np.array([args[1] for args, _ in case.points])
    out = np.zeros((len(xs), 5))
    gpuad.kernel(BINARY_KERNELS[f], target="cuda").launch(len(xs), xs, ys, out)
    cpu = numba.njit(error_model="numpy")(f)
    bad, primal_differs = [], set()
    for n, (args, want) in enumerate(case.points):
        if not agrees(out[n, 4], cpu(*args)):
            primal_differs.add(args)  # the derivative follows the target's own primal there
            continue
        bad += [(args, k, out[n, k], want[k % 2]) for k in range(4) if not agrees(out[n, k], want[k % 2])]
    assert bad == []
    assert primal_differs == CUDA_PRIMAL_DIFFERS.get(f, set())


@pytest.mark.gpu
def test_unary_rules_at_edge_points_on_gpu():
    # keyed by repr: a set would merge -0.0 into 0.0
    row = {repr(args[0]): args[0] for f in UNARY_KERNEL_FUNCTIONS for args, _ in case_of(f).points}
    out = np.zeros((len(row), len(UNARY_KERNEL_FUNCTIONS)))
    gpuad.kernel(unary_edges_kernel, target="cuda").launch(len(row), np.array(list(row.values())), out)
    bad = []
    for k, f in enumerate(UNARY_KERNEL_FUNCTIONS):
        for args, want in case_of(f).points:
            n = list(row).index(repr(args[0]))
            if not agrees(out[n, k], want[0]):
                bad.append((f.__name__, args, out[n, k], want[0]))
    assert bad == []
