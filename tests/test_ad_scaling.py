"""Compile time grows linearly with the differentiated code (issue: compile scaling).

numba's SSA and liveness passes revisit every block for every variable assigned more than once;
an `if d != 0.0:` around each update gave the derivative of an N-statement chain 2N blocks and
made its compile time grow quadratically (41.9 s at N = 100). The derivative of straight-line
code is now straight-line code, so its numba IR is one block whatever N; that is what this pins
(timings themselves live in benchmarks/latency.py, not in tests).
"""
from __future__ import annotations

import ast
import linecache
import math

import numpy as np
import pytest
from numba.core import types

from gpuad.ad import differentiate
from gpuad.api import Active, Reverse


def chain_source(n: int) -> str:
    """benchmarks/latency.py's chain: N statements, each reading the previous value."""
    lines = ["def chain(x, y):", "    a = x * y"]
    for k in range(n):
        lines.append(f"    a = math.sin(a) * {1 + k % 3}.0 + x * a" if k % 2 else "    a = a * a * 0.5 + y")
    return "\n".join([*lines, "    return a", ""])


def chain(n: int):
    source, filename = chain_source(n), f"<chain {n}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"math": math}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["chain"]


def numba_blocks(fn) -> int:
    """Blocks of the function's numba IR, as numba's passes see them."""
    from numba.core import compiler

    return len(compiler.run_frontend(fn).blocks)


def derivative_statements(n: int) -> int:
    d = differentiate(chain(n), Reverse, (Active, Active), (types.float64, types.float64))
    (fn,) = [f for f in ast.parse(d.source).body if isinstance(f, ast.FunctionDef)]
    assert not [node for node in ast.walk(fn) if isinstance(node, (ast.If, ast.IfExp, ast.For, ast.While))]
    assert numba_blocks(d.function) == 1
    return len(fn.body)


def test_straight_line_derivative_is_straight_line_code_of_linear_length():
    s10, s20, s40 = (derivative_statements(n) for n in (10, 20, 40))
    assert s40 - s20 == 2 * (s20 - s10)


def test_chain_derivative_is_right():
    f = chain(6)
    d = differentiate(f, Reverse, (Active, Active), (types.float64, types.float64))
    x, y, h = 0.3, 0.7, 1e-6
    (dx, dy), = d.function(x, y, np.zeros(8, np.int64))
    assert dx == pytest.approx((f(x + h, y) - f(x - h, y)) / (2 * h), rel=1e-6)
    assert dy == pytest.approx((f(x, y + h) - f(x, y - h)) / (2 * h), rel=1e-6)


KERNEL = '''
def kern(xs, ys, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d, _), = autodiff(Reverse, chain, Active(xs[i]), Active(ys[i]))
        dxs[i] = d
'''


def chain_kernel(n: int, tag: str):
    """benchmarks/latency.py's chain kernel: one reverse `autodiff` of the N-statement chain."""
    import gpuad
    from gpuad import autodiff

    source, filename = chain_source(n) + KERNEL, f"<chain kernel {n} {tag}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"math": math, "gpuad": gpuad, "autodiff": autodiff, "Active": Active, "Reverse": Reverse}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["kern"]


def compile_work(n: int, tag: str) -> int:
    """Python calls made by `kernel.compile` of the N-chain kernel through the cuda pipeline (to
    PTX, no GPU needed): a count of the work every stage does, numba's included, that the load
    of the machine does not change as it changes seconds."""
    import sys

    import gpuad

    kernel, calls = gpuad.kernel(chain_kernel(n, tag), target="cuda"), 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"  # generators resumed included: a rescan per variable counts

    sys.setprofile(count)
    try:
        kernel.compile(np.ones(4), np.ones(4), np.zeros(4))
    finally:
        sys.setprofile(None)
    return calls


def test_compile_work_grows_linearly_with_the_chain():
    """Work(N) = a + b·N has equal steps from 8 to 16 and from 16 to 32 (ratio 2.0); a term in
    N² makes the second step larger (numba-cuda's search for singly assigned variables,
    rescanning the derivative's one block for each of its variables, gave 2.3, and so would
    any stage that walks the code once per name). The count is deterministic up to a few
    hash-ordered calls, so the bound can be tight."""
    compile_work(5, "warm-up")  # numba's one-time work: typing tables, guarded_mul, libdevice
    w8, w16, w32 = (compile_work(n, "scaling") for n in (8, 16, 32))
    assert (w32 - w16) / (w16 - w8) < 2.12, (w8, w16, w32)
