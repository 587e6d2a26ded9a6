"""Generated derivatives explain themselves: `# line N: <user line>` comments where the source line
changes, and no dead lines (pre-inits overwritten before any read, zeroings nothing reads, a copy
of the primal the reverse sweep never disturbs)."""
from __future__ import annotations

import ast
import math

import numpy as np
import pytest
from golden import programs as p
from numba.core import types

from gpuad.ad import differentiate
from gpuad.ad.emit import SOURCE_TEXT_WIDTH, drop_dead_stores, live_inits
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, ReverseWithPrimal

F64, I64, VEC = types.float64, types.int64, types.float64[::1]


def early_exit(x, n):
    s = x
    for _ in range(n):
        s = math.sin(s) + 0.3
        if s > 0.5:
            return math.exp(s)
    return s


def long_line(x):
    return x * 1.0 + x * 2.0 + x * 3.0 + x * 4.0 + x * 5.0 + x * 6.0 + x * 7.0 + x * 8.0


CASES = [
    (p.straight_line, Reverse, (Active, Active), (F64, F64)),
    (p.taped_loop, Reverse, (Active, Const), (F64, I64)),
    (p.checkpointed_loop, ReverseWithPrimal, (Active, Const), (F64, I64)),
    (p.split_callee, Reverse, (Duplicated, Active, Const), (VEC, F64, I64)),
    (p.straight_line, Forward, (Duplicated, Const), (F64, F64)),
    (p.grad_dot, Forward, (Duplicated, Duplicated, Const, Const), (F64,) * 4),
    (early_exit, ReverseWithPrimal, (Active, Const), (F64, I64)),
]
IDS = [f"{fn.__name__}-{mode.name}" for fn, mode, _, _ in CASES]


def labels(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if line.strip().startswith("# line ")]


def test_each_sweep_labels_a_change_of_source_line_once():
    fn = p.straight_line
    t, ret = (f"# line {fn.__code__.co_firstlineno + k}: {text}" for k, text in
              ((1, "t = x * y"), (2, "return math.sin(t) + x / y")))
    source = differentiate(fn, Reverse, (Active, Active), (F64, F64)).source
    forward, reverse = source.split("# reverse sweep")
    assert labels(forward) == [t, ret]
    assert labels(reverse) == [ret, t]


def test_a_label_comes_before_the_code_of_its_line_in_loops_too():
    source = differentiate(p.taped_loop, Reverse, (Active, Const), (F64, I64)).source
    lines = [line.strip() for line in source.splitlines()]
    loop = p.taped_loop.__code__.co_firstlineno + 2
    header = lines.index(f"# line {loop}: for _ in range(n):")
    assert lines[header + 1] == "_n0 = max(n, 0)"  # the trip count, known before the loop
    body = lines.index("for u__ in range(n):", header)
    assert lines[body + 1] == f"# line {loop + 1}: s = math.sin(s) * x + 0.5"
    assert lines.count(f"# line {loop}: for _ in range(n):") == 2  # the forward loop and its reverse


def test_a_long_source_line_is_shortened():
    source = differentiate(long_line, Reverse, (Active,), (F64,)).source
    (label, *_) = labels(source)
    text = label.split(": ", 1)[1]
    assert len(text) == SOURCE_TEXT_WIDTH and text.endswith("...")
    assert text.startswith("return x * 1.0 + x * 2.0")


def is_constant(node: ast.expr) -> bool:
    """`0.0`, `-1.0`, `np.float32(0.0)`, `False`: the values pre-inits and zeroings assign."""
    if isinstance(node, ast.UnaryOp):
        return is_constant(node.operand)
    if isinstance(node, ast.Call):
        return ast.unparse(node.func) == "np.float32" and all(map(is_constant, node.args))
    return isinstance(node, ast.Constant)


def dead_constant_assignments(source: str) -> list[str]:
    """Top-level `name = <constant>` lines whose value no later line reads: the next top-level
    statement naming `name` overwrites it without reading it, or none names it."""
    dead = []
    for fn in ast.parse(source).body:
        body = fn.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name) and is_constant(stmt.value)):
                continue
            name = stmt.targets[0].id
            later = [s for s in body[i + 1:] if any(isinstance(n, ast.Name) and n.id == name
                                                      for n in ast.walk(s))]
            if not later:
                dead.append(ast.unparse(stmt))
                continue
            first = later[0]
            reads = any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
                        for n in ast.walk(first))
            if isinstance(first, ast.Assign) and not reads:
                dead.append(ast.unparse(stmt))
    return dead


@pytest.mark.parametrize("fn,mode,activities,argtypes", CASES, ids=IDS)
def test_no_constant_is_assigned_only_to_be_overwritten_or_dropped(fn, mode, activities, argtypes):
    source = differentiate(fn, mode, activities, argtypes).source
    assert dead_constant_assignments(source) == []


def test_the_primal_is_returned_directly_when_the_reverse_sweep_leaves_it():
    source = differentiate(p.taped_loop, ReverseWithPrimal, (Active, Const), (F64, I64)).source
    assert "_primal =" not in source and "return ((d_x, None), _ret)" in source


def test_the_primal_is_copied_aside_when_the_reverse_sweep_restores_its_variable():
    d = differentiate(early_exit, ReverseWithPrimal, (Active, Const), (F64, I64))
    assert "_primal = _ret" in d.source
    run = jit_derivative(d)
    for x, n in ((0.3, 5), (-2.0, 3), (0.1, 0)):
        (dx, _), primal = run(x, n, np.zeros(8, dtype=np.int64))
        assert primal == early_exit(x, n)
        h = 1e-6
        fd = (early_exit(x + h, n) - early_exit(x - h, n)) / (2 * h)
        assert dx == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_live_inits_keeps_what_a_block_or_a_read_may_need():
    code = ["t_b = t_a", ("if c:", ["t_c = 1.0"]), "t_d += 1.0", "return t_c, t_d, t_e"]
    inits = ["t_a = 0.0", "t_b = 0.0", "t_c = 0.0", "t_d = 0.0", "t_e = 0.0", "t_f = 0.0"]
    assert live_inits(inits, code) == ["t_a = 0.0", "t_c = 0.0", "t_d = 0.0", "t_e = 0.0"]


def test_drop_dead_stores_keeps_reads_calls_and_the_labels_of_kept_code():
    from gpuad.ad.emit import SourceLine

    one, two = SourceLine(1, "a"), SourceLine(2, "b")
    code = [one, "d_s = 0.0", "d_t = f(d_s)", "d_x += d_s", "d_s = 0.0", two, "d_u = 0.0", "d_v = 0.0"]
    kept = [one, "d_s = 0.0", "d_t = f(d_s)", "d_x += d_s", two, "d_v = 0.0"]
    assert drop_dead_stores(code, ["return d_x, d_v"]) == kept
    assert drop_dead_stores([one, "d_s = 0.0"], ["return d_x"]) == []
    assert drop_dead_stores(["d_s = 0.0\nd_x = d_s"], ["return d_x"]) == ["d_s = 0.0\nd_x = d_s"]
    assert live_inits(["d_s = 0.0"], ["d_s = 1.0\nd_x = d_s", "return d_x"]) == ["d_s = 0.0"]


def test_live_inits_decides_each_name_as_its_first_use_does():
    """One walk over the code (linear in its length) gives what asking per name gave."""
    from gpuad.ad.emit import SourceLine, first_use_overwrites

    code = [SourceLine(3, "d_a = d_b"), "# d_c = d_c", "d_a1 = o.d_b", "x.d_c = d_a", "d_b = y",
            ("for k in r:", ["# d_d", "z = 1"]), "d_e = d_e + 1", "d_f, d_g = d_g, 1.0", "d_h -= 2.0"]
    names = ["d_a", "d_b", "d_c", "d_d", "d_e", "d_f", "d_g", "d_h", "d_i"]
    inits = [f"{n} = 0.0" for n in names]
    expected = [f"{n} = 0.0" for n in names if not first_use_overwrites(n, code)]
    assert expected == ["d_a = 0.0", "d_d = 0.0", "d_e = 0.0", "d_g = 0.0", "d_h = 0.0"]
    assert live_inits(inits, code) == expected
