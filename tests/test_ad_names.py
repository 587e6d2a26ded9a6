"""Names and calls (issue 9, class 11): functions named like the math functions they call,
recursion, and helpers called with defaults or keywords.

A user function `sqrt` calling `math.sqrt` is a different object from it:
typing must follow globals a function loads, not every name in its code
(`sqrt` of `math.sqrt` is an attribute). Recursion is refused naming the
cycle and the call; omitted arguments take the callee's defaults, in the
engine and in kernels.
"""
import itertools
import linecache
import math
import textwrap

import numpy as np
import pytest
from numba import cuda

import gpuad
from gpuad import Active, Duplicated, Forward, Reverse, autodiff
from gpuad.errors import InterpretError, UnsupportedConstruct

_names = itertools.count()


def module(source: str) -> dict:
    source = textwrap.dedent(source)
    filename = f"<names-cell-{next(_names)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": filename, "math": math, "gpuad": gpuad, "cuda": cuda}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def central(f, x, h=1e-6):
    return (f(x + h) - f(x - h)) / (2 * h)


def check_both_modes(f, x):
    expected = central(f, x)
    assert autodiff(Reverse, f, Active(x))[0][0] == pytest.approx(expected, rel=1e-6)
    assert autodiff(Forward, f, Duplicated(x, 1.0))[0] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------ names shadowing math functions
@pytest.mark.parametrize("name", ["sqrt", "exp", "log", "sin", "tanh"])
def test_a_function_named_like_the_math_function_it_calls(name):
    ns = module(f"""
        def {name}(x):
            return math.{name}(x) * 2.0
        def f(x):
            return {name}(x) + math.{name}(x)
    """)
    check_both_modes(ns["f"], 0.7)


def test_a_global_number_named_like_a_math_function():
    ns = module("""
        sin = 3.0
        def f(x):
            return math.sin(x) * sin
    """)
    check_both_modes(ns["f"], 0.7)


def test_shadowing_names_in_a_kernel():
    ns = module("""
        def sqrt(x):
            return math.sqrt(x) * 2.0
        def f(x):
            return sqrt(x)
        def kern(xs, out):
            i = cuda.grid(1)
            if i < xs.size:
                out[i] = gpuad.autodiff(gpuad.Reverse, f, gpuad.Active(xs[i]))[0][0] + sqrt(xs[i])
    """)
    xs, out = np.array([0.5, 1.0, 4.0]), np.zeros(3)
    gpuad.kernel(ns["kern"], target="cpu").launch(len(xs), xs, out)
    np.testing.assert_allclose(out, 1.0 / np.sqrt(xs) + 2.0 * np.sqrt(xs))


# ----------------------------------------------------------------- recursion
MUTUAL = """
def f(x):
    return g(x) * 2.0
def g(x):
    if x > 10.0:
        return x
    return f(x * 2.0)
def top(x):
    return f(x) + 1.0
def kern(xs, out):
    i = cuda.grid(1)
    if i < xs.size:
        out[i] = f(xs[i])
"""


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_mutual_recursion_is_refused_naming_the_call(mode):
    ns = module(MUTUAL)
    with pytest.raises(UnsupportedConstruct, match=r"recursion is not supported: f -> g -> f") as info:
        if mode == "reverse":
            autodiff(Reverse, ns["top"], Active(1.0))
        else:
            autodiff(Forward, ns["top"], Duplicated(1.0, 1.0))
    where = info.value.location
    assert (where.function, where.line, where.construct) == ("g", 7, "f(...)")


def test_a_recursive_helper_is_refused():
    ns = module("""
        def fact(n, x):
            if n <= 1:
                return x
            return x * fact(n - 1, x)
        def top(x):
            return fact(3, x)
    """)
    with pytest.raises(UnsupportedConstruct, match="recursion") as info:
        autodiff(Reverse, ns["top"], Active(1.5))
    assert info.value.location.function == "fact" and info.value.location.line == 5


def test_recursion_in_a_kernel_is_refused():
    ns = module(MUTUAL)
    with pytest.raises(InterpretError, match="calls itself"):
        gpuad.kernel(ns["kern"], target="cpu").launch(1, np.ones(1), np.zeros(1))


# ------------------------------------------------------- defaults and keywords
DEFAULTS = """
def h(x, k=2.0, n=3):
    return x ** n * k
def f(x):
    return h(x) + h(x, 5.0) + h(x, n=2) + h(k=0.5, x=x) + h(x, 1.5, 1)
def kern(xs, out):
    i = cuda.grid(1)
    if i < xs.size:
        y = xs[i]
        out[i] = gpuad.autodiff(gpuad.Reverse, f, gpuad.Active(y))[0][0] + h(y) + h(k=1.0, x=y)
def kern_reordered(xs, out):
    i = cuda.grid(1)
    if i < xs.size:
        out[i] = h(k=xs[0], x=xs[i])
"""


def test_a_helper_called_without_its_defaults_or_with_keywords():
    check_both_modes(module(DEFAULTS)["f"], 0.7)


def test_defaults_and_keywords_in_a_kernel():
    ns = module(DEFAULTS)
    xs, out = np.array([0.5, 1.0, 2.0]), np.zeros(3)
    gpuad.kernel(ns["kern"], target="cpu").launch(len(xs), xs, out)
    expected = [central(ns["f"], x) + ns["h"](x) + ns["h"](x, 1.0) for x in xs]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_keywords_whose_order_matters_are_refused_in_a_kernel():
    ns = module(DEFAULTS)
    with pytest.raises(InterpretError, match="in the order Python evaluates them") as info:
        gpuad.kernel(ns["kern_reordered"], target="cpu").launch(1, np.ones(1), np.zeros(1))
    assert info.value.location.construct == "h(k=xs[0], x=xs[i])"


def test_a_default_that_is_not_a_number_is_refused():
    ns = module("""
        def h(x, scale=(1.0, 2.0)):
            return x * scale[0]
        def f(x):
            return h(x)
    """)
    with pytest.raises(UnsupportedConstruct, match="pass `scale` explicitly") as info:
        autodiff(Reverse, ns["f"], Active(1.0))
    assert info.value.location.line == 5


def test_a_missing_argument_without_default_is_refused():
    ns = module("""
        def h(x, k):
            return x * k
        def f(x):
            return h(x)
    """)
    with pytest.raises(UnsupportedConstruct, match="pass `k`"):
        autodiff(Reverse, ns["f"], Active(1.0))
