# ruff: noqa: B007, B020 - corpus loops exist for their trip counts; one reuses its loop variable on purpose
"""The differentiation corpus: small kernel-language functions, their inputs, and how to check them.

Shared by tests/test_corpus.py (cpu target, CI) and tests/test_gpu_corpus.py (cuda target): both
call `check_reverse(entry, target)` / `check_forward(entry, target)`, which build one kernel per
entry and direction, launch it on `POINTS` threads (one evaluation point per thread) and compare
every derivative with float64 central differences of the plain Python function.

Argument kinds of an entry (one per parameter of its function):
  F(lo, hi)         float scalar, Active in reverse, Duplicated(x, dx) in forward mode
  C(lo, hi)         float scalar passed as Const (no derivative; `None` in reverse results)
  I(lo, hi)         int scalar, bare in the autodiff call (inactive); drawn per thread in [lo, hi]
  I(lo, hi, const=True)  the same, wrapped in Const(...)
  A(shape, lo, hi)  float array Duplicated(a, da); each thread gets its own slice of a
                    (n, *shape) array, so 1-D and 2-D arrays reach the function as C views

What is compared (Enzyme semantics, docs/design.md):
  reverse   L = f(args) + sum_k <seed_k, a_k after f> with da_k = seed_k on entry; after the
            call every Active's derivative and every da_k equal dL/d(input) (read-only
            elements therefore get seed + gradient: accumulation; written elements get their
            seed consumed), the primal (WithPrimal) equals f, and every a_k equals f's
            side effects.
  forward   along a random direction v (dx for F, da for A): df = d f(args + s v)/ds and
            every da_k after the call = d (a_k after f)/ds; the primal (WithPrimal) equals f.

Finite differences: Richardson-extrapolated central differences (O(h^4)) with h scaled to the
point; each derivative is estimated with h and h/2 and a point is only used where the two agree
(its stencil does not straddle a kink or jump of a piecewise function). Every check requires
at least half of the points to be usable, so no entry can pass by having none.
"""
from __future__ import annotations

import itertools
import linecache
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

import gpuad
from gpuad import Active, Const, Duplicated, Forward, ForwardWithPrimal, Reverse, ReverseWithPrimal, autodiff

POINTS = 24  # threads (evaluation points) per launch
RTOL, ATOL = 1e-6, 1e-8


# ============================================================================================
# The corpus functions.  Each is plain Python in the kernel language; a comment says what it
# covers.  Domains are in CORPUS below.
# ============================================================================================

# --- scalars: math functions ----------------------------------------------------------------

def trig(x, y):  # sin, cos, tan
    return math.sin(x) * math.cos(y) + math.tan(0.5 * x * y)


def inverse_trig(x, y):  # asin, acos, atan
    return math.asin(x) * y + math.acos(0.9 * y) - math.atan(x * y)


def atan2_quadrants(y, x):  # atan2 in all quadrants except across its branch cut (y > 0)
    return math.atan2(y, x) + math.atan2(x, y + 2.0)


def hyperbolic(x, y):  # sinh, cosh, tanh
    return math.sinh(x) * math.cosh(y) + math.tanh(x - y)


def inverse_hyperbolic(x, y):  # asinh, acosh, atanh
    return math.asinh(x * y) + math.acosh(1.5 + y * y) * math.atanh(0.7 * x)


def exp_family(x, y):  # exp, expm1
    return math.exp(x) * y + math.expm1(x * y)


def log_family(x, y):  # log, log1p, log2, log10
    return math.log(x) * y + math.log1p(x * y) + math.log2(x + y) - math.log10(y)


def expm1_log1p_small(x):  # expm1/log1p where they matter: arguments ~1e-3
    return math.expm1(1e-3 * x) * 1e3 + math.log1p(1e-3 * x * x) * 1e3


def error_functions(x, y):  # erf, erfc
    return math.erf(x) * y + math.erfc(x * y)


def hypot_sqrt(x, y):  # hypot, sqrt
    return math.hypot(x, y) + math.sqrt(x * x + y * y + 1.0) * x


def math_pow(x, y):  # math.pow with both arguments active (x > 0)
    return math.pow(x, y) + math.pow(y, 2.0)


def fabs_copysign(x, y):  # fabs, copysign (d/dy copysign(x, y) = 0 away from y = 0)
    return math.fabs(x) * y + math.copysign(x * x + 1.0, y) * x


def rounding_zero_derivative(x, y):  # floor, ceil, trunc: zero derivative, values still used
    return math.floor(3.0 * x) * y + math.ceil(2.0 * y) * x + math.trunc(4.0 * x * y)


def degrees_radians(x):  # degrees, radians
    return math.degrees(x) * math.radians(x + 1.0)


def min_max(x, y):  # builtin min and max
    return min(x, y) * max(x * y, 0.25) + max(x, 2.0 * y) - min(x * x, 0.5)


def builtin_abs(x, y):  # builtin abs
    return abs(x) * y + abs(x - y) * abs(y)


def integer_powers(x):  # x ** int literal, including negative and zero exponents
    return x ** 3 - 2.0 * x ** 2 + x ** -2 + x ** 0 + x ** 1


def runtime_integer_power(x, n):  # x ** n with an int argument
    return x ** n + x ** (n + 1)


def float_powers(x, y):  # x ** float literal, x ** y (both active), ** 0.5
    return x ** 2.5 + x ** y + (x * y) ** 0.5


def int_to_float(x, n):  # int -> float conversions enter float arithmetic
    k = n * 3 + 1
    return float(k) * x + x / float(n + 2) + float(k % 4) * x * x


def division_mod(x, y):  # true division and float % (kinks of % avoided by the FD filter)
    return x / y + (x * 3.0) % y - y / (x * x + 1.0)


def ternaries(x, y):  # conditional expressions, nested
    a = x * y if x > y else x - y
    b = math.sin(x) if a > 0.0 else (math.cos(y) if y > 0.5 else y * y)
    return a * b


def integers_inactive(x, n, m):  # int arithmetic (//, %, *) mixed with floats: ints never active
    j = (n * m + 3) // 2 - m % 3
    return x * float(j) + float(n) * math.sin(x * float(m))


def const_floats(x, c):  # a Const float argument: used, but no derivative returned
    return math.exp(c * x) + c * c * x


def tuples_and_reassignment(x, y):  # tuple packing/unpacking, swaps, augmented assignment
    a, b = x * y, x + y
    a, b = b, a * b
    a += x
    a *= b
    a -= y
    a /= 2.0
    return a + b


def compound(x, y, z):  # three active arguments, shared subexpressions
    r = x * x + y * y + z * z + 1.0
    return math.sin(x * y) * math.exp(-r * 0.1) / r + z * math.log(r)


def bool_logic(x, y):  # and/or/not in branch conditions
    if (x > 0.0 and y > 0.0) or not (x + y < -0.5):
        return x * y * y
    return x - y


# --- control flow ----------------------------------------------------------------------------

def if_elif_else(x, y):  # if / elif / else, each branch with its own derivative
    if x > y:
        z = x * y
    elif x > 0.5 * y:
        z = math.sin(x) + y
    else:
        z = x - y * y
    return z * x


def early_return_first(x, y):  # early return at the very top
    if x < -0.5:
        return x * y
    z = math.exp(x) * y
    return z * z


def early_return_middle(x, y):  # several returns, in the middle and at the end
    z = x * y
    if z > 0.2:
        return math.exp(z)
    w = z - y
    if w < -0.5:
        return w * x
    return w + x


def if_without_else(x, y):  # if without else updates a variable conditionally
    z = x
    if y > 0.0:
        z = z * y + x
    if x > 0.3:
        z = math.sin(z)
    return z * y


def constant_range(x):  # for i in range(constant), loop-carried Horner recurrence
    s = 0.0
    for i in range(5):
        s = s * x + float(i + 1)
    return s


def constant_range_step(x):  # range(a, b, step) with constant bounds, negative step
    s = 1.0
    for i in range(9, 0, -3):
        s = s * x + float(i) * 0.1
    return s


def runtime_range(x, n):  # range(n), run-time trip count (zero trips included)
    s = x
    for i in range(n):
        s = math.sin(s) * x + s
    return s


def runtime_range_step(x, a, b):  # range(a, b, 2) with run-time bounds
    s = 0.0
    for i in range(a, b, 2):
        s = s * 0.5 + x ** 2 * float(i)
    return s


def runtime_negative_step(x, n):  # range(n, 1, -2), run-time start, negative step
    s = 0.0
    for i in range(n, 1, -2):
        s += x ** i / float(i)
    return s


def nested_loops(x, n):  # triangular nested loops with run-time bounds
    s = 0.0
    for i in range(n):
        t = x
        for j in range(i):
            t = t * x + 0.1 * float(j)
        s += t
    return s


def nested_constant_runtime(x, y, n):  # constant outer loop, run-time inner loop
    s = y
    for i in range(3):
        for j in range(n):
            s = s * 0.5 + math.sin(x * float(i + j)) * y
    return s


def while_data_dependent(x):  # while with a trip count that depends on the active value
    s = x
    k = 0
    while s < 10.0:
        s = s * 1.7 + x
        k += 1
    return s * float(k)


def while_counter(x, n):  # while with an int counter
    s = x
    k = 0
    while k < n:
        s = s * x * 0.5 + math.cos(s)
        k += 1
    return s


def loop_break(x, n):  # break on a data-dependent condition
    s = 0.0
    for i in range(n):
        s = s * x + math.cos(s)
        if s > 2.0:
            break
    return s * x


def loop_continue(x, n):  # continue skips part of the body
    s = x
    for i in range(n):
        if i % 3 == 1:
            continue
        s = s * 0.8 + math.sin(s * x)
    return s


def break_and_continue(x, n):  # both in one loop
    s = 0.0
    for i in range(n):
        if i % 3 == 1:
            continue
        s = s * x + math.cos(s)
        if s > 4.0:
            break
    return s


def return_in_loop(x, n):  # early return from inside a loop
    s = x
    for i in range(n):
        s = s * s + 0.1
        if s > 3.0:
            return s * x
    return -s


def return_in_nested_loop(x, n):  # early return from the inner of two loops
    s = x
    for i in range(n):
        for j in range(3):
            s = s * 0.9 + x * 0.3
            if s > 1.5:
                return s * float(i + j + 1)
    return s


def break_inner_loop(x, n):  # break leaves only the inner loop
    s = 0.0
    for i in range(n):
        t = x
        for j in range(5):
            t = t * 1.3 + 0.1
            if t > 2.0:
                break
        s += t * float(i + 1)
    return s


def loop_two_carried(x, y, n):  # two loop-carried variables updated by tuple assignment
    a = x
    b = y
    for i in range(n):
        a, b = b, a * 0.5 + b * x
    return a + 2.0 * b


def branch_in_loop(x, n):  # branch inside a loop overwrites state differently per iteration
    y = x
    for i in range(n):
        if y > 1.0:
            y = math.sqrt(y) * x
        else:
            y = y * 2.0 + x
    return y


def loop_var_after_loop(x):  # the loop variable used after the loop, reused as a new bound
    s = 0.0
    for i in range(3):
        s += x * float(i)
    for i in range(i, 6):
        s = s * x
    return s * float(i)


def while_array_index(a, x, n):  # while loop overwriting an int (the array index) each iteration
    v = x
    k = 0
    while k < n:
        k += 1
        v = 0.6 * v + 0.4 * a[k % 4]
    return v


def while_break(x, y):  # while True with break
    s = x
    k = 0
    while True:
        s = s * y + 0.3
        k += 1
        if k >= 4 or s > 3.0:
            break
    return s


# --- arrays ----------------------------------------------------------------------------------

def array_reads(a, x):  # 1-D reads only: dot with powers of x
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * x ** i
    return s


def array_self_dot(a, n):  # every element read twice; run-time length
    s = 0.0
    for i in range(n):
        s += a[i] * a[i]
    return math.sqrt(s + 1.0)


def array_writes(a, x):  # writes overwrite elements: their seeds are consumed
    a[0] = x * x
    a[2] = math.sin(x) * a[1]
    return a[3] * x


def array_plus_equals(a, x):  # += updates of elements
    for i in range(a.shape[0]):
        a[i] += x * float(i)
    a[1] += a[0] * a[2]
    return a[1]


def array_read_after_write(a, x):  # reads of elements written earlier
    a[0] = a[0] * x
    a[1] += math.sin(a[0])
    a[0] = a[1] * a[0]
    return a[1] * a[0] + a[0]


def array_prefix_sum(a):  # in-place scan: each element read after its neighbour was written
    for i in range(1, a.shape[0]):
        a[i] = a[i] + a[i - 1] * 0.5
    return a[a.shape[0] - 1]


def array_gather_repeated(a, x):  # gathers with repeated indices
    s = 0.0
    for k in range(7):
        j = (k * 3) % 4
        s += a[j] * math.sin(x * float(k))
    return s + a[1] * a[1] * a[1]


def array_scatter_repeated(a, out, x):  # += into a second array at repeated indices
    for k in range(6):
        out[k % 2] += a[k % 4] * x
    out[2] = out[0] * out[1]
    return x


def array_stencil(a, out):  # out written from neighbouring elements of a
    for i in range(1, a.shape[0] - 1):
        out[i] = a[i - 1] - 2.0 * a[i] + a[i + 1] * a[i]
    return out[1] + out[2]


def array_overwrite_twice(a, x, y):  # the same element written twice, read in between
    a[0] = x * y
    t = a[0] * a[1]
    a[0] = t * x
    return a[0] + t


def array_index_from_int(a, x, n):  # index computed from a run-time int
    a[n % 3] = a[n % 3] * x + a[(n + 1) % 3]
    return a[0] * a[1] * a[2]


def array_2d_reads(m, x):  # 2-D reads: sum m[i, j] x^(i+j)
    s = 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            s += m[i, j] * x ** (i + j)
    return s


def array_2d_writes(m, x):  # 2-D writes scaling rows
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            m[i, j] = m[i, j] * x * float(i + 1)
    return x


def array_2d_plus_equals(m, v, x):  # 2-D += with a 1-D array: rank-1 update, then reads
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            m[i, j] += v[i] * v[j] * x
    return m[0, 1] * m[1, 0]


def array_loop_carried(a, x, n):  # array element carried through a run-time loop
    for k in range(n):
        a[0] = math.sin(a[0] * x) + a[1]
        a[1] = a[1] * 0.5 + a[0]
    return a[0] + a[1]


def array_in_branch(a, x):  # writes under a branch
    if a[0] > x:
        a[1] = a[0] * x
    else:
        a[2] = a[1] - x
    return a[1] * a[2]


# --- nested plain-function calls --------------------------------------------------------------

def _sq(u):
    return u * u


def _poly(u, v):
    return _sq(u) * v + math.sin(v)


def _poly_loop(u, n):
    s = u
    for i in range(n):
        s = _poly(s * 0.5, u)
    return s


def _early(u):
    if u > 0.0:
        return math.exp(-u)
    return u * u + 1.0


def _pair(u, v):
    return u * v, u + v


def _read_array(b, u):
    return b[0] * u + b[1] * b[2]


def _write_array(b, u):
    b[1] = b[0] * u
    return b[1] + u


def call_depth_1(x, y):  # one level of calls, callee used twice
    return _sq(x) + _sq(x * y)


def call_depth_2(x, y):  # two levels
    return _poly(x, y) * _poly(y, x)


def call_depth_3(x, n):  # three levels, the deepest inside a run-time loop
    return _poly_loop(x, n) + x


def call_with_early_return(x, y):  # callee with an early return
    return _early(x) * y + _early(y - x)


def call_tuple_result(x, y):  # callee returning a tuple
    p, s = _pair(x, y)
    q, t = _pair(p, s)
    return q + t * x


def call_in_loop(x, n):  # callees inside a loop with loop-carried state
    s = x
    for i in range(n):
        s = _early(s) + _sq(s) * 0.1
    return s


def call_array_read(a, x):  # a callee reading a Duplicated array
    return _read_array(a, x) * x


def call_array_write(a, x):  # a callee writing a Duplicated array
    r = _write_array(a, x)
    return r * a[2]


# ============================================================================================
# The corpus table.
# ============================================================================================

@dataclass(frozen=True)
class F:
    """Active float scalar (Duplicated with a tangent in forward mode)."""
    lo: float = -1.0
    hi: float = 1.0


@dataclass(frozen=True)
class C:
    """Const float scalar."""
    lo: float = -1.0
    hi: float = 1.0


@dataclass(frozen=True)
class I:  # noqa: E742
    """int scalar, inclusive range, drawn per thread; bare or Const in the call."""
    lo: int = 0
    hi: int = 6
    const: bool = False


@dataclass(frozen=True)
class A:
    """Duplicated float array of the given (per-thread) shape."""
    shape: tuple = (4,)
    lo: float = -1.0
    hi: float = 1.0


@dataclass
class Entry:
    f: object
    args: tuple
    # xfail[(target, direction)] = reason; target "cpu"/"cuda"/"*", direction "reverse"/"forward"/"*"
    xfail: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.f.__name__

    def xfail_reason(self, target: str, direction: str) -> str | None:
        for (t, d), reason in self.xfail.items():
            if t in (target, "*") and d in (direction, "*"):
                return reason
        return None


def E(f, *args, xfail=None):
    return Entry(f, args, dict(xfail or {}))




CORPUS = [
    # scalars
    E(trig, F(), F()),
    E(inverse_trig, F(-0.8, 0.8), F(-0.8, 0.8)),
    E(atan2_quadrants, F(0.2, 1.5), F(-1.5, 1.5)),
    E(hyperbolic, F(), F()),
    E(inverse_hyperbolic, F(), F()),
    E(exp_family, F(), F()),
    E(log_family, F(0.3, 2.0), F(0.3, 2.0)),
    E(expm1_log1p_small, F(-2.0, 2.0)),
    E(error_functions, F(-1.5, 1.5), F(-1.5, 1.5)),
    E(hypot_sqrt, F(-2.0, 2.0), F(0.3, 2.0)),
    E(math_pow, F(0.3, 2.0), F(-1.5, 1.5)),
    E(fabs_copysign, F(-2.0, 2.0), F(-2.0, 2.0)),
    E(rounding_zero_derivative, F(-2.0, 2.0), F(-2.0, 2.0)),
    E(degrees_radians, F()),
    E(min_max, F(-2.0, 2.0), F(-2.0, 2.0)),
    E(builtin_abs, F(-2.0, 2.0), F(-2.0, 2.0)),
    E(integer_powers, F(0.5, 2.0)),
    E(runtime_integer_power, F(0.5, 1.5), I(0, 5)),
    E(float_powers, F(0.3, 2.0), F(0.3, 2.0)),
    E(int_to_float, F(), I(0, 9)),
    E(division_mod, F(-2.0, 2.0), F(0.5, 2.0)),
    E(ternaries, F(-1.0, 1.5), F(-1.0, 1.5)),
    E(integers_inactive, F(), I(0, 7), I(1, 5, const=True)),
    E(const_floats, F(), C(-1.0, 1.0)),
    E(tuples_and_reassignment, F(), F()),
    E(compound, F(), F(), F(0.2, 2.0)),
    E(bool_logic, F(-1.5, 1.5), F(-1.5, 1.5)),
    # control flow
    E(if_elif_else, F(-1.5, 1.5), F(-1.5, 1.5)),
    E(early_return_first, F(-1.5, 1.5), F()),
    E(early_return_middle, F(-1.5, 1.5), F(-1.5, 1.5)),
    E(if_without_else, F(-1.5, 1.5), F(-1.5, 1.5)),
    E(constant_range, F()),
    E(constant_range_step, F()),
    E(runtime_range, F(), I(0, 8)),
    E(runtime_range_step, F(), I(-3, 2), I(0, 9)),
    E(runtime_negative_step, F(0.5, 1.5), I(0, 9)),
    E(nested_loops, F(), I(0, 6)),
    E(nested_constant_runtime, F(), F(), I(0, 4, const=True)),
    E(while_data_dependent, F(0.3, 2.0)),
    E(while_counter, F(), I(0, 7)),
    E(loop_break, F(0.2, 1.5), I(0, 10)),
    E(loop_continue, F(), I(0, 10)),
    E(break_and_continue, F(0.3, 1.6), I(0, 12)),
    E(return_in_loop, F(0.2, 1.4), I(0, 6)),
    E(return_in_nested_loop, F(0.3, 1.3), I(0, 5)),
    E(break_inner_loop, F(0.3, 1.5), I(0, 5)),
    E(loop_two_carried, F(), F(), I(0, 8)),
    E(branch_in_loop, F(0.3, 1.8), I(0, 7)),
    E(loop_var_after_loop, F()),
    E(while_array_index, A((4,)), F(), I(1, 5)),
    E(while_break, F(0.1, 1.0), F(0.5, 1.5)),
    # arrays
    E(array_reads, A((5,)), F()),
    E(array_self_dot, A((6,)), I(0, 6)),
    E(array_writes, A((4,)), F()),
    E(array_plus_equals, A((4,)), F()),
    E(array_read_after_write, A((3,)), F()),
    E(array_prefix_sum, A((5,))),
    E(array_gather_repeated, A((4,)), F()),
    E(array_scatter_repeated, A((4,)), A((3,)), F()),
    E(array_stencil, A((5,)), A((5,))),
    E(array_overwrite_twice, A((2,)), F(), F()),
    E(array_index_from_int, A((3,)), F(), I(0, 8)),
    E(array_2d_reads, A((2, 3)), F()),
    E(array_2d_writes, A((3, 2)), F()),
    E(array_2d_plus_equals, A((2, 2)), A((2,)), F()),
    E(array_loop_carried, A((2,)), F(), I(0, 6)),
    E(array_in_branch, A((3,)), F()),
    # nested calls
    E(call_depth_1, F(), F()),
    E(call_depth_2, F(), F()),
    E(call_depth_3, F(-0.8, 0.8), I(0, 4)),
    E(call_with_early_return, F(), F()),
    E(call_tuple_result, F(), F()),
    E(call_in_loop, F(), I(0, 5)),
    E(call_array_read, A((3,)), F()),
    E(call_array_write, A((3,)), F()),
]

BY_NAME = {e.name: e for e in CORPUS}
assert len(BY_NAME) == len(CORPUS)


# ============================================================================================
# Kernels: one per entry, direction and mode, generated from a template so that the autodiff
# call is written literally (as the interpreter requires) for every arity.
# ============================================================================================

REVERSE_MODES = (Reverse, ReverseWithPrimal)
FORWARD_MODES = (Forward, ForwardWithPrimal)


def mode_for(entry: Entry, direction: str):
    """Alternate the with/without-primal variant over the corpus so that all four modes are
    exercised while each entry compiles one kernel per direction."""
    k = CORPUS.index(entry) if entry in CORPUS else 0
    modes = REVERSE_MODES if direction == "reverse" else FORWARD_MODES
    return modes[k % 2] if direction == "reverse" else modes[(k + 1) % 2]


def register_source(filename: str, source: str) -> None:
    """Make `inspect.getsource` find generated code (the interpreter reads kernels' source)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def exec_source(source: str, filename: str, namespace: dict) -> dict:
    register_source(filename, source)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated test code
    return namespace


_serial = itertools.count()


def kernel_source(entry: Entry, mode) -> tuple[str, str]:
    """(kernel name, source). Parameters: per argument p<k> (and s<k>/t<k> shadows), then
    g<k> outputs for the reverse derivatives of F arguments / `df` for forward, then `primal`."""
    params, call, outs, body = [], [], [], []
    for k, kind in enumerate(entry.args):
        p = f"p{k}"
        params.append(p)
        if isinstance(kind, F):
            if mode.reverse:
                call.append(f"Active({p}[i])")
                params.append(f"g{k}")
                outs.append(f"r{k}")
                body.append(f"g{k}[i] = r{k}")
            else:
                params.append(f"t{k}")
                call.append(f"Duplicated({p}[i], t{k}[i])")
        elif isinstance(kind, C):
            call.append(f"Const({p}[i])")
        elif isinstance(kind, I):
            call.append(f"Const({p}[i])" if kind.const else f"{p}[i]")
        elif isinstance(kind, A):
            params.append(f"s{k}")
            call.append(f"Duplicated({p}[i], s{k}[i])")
        if not (mode.reverse and isinstance(kind, F)):
            outs.append("_")
    params += ["df", "primal"]
    name = f"{'rev' if mode.reverse else 'fwd'}_{entry.name}"
    fn = entry.f.__name__
    result = (f"({', '.join(outs)},)" if mode.reverse else "df_i")
    target = f"{result}, primal_i" if mode.with_primal else f"{result},"
    lines = [
        f"def {name}({', '.join(params)}):",
        "    i = gpuad.thread_index()",
        "    if i < primal.shape[0]:",
        f"        {target} = autodiff({mode.name}, {fn}, {', '.join(call)})",
        *[f"        {line}" for line in body],
    ]
    if not mode.reverse:
        lines.append("        df[i] = df_i")
    if mode.with_primal:
        lines.append("        primal[i] = primal_i")
    return name, "\n".join(lines) + "\n"


def make_kernel(entry: Entry, mode, target: str, **options):
    """The entry's kernel for `target`: "cpu" or "cuda" (gpuad kernels), or "python": the same
    kernel source run thread by thread in plain Python, its autodiff call answered by the
    engine's generated derivative (`gpuad.ad.differentiate(...).function`, no numba, no
    interpreter) - the engine's numbers alone, whatever the compiler spine does."""
    name, source = kernel_source(entry, mode)
    namespace = {"gpuad": gpuad, "autodiff": autodiff, mode.name: mode, "Active": Active,
                 "Const": Const, "Duplicated": Duplicated, entry.f.__name__: entry.f}
    filename = f"<corpus-kernel {name} {next(_serial)}>"
    if target == "python":
        return PythonKernel(source, filename, namespace, name)
    exec_source(source, filename, namespace)
    return gpuad.kernel(namespace[name], target=target, **options)


class PythonKernel:
    """A corpus kernel run in plain Python (see `make_kernel`)."""

    def __init__(self, source, filename, namespace, name):
        import types

        self.thread = 0
        self.derivatives = {}
        namespace = dict(namespace, autodiff=self.autodiff,
                         gpuad=types.SimpleNamespace(thread_index=lambda: self.thread))
        self.pyfunc = exec_source(source, filename, namespace)[name]

    def autodiff(self, mode, f, *args):
        import numba

        from gpuad.ad import differentiate
        from gpuad.api import Activity

        args = [a if isinstance(a, Activity) else Const(a) for a in args]  # bare ints are Const
        activities = tuple(type(a) for a in args)
        flat = [v for a in args for v in a.values]
        types_ = tuple(numba.typeof(a.values[0]) for a in args)
        key = (mode, activities, types_)
        if key not in self.derivatives:
            self.derivatives[key] = differentiate(f, mode, activities, types_).function
        status = np.zeros(4, np.int64)
        result = self.derivatives[key](*flat, status)
        assert status[0] == 0, f"the derivative reported status {list(status)}"
        return result

    def launch(self, n, *arrays):
        for self.thread in range(n):
            self.pyfunc(*arrays)


# ============================================================================================
# Points, finite differences, checks.
# ============================================================================================

def seed_of(entry: Entry, salt: str) -> int:
    return zlib.crc32(f"{entry.name}/{salt}".encode())


def draw_points(entry: Entry, n: int = POINTS):
    """Per-argument arrays with one row per thread."""
    rng = np.random.default_rng(seed_of(entry, "points"))
    cols = []
    for kind in entry.args:
        if isinstance(kind, (F, C)):
            cols.append(rng.uniform(kind.lo, kind.hi, n))
        elif isinstance(kind, I):
            cols.append(rng.integers(kind.lo, kind.hi + 1, n).astype(np.int64))
        else:
            cols.append(rng.uniform(kind.lo, kind.hi, (n, *kind.shape)))
    return cols


def point_args(entry: Entry, cols, t: int) -> list:
    """The plain-Python arguments of thread t (fresh copies of arrays)."""
    out = []
    for kind, col in zip(entry.args, cols):
        if isinstance(kind, I):
            out.append(int(col[t]))
        elif isinstance(kind, A):
            out.append(np.array(col[t], dtype=np.float64))
        else:
            out.append(float(col[t]))
    return out


def active_vector(entry: Entry, args) -> np.ndarray:
    """Every differentiable input as one vector: F scalars, then array elements in order."""
    parts = []
    for kind, a in zip(entry.args, args):
        if isinstance(kind, F):
            parts.append(np.array([a]))
        elif isinstance(kind, A):
            parts.append(np.ravel(a))
    return np.concatenate(parts) if parts else np.zeros(0)


def with_active(entry: Entry, args, vec) -> list:
    out, pos = [], 0
    for kind, a in zip(entry.args, args):
        if isinstance(kind, F):
            out.append(float(vec[pos]))
            pos += 1
        elif isinstance(kind, A):
            size = int(np.prod(kind.shape))
            out.append(np.array(vec[pos:pos + size], dtype=np.float64).reshape(kind.shape))
            pos += size
        else:
            out.append(a)
    return out


def run_primal(entry: Entry, args) -> tuple[float, list]:
    """f's value and the arrays after the call (f runs on copies)."""
    args = [np.array(a) if isinstance(a, np.ndarray) else a for a in args]
    value = float(entry.f(*args))
    return value, [a for kind, a in zip(entry.args, args) if isinstance(kind, A)]


def richardson(g, h):
    return (8.0 * (g(h) - g(-h)) - (g(2 * h) - g(-2 * h))) / (12.0 * h)


def trusted_derivative(g, h):
    """dg/ds at 0 (g: float -> vector) with steps h and h/2; (estimate, usable?)."""
    d1, d2 = richardson(g, h), richardson(g, h / 2)
    usable = bool(np.all(np.abs(d1 - d2) <= 1e-8 * (1.0 + np.abs(d2))))
    return d2, usable


def step_for(values) -> float:
    return 1e-3 * max(1.0, float(np.max(np.abs(values))) if np.size(values) else 1.0)


def reverse_expectation(entry: Entry, args, seeds):
    """(dL/d inputs as one vector, usable?) for L = f + sum <seed_k, a_k after f>."""
    x0 = active_vector(entry, args)

    def loss(vec):
        value, arrays = run_primal(entry, with_active(entry, args, vec))
        return value + sum(float(np.dot(s.ravel(), a.ravel())) for s, a in zip(seeds, arrays))

    grad, usable = np.zeros_like(x0), True
    for k in range(x0.size):
        e = np.zeros_like(x0)
        e[k] = 1.0
        h = 1e-3 * max(1.0, abs(x0[k]))
        d, ok = trusted_derivative(lambda s, e=e: np.array([loss(x0 + s * e)]), h)
        grad[k], usable = d[0], usable and ok
    return grad, usable


def forward_expectation(entry: Entry, args, direction):
    """(d/ds [f, arrays after f](x + s v), usable?)."""
    x0 = active_vector(entry, args)

    def outputs(s):
        value, arrays = run_primal(entry, with_active(entry, args, x0 + s * direction))
        return np.concatenate([[value], *[a.ravel() for a in arrays]])

    h = step_for(x0) / max(1.0, float(np.max(np.abs(direction))) if direction.size else 1.0)
    return trusted_derivative(outputs, h)


@dataclass
class Launch:
    """The arrays of one corpus kernel launch and where each argument's results land."""
    cols: list  # per-argument inputs, one row per thread (never passed to the kernel)
    arrays: list  # what the kernel is launched with, in parameter order
    grads: dict  # reverse: F argument k -> its derivative array
    shadows_in: dict  # A argument k -> its shadow (reverse seeds / forward tangents) before launch
    arrays_after: dict  # A argument k -> the launched primal array
    shadows_after: dict  # A argument k -> the launched shadow array
    tangents: dict  # forward: F and A argument k -> its tangents
    df: np.ndarray
    primal: np.ndarray


def prepare_launch(entry: Entry, mode, n: int = POINTS) -> Launch:
    cols = draw_points(entry, n)
    rng = np.random.default_rng(seed_of(entry, "shadows" if mode.reverse else "tangents"))
    arrays, grads, shadows_in, arrays_after, shadows_after, tangents = [], {}, {}, {}, {}, {}
    for k, (kind, col) in enumerate(zip(entry.args, cols)):
        arrays.append(col.copy())
        if isinstance(kind, F) and mode.reverse:
            grads[k] = np.full(n, np.nan)
            arrays.append(grads[k])
        elif isinstance(kind, (F, A)):
            shadow = rng.uniform(-1.0, 1.0, col.shape)
            arrays.append(shadow.copy())
            if not mode.reverse:
                tangents[k] = shadow
        if isinstance(kind, A):
            shadows_in[k] = shadow
            arrays_after[k], shadows_after[k] = arrays[-2], arrays[-1]
    df, primal = np.full(n, np.nan), np.full(n, np.nan)
    arrays += [df, primal]
    return Launch(cols, arrays, grads, shadows_in, arrays_after, shadows_after, tangents, df, primal)


def check_primal(entry: Entry, mode, run: Launch, t: int, args) -> None:
    """The primal value (WithPrimal modes) and the arrays' side effects of thread t."""
    value, arrays = run_primal(entry, args)
    for (k, after), expected in zip(run.arrays_after.items(), arrays):
        np.testing.assert_allclose(after[t], expected, rtol=1e-13, atol=1e-15,
                                   err_msg=f"{entry.name} {mode}: array argument {k} after the call, "
                                           f"thread {t}")
    if mode.with_primal:
        np.testing.assert_allclose(run.primal[t], value, rtol=1e-13, atol=1e-15,
                                   err_msg=f"{entry.name} {mode}: primal, thread {t}")
    else:
        assert np.isnan(run.primal[t]), f"{entry.name} {mode}: the kernel wrote a primal"


def check_reverse(entry: Entry, target: str, mode=None, n: int = POINTS) -> int:
    """Launch the reverse kernel and compare with finite differences; returns #points used."""
    mode = mode or mode_for(entry, "reverse")
    run = prepare_launch(entry, mode, n)
    make_kernel(entry, mode, target).launch(n, *run.arrays)
    used = 0
    for t in range(n):
        args = point_args(entry, run.cols, t)
        check_primal(entry, mode, run, t, args)
        expected, usable = reverse_expectation(entry, args, [s[t] for s in run.shadows_in.values()])
        if not usable:
            continue
        used += 1
        got = []
        for k, kind in enumerate(entry.args):
            if isinstance(kind, F):
                got.append(np.array([run.grads[k][t]]))
            elif isinstance(kind, A):
                got.append(np.ravel(run.shadows_after[k][t]))
        got = np.concatenate(got) if got else np.zeros(0)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{entry.name} {mode}: [derivatives of F args, shadows of "
                                           f"A args] at thread {t}, args {args}")
    assert used >= n // 2, f"{entry.name}: only {used} of {n} points away from kinks"
    return used


def check_forward(entry: Entry, target: str, mode=None, n: int = POINTS) -> int:
    """Launch the forward kernel and compare with directional finite differences."""
    mode = mode or mode_for(entry, "forward")
    run = prepare_launch(entry, mode, n)
    make_kernel(entry, mode, target).launch(n, *run.arrays)
    used = 0
    for t in range(n):
        args = point_args(entry, run.cols, t)
        check_primal(entry, mode, run, t, args)
        direction = np.concatenate([np.ravel(v[t]) for v in run.tangents.values()])
        expected, usable = forward_expectation(entry, args, direction)
        if not usable:
            continue
        used += 1
        got = np.concatenate([[run.df[t]], *[np.ravel(s[t]) for s in run.shadows_after.values()]])
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{entry.name} {mode}: [df, array tangents] at thread {t}, "
                                           f"args {args}")
    assert used >= n // 2, f"{entry.name}: only {used} of {n} points away from kinks"
    return used


def corpus_params(direction: str, target: str):
    """pytest parameters for one direction on one target, with the entries' xfail marks."""
    import pytest

    params = []
    for entry in CORPUS:
        reason = entry.xfail_reason(target, direction)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(entry, id=entry.name, marks=marks))
    return params


# ============================================================================================
# Shared kernels of the special tests (tape overflow, atomics, Hessian-vector products).
# ============================================================================================

def long_loop(x, n):  # the loop whose tape overflows
    s = x
    for i in range(n):
        s = math.sin(s) * x + s * 0.5
    return s


LONG_LOOP_LINE = long_loop.__code__.co_firstlineno + 2

# The kernel lives in its own (generated) file, so that the error must name the loop's file and
# line, not the kernel's.
OVERFLOW_KERNEL = """\
def overflow_kernel(xs, ns, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _), = autodiff(Reverse, long_loop, Active(xs[i]), ns[i])
        out[i] = dx
"""


def check_tape_overflow(target: str) -> None:
    """A run-time loop of 20 iterations (one thread of 64) past tape_capacity=8 raises TapeOverflow
    naming the loop and the capacity, and leaves every array byte-identical; with fewer
    iterations everywhere the same kernel runs and is right."""
    import re

    import pytest

    from gpuad.errors import TapeOverflow

    namespace = exec_source(OVERFLOW_KERNEL, "<corpus overflow kernel>",
                            {"gpuad": gpuad, "autodiff": autodiff, "Reverse": Reverse,
                             "Active": Active, "long_loop": long_loop})
    kernel = gpuad.kernel(namespace["overflow_kernel"], target=target, tape_capacity=8)
    n = 64
    xs = np.linspace(0.1, 0.9, n)
    ns = np.full(n, 3, dtype=np.int64)
    ns[37] = 20
    out = np.arange(n, dtype=np.float64) * -1.5  # a recognisable pattern
    before = [a.tobytes() for a in (xs, ns, out)]
    with pytest.raises(TapeOverflow) as info:
        kernel.launch(n, xs, ns, out)
    assert [a.tobytes() for a in (xs, ns, out)] == before
    location = info.value.location
    assert location is not None and location.line == LONG_LOOP_LINE
    assert location.filename == long_loop.__code__.co_filename
    assert re.search(r"\b8\b", info.value.message), info.value.message  # the configured capacity
    assert "tape_capacity=20)" in info.value.hint, info.value.hint  # what this loop needs
    ns[37] = 8  # at capacity: no overflow
    kernel.launch(n, xs, ns, out)
    h = 1e-4
    expected = [(8 * (long_loop(x + h, k) - long_loop(x - h, k))
                 - (long_loop(x + 2 * h, k) - long_loop(x - 2 * h, k))) / (12 * h)
                for x, k in zip(xs, ns)]
    np.testing.assert_allclose(out, expected, rtol=1e-7, atol=1e-9)


def shared_element(a, w):  # every thread reads a[0] and a[1] of the same array
    return w * a[0] + a[1] * a[1]


def atomic_kernel_body(a, da, ws):
    i = gpuad.thread_index()
    if i < ws.shape[0]:
        (_, _), = autodiff(Reverse, shared_element, Duplicated(a, da), Const(ws[i]))


def check_atomic_accumulation(target: str, n: int = 4096) -> None:
    """n threads accumulate w_i into da[0] and 2 a[1] into da[1] of one shared shadow; the
    values are chosen so that every partial sum is exact in float64, so the result must be
    exactly the sum whatever the order."""
    a = np.array([0.3, 0.75, -2.0])
    da = np.array([0.0, 1.0, 5.0])
    ws = np.arange(n, dtype=np.float64) * 0.25
    gpuad.kernel(atomic_kernel_body, target=target).launch(n, a, da, ws)
    expected = np.array([0.25 * (n - 1) * n / 2, 1.0 + n * 1.5, 5.0])
    np.testing.assert_array_equal(da, expected)
    np.testing.assert_array_equal(a, [0.3, 0.75, -2.0])


def hvp_f(x, y):  # smooth function of two variables
    return math.sin(x * y) + x * x * x * y + math.exp(0.3 * y) * x


def hvp_grad_x(x, y):  # df/dx through reverse mode
    (dx, dy), = autodiff(Reverse, hvp_f, Active(x), Active(y))
    return dx


def hvp_grad_y(x, y):  # df/dy through reverse mode
    (dx, dy), = autodiff(Reverse, hvp_f, Active(x), Active(y))
    return dy


def hvp_kernel_body(xs, ys, vx, vy, hx, hy):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (a,) = autodiff(Forward, hvp_grad_x, Duplicated(xs[i], vx[i]), Duplicated(ys[i], vy[i]))
        (b,) = autodiff(Forward, hvp_grad_y, Duplicated(xs[i], vx[i]), Duplicated(ys[i], vy[i]))
        hx[i] = a
        hy[i] = b


def hvp_expected(x, y, vx, vy, h=1e-4):
    """Finite differences of the (reverse-mode, host) gradient along v: H v."""
    def grad(s):
        (gx, gy), = autodiff(Reverse, hvp_f, Active(x + s * vx), Active(y + s * vy))
        return np.array([gx, gy])
    return richardson(grad, h)


def check_hvp_kernel(target: str, n: int = 32) -> None:
    rng = np.random.default_rng(11)
    xs, ys, vx, vy = rng.uniform(-1.0, 1.0, (4, n))
    hx, hy = np.full(n, np.nan), np.full(n, np.nan)
    gpuad.kernel(hvp_kernel_body, target=target).launch(n, xs, ys, vx, vy, hx, hy)
    expected = np.array([hvp_expected(*p) for p in zip(xs, ys, vx, vy)])
    np.testing.assert_allclose(np.stack([hx, hy], axis=1), expected, rtol=1e-7, atol=1e-9)


# --- Hessian-vector products over the whole corpus ---------------------------------------------
# For every entry without arrays: h(p, v) = <grad f(p), v> through autodiff(Reverse, f, ...), then
# autodiff(Forward, h, ...) along a direction t gives v^T H t. Expected: finite differences of the
# engine's own reverse gradient (itself checked against finite differences above) along t.

# Tapes, loops of every kind, split callees: the entries the cpu kernels of CI run (all run on cuda).
HVP_IN_KERNELS = ["runtime_range", "while_data_dependent", "loop_break", "branch_in_loop",
                  "return_in_nested_loop", "call_in_loop", "call_depth_3", "call_with_early_return"]


def hvp_params(names=None):
    import pytest

    return [pytest.param(e, id=e.name) for e in CORPUS
            if not any(isinstance(k, A) for k in e.args) and (names is None or e.name in names)]


def hvp_sources(entry: Entry) -> tuple[str, str]:
    """(gradient-dot-v function source, kernel source): `gdot_<name>` and `hvp_<name>`."""
    params = [f"p{k}" for k in range(len(entry.args))]
    floats = [k for k, kind in enumerate(entry.args) if isinstance(kind, F)]
    wrapped = [f"Active(p{k})" if isinstance(kind, F) else f"Const(p{k})" if isinstance(kind, C) or
               getattr(kind, "const", False) else f"p{k}" for k, kind in enumerate(entry.args)]
    grads = ", ".join(f"d{k}" for k in range(len(entry.args)))
    gdot = "\n".join([
        f"def gdot_{entry.name}({', '.join(params + [f'v{k}' for k in floats])}):",
        f"    ({grads},), = autodiff(Reverse, {entry.f.__name__}, {', '.join(wrapped)})",
        f"    return {' + '.join(f'd{k} * v{k}' for k in floats)}",
    ]) + "\n"
    kparams, call = [], []
    for k, kind in enumerate(entry.args):
        kparams.append(f"p{k}")
        if isinstance(kind, F):
            kparams.append(f"t{k}")
            call.append(f"Duplicated(p{k}[i], t{k}[i])")
        else:
            call.append(f"Const(p{k}[i])")
    kparams += [f"v{k}" for k in floats] + ["out"]
    call += [f"Const(v{k}[i])" for k in floats]
    kernel = "\n".join([
        f"def hvp_{entry.name}({', '.join(kparams)}):",
        "    i = gpuad.thread_index()",
        "    if i < out.shape[0]:",
        f"        (h,) = autodiff(Forward, gdot_{entry.name}, {', '.join(call)})",
        "        out[i] = h",
    ]) + "\n"
    return gdot, kernel


def check_hvp(entry: Entry, target: str, n: int = POINTS // 2) -> int:
    """HVPs of one entry on `target` ("python": the engine's generated code alone) vs FD."""
    from gpuad.ad import differentiate

    gdot_src, kernel_src = hvp_sources(entry)
    tag = next(_serial)
    ns = {"gpuad": gpuad, "autodiff": autodiff, "Reverse": Reverse, "Forward": Forward, "Active": Active,
          "Const": Const, "Duplicated": Duplicated, entry.f.__name__: entry.f}
    exec_source(gdot_src, f"<corpus-gdot {entry.name} {tag}>", ns)
    cols = draw_points(entry, n)
    rng = np.random.default_rng(seed_of(entry, "hvp"))
    floats = [k for k, kind in enumerate(entry.args) if isinstance(kind, F)]
    t = {k: rng.uniform(-1.0, 1.0, n) for k in floats}
    v = {k: rng.uniform(-1.0, 1.0, n) for k in floats}
    out = np.full(n, np.nan)
    types_ = tuple(numba_type(c[0]) for c in cols)
    if target == "python":
        acts = tuple(Duplicated if k in t else Const for k in range(len(cols))) + (Const,) * len(v)
        fn = differentiate(ns[f"gdot_{entry.name}"], Forward, acts,
                           types_ + (numba_type(1.0),) * len(v)).function
        for i in range(n):
            args = point_args(entry, cols, i)
            flat = [x for k, a in enumerate(args) for x in ((a, t[k][i]) if k in t else (a,))]
            (out[i],) = fn(*flat, *[v[k][i] for k in floats], np.zeros(4, np.int64))
    else:
        exec_source(kernel_src, f"<corpus-hvp {entry.name} {tag}>", ns)
        arrays = []
        for k, col in enumerate(cols):
            arrays += [col, t[k]] if k in t else [col]
        gpuad.kernel(ns[f"hvp_{entry.name}"], target=target).launch(n, *arrays, *v.values(), out)
    grad = differentiate(entry.f, Reverse, tuple(Active if k in t else Const for k in range(len(cols))),
                         types_).function
    used = 0
    for i in range(n):
        args = point_args(entry, cols, i)

        def gdot(s, i=i, args=args):
            moved = [a + s * t[k][i] if k in t else a for k, a in enumerate(args)]
            (ds,) = grad(*moved, np.zeros(4, np.int64))
            return np.array([sum(ds[k] * v[k][i] for k in floats)])

        expected, usable = trusted_derivative(gdot, step_for(active_vector(entry, args)))
        if not usable:
            continue
        used += 1
        np.testing.assert_allclose(out[i], expected[0], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{entry.name}: HVP at point {i}, args {args}")
    assert used >= n // 2, f"{entry.name}: only {used} of {n} points away from kinks"
    return used


def numba_type(value):
    import numba

    return numba.typeof(value.item() if hasattr(value, "item") else value)
