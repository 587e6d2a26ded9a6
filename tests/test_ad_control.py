"""Reverse and forward mode over control flow: branches, loops, early exits, the tape."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba.core import types
from test_ad_helpers import fd, forward_partial, reverse_grad, status

from gpuad.ad import differentiate
from gpuad.ad.primitives import NEEDED_INTS
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Reverse


def branches(x, y):
    if x > y:
        z = x * y
    elif x > 0.5 * y:
        z = math.sin(x) + y
    else:
        z = x - y * y
    return z * x


def early_return(x, y):
    if x > 1.0:
        return x * x
    z = x * y
    if z > 0.2:
        return math.exp(z)
    return z - y


def static_loop(x):
    s = 0.0
    for i in range(5):
        s = s * x + float(i)
    return s


def dynamic_loop(x, n):
    s = x
    for i in range(n):  # noqa: B007
        s = math.sin(s) * x + s
    return s


def stepped_loop(x, n):
    s = 0.0
    for i in range(n, 1, -2):
        s += x ** i / float(i)
    return s


def nested_loops(x, n):
    s = 0.0
    for i in range(n):
        t = x
        for j in range(i):
            t = t * x + 0.1 * float(j)
        s += t
    return s


def while_loop(x):
    s = x
    k = 0
    while s < 10.0:
        s = s * 1.7 + x
        k += 1
    return s * float(k)


def break_continue(x, n):
    s = 0.0
    for i in range(n):
        if i % 3 == 1:
            continue
        s = s * x + math.cos(s)
        if s > 4.0:
            break
    return s


def return_in_loop(x, n):
    s = x
    for i in range(n):  # noqa: B007
        s = s * s + 0.1
        if s > 3.0:
            return s * x
    return -s


def loop_overwrites_branch(x, n):
    y = x
    for i in range(n):  # noqa: B007
        if y > 1.0:
            y = math.sqrt(y) * x
        else:
            y = y * 2.0 + x
    return y


def reuse_loop_var(x):
    s = 0.0
    for i in range(3):
        s += x * float(i)
    i = 7
    for i in range(i, 9):  # noqa: B007, B020
        s = s * x
    return s * float(i)


def loop_callee(a, b):
    r = a
    for k in range(3):  # noqa: B007
        r = r * b + a
    return r


def calls_in_loop(x, n):
    s = x
    for i in range(n):  # noqa: B007
        s = loop_callee(s, x) * 0.1
    return s


CORPUS = [
    (branches, (1.3, 0.7)), (branches, (0.6, 0.9)), (branches, (0.2, 0.9)),
    (early_return, (1.3, 0.5)), (early_return, (0.6, 0.9)), (early_return, (0.3, 0.2)),
    (static_loop, (0.7,)),
    (dynamic_loop, (0.7, 6)), (dynamic_loop, (0.7, 0)),
    (stepped_loop, (0.9, 9)),
    (nested_loops, (0.8, 5)),
    (while_loop, (0.9,)),
    (break_continue, (1.4, 12)), (break_continue, (0.5, 7)),
    (return_in_loop, (1.2, 5)), (return_in_loop, (0.3, 3)),
    (loop_overwrites_branch, (1.6, 7)),
    (reuse_loop_var, (0.9,)),
    (calls_in_loop, (0.9, 4)),
]
IDS = [f"{f.__name__}-{i}" for i, (f, _) in enumerate(CORPUS)]


@pytest.mark.parametrize("f,args", CORPUS, ids=IDS)
def test_reverse_over_control_flow(f, args):
    (derivs,) = reverse_grad(f, args)
    assert derivs[0] == pytest.approx(fd(f, args, 0), rel=1e-7, abs=1e-9)
    _, primal = reverse_grad(f, args, with_primal=True)
    assert primal == pytest.approx(f(*args), rel=1e-15)


@pytest.mark.parametrize("f,args", CORPUS, ids=IDS)
def test_forward_over_control_flow(f, args):
    (df,) = forward_partial(f, args, 0)
    assert df == pytest.approx(fd(f, args, 0), rel=1e-7, abs=1e-9)


JIT = [CORPUS[i] for i in (0, 4, 7, 10, 12, 14, 18)]


@pytest.mark.parametrize("f,args", JIT, ids=[f.__name__ for f, _ in JIT])
def test_control_flow_compiles_with_numba(f, args):
    (derivs,) = reverse_grad(f, args, jit=True)
    assert derivs[0] == pytest.approx(fd(f, args, 0), rel=1e-7, abs=1e-9)
    (df,) = forward_partial(f, args, 0, jit=True)
    assert df == pytest.approx(derivs[0], rel=1e-10)


def test_nothing_recorded_where_nothing_is_overwritten():
    d = differentiate(branches, Reverse, (Active, Active), (types.float64, types.float64))
    assert "tape_alloc" not in d.source and "_tf[" not in d.source


def test_static_loop_tape_is_sized_at_compile_time():
    d = differentiate(static_loop, Reverse, (Active,), (types.float64,))
    assert "report_tape_overflow" not in d.source
    assert "_capf = 5" in d.source  # one overwritten value of s per iteration


@pytest.mark.parametrize("jit", [False, True])
def test_dynamic_loop_overflow_is_reported_not_wrapped(jit):
    d = differentiate(dynamic_loop, Reverse, (Active, Const), (types.float64, types.int64), tape_capacity=4)
    fn = jit_derivative(d) if jit else d.function
    st = status()
    (dx, _), = fn(0.7, 4, st)
    assert st[0] == 0 and dx == pytest.approx(fd(dynamic_loop, (0.7, 4), 0), rel=1e-7)
    st = status()
    (dx, _), = fn(0.7, 9, st)
    line = dynamic_loop.__code__.co_firstlineno + 2
    # flag, line, no checkpointed loop, one float per iteration (s; sin(s) is recomputed): 9 needed
    assert list(st[:4]) == [1, line, 0, 9] and st[NEEDED_INTS] == 0
    assert dx == 0.0


def test_tape_capacity_is_configurable():
    argtypes = (types.float64, types.int64)
    small = differentiate(dynamic_loop, Reverse, (Active, Const), argtypes, tape_capacity=3)
    big = differentiate(dynamic_loop, Reverse, (Active, Const), argtypes, tape_capacity=100)
    assert "_capf = 3" in small.source and "_capf = 100" in big.source
    (dx, _), = big.function(0.3, 90, np.zeros(4, np.int64))
    assert dx == pytest.approx(fd(dynamic_loop, (0.3, 90), 0), rel=1e-6)
