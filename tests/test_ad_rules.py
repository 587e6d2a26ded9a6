"""User rules (`gpuad.rule`), the rules table, and nested inactive autodiff calls."""
from __future__ import annotations

import ast
import math
import re

import numpy as np
import pytest
from numba.core import types
from test_ad_helpers import status

from gpuad.ad import differentiate, rules
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, autodiff


def softplus(x):
    return math.log(1.0 + math.exp(x))


def uses_softplus(x, y):
    return softplus(x * y) * y


@pytest.fixture
def softplus_rule():
    r = rules.rule(softplus)

    @r.reverse
    def softplus_rev(x, d_out):
        return (d_out * 100.0,)  # deliberately not the true derivative: proves the rule wins

    @r.forward
    def softplus_fwd(x, t_x):
        return t_x * 100.0

    yield r
    rules.clear_rule(softplus)


@pytest.mark.parametrize("jit", [False, True])
def test_user_rule_wins_over_the_body(softplus_rule, jit):
    d = differentiate(uses_softplus, Reverse, (Active, Active), (types.float64, types.float64))
    fn = jit_derivative(d) if jit else d.function
    (dx, dy), = fn(0.3, 2.0, status())
    assert dx == pytest.approx(100.0 * 2.0 * 2.0)
    assert dy == pytest.approx(100.0 * 0.3 * 2.0 + softplus(0.6))
    d = differentiate(uses_softplus, Forward, (Duplicated, Const), (types.float64, types.float64))
    fn = jit_derivative(d) if jit else d.function
    (t,) = fn(0.3, 1.0, 2.0, status())
    assert t == pytest.approx(100.0 * 2.0 * 2.0)


def test_without_rule_body_is_differentiated():
    d = differentiate(uses_softplus, Reverse, (Active, Const), (types.float64, types.float64))
    (dx, _), = d.function(0.3, 2.0, status())
    assert dx == pytest.approx(2.0 * 2.0 / (1.0 + math.exp(-0.6)))


def test_every_table_rule_is_valid_python_over_its_parameters():
    import ast
    for fn, d in rules.DERIVATIVES.items():
        assert len(d.params) == len(d.partials), fn
        for p in d.partials:
            if p is not None:
                names = {n.id for n in ast.walk(ast.parse(p, mode="eval")) if isinstance(n, ast.Name)}
                assert names <= set(d.params) | {"out"} | set(rules.TEMPLATE_GLOBALS), (fn, names)


def inner(x, y):
    return x * x * y


def with_inactive_autodiff(x, c):
    (dx, dy), = autodiff(Reverse, inner, Active(c), Const(2.0))
    return x * dx


def test_inactive_nested_autodiff_is_copied_verbatim():
    d = differentiate(with_inactive_autodiff, Reverse, (Active, Const), (types.float64, types.float64))
    assert "autodiff(Reverse, inner, Active(c), Const(2.0))" in d.source
    assert d.namespace["autodiff"] is autodiff and d.namespace["inner"] is inner
    (dx, _), = d.function(0.5, 3.0, status())
    assert dx == pytest.approx(2 * 3.0 * 2.0)
    np.testing.assert_allclose(dx, 12.0)


# -- a primitive reading one value twice: one term per shadow and partial (rules.grouped_terms) ---

def squares(x, y):
    return x * x * y


def squares_float32(x, y):
    dx, dy = x - y, y - x
    return math.exp(-(dx * dx + dy * dy))


def test_the_adjoint_of_a_square_is_one_guarded_product_of_the_doubled_adjoint():
    d = differentiate(squares, Reverse, (Active, Active), (types.float64,) * 2)
    (line,) = [s.strip() for s in d.source.splitlines() if re.match(r"\s*d_x [+]?= guarded", s)]
    assert line.count("guarded") == 1 and re.search(r"(\w+) \+ \1, x\)$", line), line
    fn = jit_derivative(d)
    for x, y in [(1.5, -2.0), (3.0, 0.25), (-0.0, 7.0)]:
        (dx, dy), = fn(x, y, status())
        assert dx == 2 * x * y and dy == x * x


def test_the_tangent_of_a_square_is_one_guarded_product_of_the_doubled_tangent():
    d = differentiate(squares, Forward, (Duplicated, Const), (types.float64,) * 2)
    assert d.source.count("guarded_mul((t_x + t_x), x)") == 1 and "guarded_add_mul" not in d.source
    (t,) = jit_derivative(d)(1.5, 2.0, -2.0, status())
    assert t == 2 * 1.5 * 2.0 * -2.0


@pytest.mark.parametrize("jit", [False, True])
def test_a_doubled_zero_adjoint_still_adds_nothing_times_infinity(jit):
    """d(y * x * x)/dx at y == 0 is 0 even at x == inf (no 0 * inf NaN): `d + d` is zero exactly
    where `d` is, so the grouped term keeps the guard."""
    d = differentiate(squares, Reverse, (Active, Active), (types.float64,) * 2)
    fn = jit_derivative(d) if jit else d.function
    for x in (math.inf, -math.inf):
        (dx, _), = fn(x, 0.0, status())
        assert dx == 0.0
    (dx, _), = fn(math.inf, -0.0, status())
    assert dx == 0.0


def test_grouped_squares_in_float32_give_the_float64_gradient_to_rounding():
    d = differentiate(squares_float32, Reverse, (Active, Active), (types.float32,) * 2)
    fn = jit_derivative(d)
    for x, y in [(0.3, -0.2), (1.0, 0.5), (-0.7, 0.1)]:
        (dx, dy), = fn(np.float32(x), np.float32(y), status())
        x64, y64 = float(np.float32(x)), float(np.float32(y))
        e = math.exp(-2 * (x64 - y64) ** 2)
        assert dx == pytest.approx(-4 * (x64 - y64) * e, rel=1e-6)
        assert dy == pytest.approx(4 * (x64 - y64) * e, rel=1e-6)


def test_grouping_keeps_different_shadows_partials_and_number_partials_apart():
    x, y, one = ast.parse("x", mode="eval").body, ast.parse("y", mode="eval").body, ast.Constant(1.0)
    terms = [("d_a", x), ("d_b", x), ("d_a", y), ("d_a", one), ("d_a", one), ("d_a", x)]
    grouped = rules.grouped_terms(terms)
    assert [(s, ast.unparse(p), n) for s, p, n in grouped] == [
        ("d_a", "x", 2), ("d_b", "x", 1), ("d_a", "y", 1), ("d_a", "1.0", 1), ("d_a", "1.0", 1)]
    assert rules.repeated("d", 1) == "d" and rules.repeated("d", 2) == "(d + d)"
