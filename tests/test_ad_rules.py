"""User rules (`gpuad.rule`), the rules table, and nested inactive autodiff calls."""
from __future__ import annotations

import math

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
