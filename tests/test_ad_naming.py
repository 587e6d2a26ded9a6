"""The naming legend (gpuad/ad/naming.py) covers every name the engine generates."""
from __future__ import annotations

import ast

import pytest
from test_golden import CASES

from gpuad.ad import differentiate, naming
from gpuad.ad.normalize import GENERATED_PREFIXES


def generated_names(source: str, user_names: set) -> set:
    """Names the derivative binds or defines that are not the user's own."""
    tree = ast.parse(source)
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names - user_names - {"status"}


@pytest.mark.parametrize("name", CASES)
def test_every_generated_name_has_a_prefix_in_the_legend(name):
    fn, mode, activities, argtypes = CASES[name]
    user = set()
    for f in (fn, *[v for v in fn.__globals__.values() if callable(v) and hasattr(v, "__code__")]):
        user |= set(f.__code__.co_varnames)
    names = generated_names(differentiate(fn, mode, activities, argtypes).source, user)
    assert names
    unexplained = {n for n in names if not n.startswith(tuple(naming.LEGEND))}
    assert unexplained == set()


def test_the_normaliser_escapes_every_legend_prefix():
    assert GENERATED_PREFIXES is naming.GENERATED_PREFIXES
    assert all(prefix.startswith(GENERATED_PREFIXES) for prefix in naming.LEGEND)
    assert naming.adjoint("x") == "d_x" and naming.tangent("x") == "t_x"
