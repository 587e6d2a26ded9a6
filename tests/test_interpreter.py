"""Stage 1: calls resolve through method tables by identity, recursively."""
import math
import math as m
from math import sin

import numpy as np
import pytest

from gpuad import Active, Const, Duplicated, Reverse, api
from gpuad.errors import AutodiffCallError, InterpretError
from gpuad.interpreter import Interpreter
from gpuad.method_table import MethodTable


def loud_sin(x):
    return 100.0 + x


def make_interpreter(table):
    # Pure-Python binding: resolved functions are called as they are.
    return Interpreter(table, bind_function=lambda r: r.pyfunc, bind_site=lambda site: site)


def status():
    return np.zeros(8, dtype=np.int64)


def uses_module_alias(x):
    return m.sin(x)


def uses_from_import(x):
    return sin(x)


def helper(x):
    return math.sin(x) * 2.0


def calls_helper(x):
    return helper(x) + 1.0


def make_closure():
    s = math.sin

    def inner(x):
        return s(x)

    return inner


@pytest.mark.parametrize("fn", [uses_module_alias, uses_from_import, make_closure()])
def test_overlay_found_by_identity_not_spelling(fn):
    table = MethodTable("test")
    table.add(math.sin, loud_sin)
    interp = make_interpreter(table)
    resolved = interp.resolve(fn)
    assert resolved.pyfunc(0.5, status()) == 100.5
    assert len(interp.overlays) == 1
    record = interp.overlays[0]
    assert record.original == "math.sin" and record.replacement.endswith("loud_sin")
    assert record.call_site.endswith(f":{fn.__code__.co_firstlineno + 1}")


def test_overlay_applies_inside_called_plain_functions():
    table = MethodTable("test")
    table.add(math.sin, loud_sin)
    interp = make_interpreter(table)
    resolved = interp.resolve(calls_helper)
    assert resolved.pyfunc(0.5, status()) == (100.5 * 2.0) + 1.0
    assert [o.function for o in interp.overlays] == ["helper"]


def test_local_variable_shadowing_a_global_is_not_resolved():
    table = MethodTable("test")
    table.add(math.sin, loud_sin)

    def shadow(x):
        sin = 3.0  # noqa: F841 - a local named like the overlaid global
        return x * 2.0

    interp = make_interpreter(table)
    assert interp.resolve(shadow).pyfunc(1.0, status()) == 2.0
    assert interp.overlays == []


def f2(x, a):
    return x * a[0]


def kernel_with_autodiff(xs, das, out):
    i = 0
    (dx, _), = api.autodiff(Reverse, f2, Active(xs[i]), Duplicated(xs, das))
    out[i] = dx


def test_autodiff_becomes_a_deferred_site():
    interp = make_interpreter(MethodTable("test"))
    interp.resolve(kernel_with_autodiff)
    (site,) = interp.sites
    assert site.function is f2 and site.mode is Reverse
    assert site.activities == (Active, Duplicated)
    assert site.location.line == kernel_with_autodiff.__code__.co_firstlineno + 2
    assert [(o.original, o.replacement) for o in interp.overlays] == [
        ("gpuad.api.autodiff", "gpuad.api.autodiff_deferred")
    ]


def unknown_wrapper(x):
    return api.autodiff(Reverse, f2, list(x), Const(x))


def wrong_arity(x):
    return api.autodiff(Reverse, f2, Active(x))


def not_a_function(x):
    return api.autodiff(Reverse, 3.0, Active(x), Const(x))


def bad_mode(x):
    return api.autodiff("reverse", f2, Active(x), Const(x))


def bad_wrapper_arity(x):
    return api.autodiff(Reverse, f2, Active(x, x), Const(x))


@pytest.mark.parametrize("fn, words", [
    (unknown_wrapper, "unknown activity wrapper `list`"),
    (wrong_arity, "takes 2 argument(s) but autodiff passes 1"),
    (not_a_function, "is not a plain Python function"),
    (bad_mode, "must be a mode"),
    (bad_wrapper_arity, "Active takes 1 argument(s), got 2"),
])
def test_bad_autodiff_calls_name_the_line_and_the_fix(fn, words):
    with pytest.raises(AutodiffCallError) as info:
        make_interpreter(MethodTable("test")).resolve(fn)
    assert words in str(info.value)
    assert info.value.location.line == fn.__code__.co_firstlineno + 1
    assert info.value.location.filename == __file__


def recursive(x):
    return recursive(x - 1.0)


def test_recursion_is_refused():
    with pytest.raises(InterpretError, match="calls itself"):
        make_interpreter(MethodTable("test")).resolve(recursive)
