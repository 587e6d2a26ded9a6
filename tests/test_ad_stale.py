"""Stale derivatives (issue 9, class 7): every cache is keyed by what changes a derivative.

A derivative depends on the code of the function and of what it reaches, on
the globals, closure cells and defaults they read, and on the registered rules
(`gpuad.ad.cache_key.derivative_key`). Each test compiles a derivative, changes
one of these, and checks the next derivative sees the change: on the host
(`gpuad.autodiff`), through the engine (`differentiate`, `local_types`) and in
a kernel (cpu target). Source text that is not the function's code is refused.
"""
import importlib.util
import itertools
import linecache
import math
import sys
import textwrap
import warnings

import numpy as np
import pytest
from numba import cuda
from numba.core import types

import gpuad
from gpuad import Active, Duplicated, Forward, Reverse, autodiff
from gpuad.ad import differentiate, local_types
from gpuad.ad.rules import clear_rule
from gpuad.ad.typing import jit_derivative
from gpuad.errors import InterpretError, UnsupportedConstruct

_names = itertools.count()


def module(source: str, filename: str | None = None) -> dict:
    """Execute `source` as a notebook cell would: registered in linecache, in a fresh namespace."""
    source = textwrap.dedent(source)
    filename = filename or f"<stale-cell-{next(_names)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": filename, "math": math, "gpuad": gpuad, "cuda": cuda}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def grad(f, *xs):
    return autodiff(Reverse, f, *map(Active, xs))[0]


def tangent(f, x):
    return autodiff(Forward, f, Duplicated(x, 1.0))[0]


# ---------------------------------------------------------------- (a) globals
POWER = """
K = 2
def f(x):
    return x ** K
"""


@pytest.mark.parametrize("new", [2.5, -1])
def test_host_derivative_follows_a_global_the_function_reads(new):
    ns = module(POWER)
    assert grad(ns["f"], 3.0) == (pytest.approx(6.0),)
    assert tangent(ns["f"], 3.0) == pytest.approx(6.0)
    ns["K"] = new  # an int becoming a float changes the typing too
    assert grad(ns["f"], 3.0) == (pytest.approx(new * 3.0 ** (new - 1)),)
    assert tangent(ns["f"], 3.0) == pytest.approx(new * 3.0 ** (new - 1))


def test_globals_read_by_a_callee_attributes_and_defaults_are_followed():
    ns = module("""
        import types
        cfg = types.SimpleNamespace(alpha=2.0)
        S = 2.0
        def scale(c):
            return c * S
        def h(x, k=1.0):
            return x * k
        def f(x, c):
            return x * scale(c) + h(x) * cfg.alpha
    """)
    f = ns["f"]
    assert grad(f, 1.0, 3.0)[0] == pytest.approx(3.0 * 2.0 + 2.0)
    ns["S"] = 5.0  # read by the callee only: the primal call of `scale` must see it too
    assert grad(f, 1.0, 3.0)[0] == pytest.approx(3.0 * 5.0 + 2.0)
    ns["cfg"].alpha = 10.0  # an attribute of a global object, inlined as a constant
    assert grad(f, 1.0, 3.0)[0] == pytest.approx(3.0 * 5.0 + 10.0)
    ns["h"].__defaults__ = (4.0,)  # an omitted argument's default
    assert grad(f, 1.0, 3.0)[0] == pytest.approx(3.0 * 5.0 + 40.0)


def test_a_redefined_callee_is_followed():
    ns = module("""
        def h(x):
            return x * x
        def f(x):
            return h(x) + 1.0
    """)
    assert grad(ns["f"], 3.0) == (pytest.approx(6.0),)
    ns.update(module("def h(x):\n    return x * x * x\n"))  # a later cell redefines the helper
    assert grad(ns["f"], 3.0) == (pytest.approx(27.0),)


def test_closure_cells_are_part_of_the_key():
    ns = module("""
        def make():
            k = 2.0
            def f(x):
                return x ** k
            def set_k(v):
                nonlocal k
                k = v
            return f, set_k
    """)
    f, set_k = ns["make"]()
    assert grad(f, 3.0) == (pytest.approx(6.0),)
    set_k(3)
    assert grad(f, 3.0) == (pytest.approx(27.0),)


def test_engine_typing_follows_globals():
    ns = module("""
        K = 2
        def g():
            return K
        def f(x):
            n = g()
            return x * n
    """)
    assert local_types(ns["f"], (types.float64,))["n"] == types.int64
    ns["K"] = 2.5
    assert local_types(ns["f"], (types.float64,))["n"] == types.float64
    deriv = differentiate(ns["f"], Reverse, (Active,), (types.float64,))
    assert jit_derivative(deriv)(1.0, np.zeros(4, np.int64))[0][0] == 2.5


# -------------------------------------------------------------- (c) rules
def test_a_rule_registered_or_cleared_after_compiling_is_used():
    ns = module("""
        def h(x):
            return x * 2.0
        def u(x):
            return h(x) * 1.0
    """)
    h, u = ns["h"], ns["u"]
    assert grad(u, 3.0) == (pytest.approx(2.0),)
    assert tangent(u, 3.0) == pytest.approx(2.0)
    try:
        rule = gpuad.rule(h)

        @rule.reverse
        def h_reverse(x, d_out):
            return (d_out * 100.0,)

        assert grad(u, 3.0) == (pytest.approx(100.0),)

        @rule.forward
        def h_forward(x, t_x):
            return t_x * 50.0

        assert tangent(u, 3.0) == pytest.approx(50.0)
    finally:
        clear_rule(h)
    assert grad(u, 3.0) == (pytest.approx(2.0),)
    assert tangent(u, 3.0) == pytest.approx(2.0)


# ------------------------------------------------------------------ kernels
KERNEL = """
K = 2
OUT_SCALE = 1.0
def h(x):
    return x * 2.0
def f(x):
    return x ** K + h(x)
def kern(xs, out):
    i = cuda.grid(1)
    if i < xs.size:
        out[i] = gpuad.autodiff(gpuad.Reverse, f, gpuad.Active(xs[i]))[0][0] * OUT_SCALE
"""


def test_a_kernel_recompiles_when_what_it_differentiates_changes():
    ns = module(KERNEL)
    kern = gpuad.kernel(ns["kern"], target="cpu")
    xs, out = np.array([1.0, 2.0, 3.0]), np.zeros(3)

    def run():
        kern.launch(len(xs), xs, out)
        return out.copy()

    np.testing.assert_allclose(run(), 2 * xs + 2.0)
    ns["K"] = 3  # a global of the differentiated function
    np.testing.assert_allclose(run(), 3 * xs ** 2 + 2.0)
    ns["OUT_SCALE"] = 10.0  # a global of the kernel itself
    np.testing.assert_allclose(run(), 10 * (3 * xs ** 2 + 2.0))
    try:
        gpuad.rule(ns["h"], reverse=module("def h_rev(x, d_out):\n    return (d_out * 100.0,)\n")["h_rev"])
        np.testing.assert_allclose(run(), 10 * (3 * xs ** 2 + 100.0))
    finally:
        clear_rule(ns["h"])


# ----------------------------------------------- (b) source and code disagree
def test_two_execs_under_one_filename_refuse_the_older_function():
    old = module("def g(x):\n    return x * x\n", "<stale-shared-cell>")["g"]
    new = module("def g(x):\n    return x * x * x\n", "<stale-shared-cell>")["g"]
    with pytest.raises(UnsupportedConstruct, match="not the code of this function object") as info:
        grad(old, 3.0)
    assert info.value.location.filename == "<stale-shared-cell>" and info.value.location.line == 1
    assert grad(new, 3.0) == (pytest.approx(27.0),)


def test_a_kernel_whose_source_was_replaced_is_refused():
    source = KERNEL.replace("[0][0] * OUT_SCALE", "[0][0] * OUT_SCALE + 1.0")
    old = module(KERNEL, "<stale-kernel-cell>")
    module(source, "<stale-kernel-cell>")
    with pytest.raises(InterpretError, match="not the code of this function object"):
        gpuad.kernel(old["kern"], target="cpu").launch(1, np.ones(1), np.zeros(1))


def test_an_edited_file_is_refused(tmp_path):
    path = tmp_path / "stale_edited_module.py"
    path.write_text("def f(x):\n    return x * x\n")
    spec = importlib.util.spec_from_file_location("stale_edited_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert grad(mod.f, 3.0) == (pytest.approx(6.0),)  # compiled from the matching source
    path.write_text("def f(x):\n    return x * x * x + 0.0\n")  # edited, not reloaded
    assert grad(mod.f, 3.0) == (pytest.approx(6.0),)  # the cached derivative is of this function
    sys.modules.pop("stale_edited_module", None)
    with pytest.raises(UnsupportedConstruct, match="not the code of this function object"):
        autodiff(Forward, mod.f, Duplicated(3.0, 1.0))  # a new derivative would read the new text


def test_a_decorator_wrapper_is_refused_not_differentiated_as_the_wrapped_function():
    ns = module("""
        import functools
        def doubled(fn):
            @functools.wraps(fn)
            def wrapper(x):
                return 2.0 * fn(x)
            return wrapper
        @doubled
        def f(x):
            return x * x
    """)
    with pytest.raises(UnsupportedConstruct, match="is a wrapper made by a decorator"):
        grad(ns["f"], 3.0)  # its source is that of x * x: the derivative would miss the factor 2
    assert grad(ns["f"].__wrapped__, 3.0) == (pytest.approx(6.0),)


MATCHING = [
    # imported modules: CPython 3.11/3.12 compile `math.sin(x)` differently when `math` was imported
    "import math\ndef f(x):\n    return math.sin(x) * math.cos(x)\n",
    "from __future__ import annotations\nimport math\ndef f(x: float) -> float:\n    return math.exp(x)\n",
    # a decorator that returns the function, a docstring, loops and branches (jump targets)
    "def keep(fn):\n    return fn\n@keep\ndef f(x):\n    '''Doc.'''\n    s = 0.0\n    for i in range(3):\n"
    "        if i > 0:\n            s += x * i\n        else:\n            continue\n    return s\n",
    # a closure, and a method-like call on a global object
    "def make(k):\n    def f(x):\n        return x * k + math.sqrt(k)\n    return f\nf = make(2.0)\n",
    "import numpy as np\nC = np.float64(1.5)\ndef f(x):\n    return x * C - 0.0\n",
]


@pytest.mark.parametrize("source", MATCHING)
def test_the_source_check_accepts_matching_source(source):
    f = module(source)["f"]
    h = 1e-6
    primal = f.__wrapped__ if hasattr(f, "__wrapped__") else f
    expected = (primal(0.7 + h) - primal(0.7 - h)) / (2 * h)
    assert grad(f, 0.7)[0] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- global arrays (numba freezes them)
ARRAYS = """
import numpy as np
W = np.array([1.0, 2.0])
T = (np.array([3.0]), 2.0)

def f(x):
    return W[1] * x * x

def in_tuple(x):
    return T[0][0] * x * x

def through_method(x):
    return W.sum() * x * x
"""


def test_host_derivative_sees_a_global_array_changed_in_place():
    ns = module(ARRAYS)
    assert grad(ns["f"], 1.0) == (pytest.approx(4.0),)
    assert grad(ns["in_tuple"], 1.0) == (pytest.approx(6.0),)
    assert grad(ns["through_method"], 1.0) == (pytest.approx(6.0),)
    ns["W"][1] = 5.0  # the same array object: numba froze its old bytes into the compiled derivative
    ns["T"][0][0] = 4.0
    assert grad(ns["f"], 1.0) == (pytest.approx(10.0),)
    assert grad(ns["in_tuple"], 1.0) == (pytest.approx(8.0),)
    assert grad(ns["through_method"], 1.0) == (pytest.approx(12.0),)
    assert tangent(ns["f"], 1.0) == pytest.approx(10.0)


def test_global_arrays_are_keyed_by_content_and_layout():
    from gpuad.ad.cache_key import derivative_key

    ns = module(ARRAYS)
    key = derivative_key(ns["f"])
    method = derivative_key(ns["through_method"])
    assert derivative_key(ns["through_method"]) == method  # W.sum: a new method at each read
    ns["W"] = ns["W"].copy()
    assert derivative_key(ns["f"]) == key  # an equal copy: the same constant
    ns["W"][0] = -0.0
    assert derivative_key(ns["f"]) != key  # a byte differs
    for changed in (ns["W"].astype(np.float32), ns["W"].reshape(2, 1), np.asfortranarray(np.ones((2, 2))),
                    np.ones((2, 2))):
        ns["W"] = changed
        assert derivative_key(ns["f"]) != key
        key = derivative_key(ns["f"])


def test_a_global_array_too_large_to_watch_is_warned_about_once(monkeypatch):
    from gpuad.ad import cache_key
    from gpuad.errors import GpuadWarning

    monkeypatch.setattr(cache_key, "CONTENT_LIMIT", 8)
    ns = module(ARRAYS)
    with pytest.warns(GpuadWarning, match=r"f reads the global array `W` .*frozen into the compiled kernel, "
                      r"as numba does; changes after compiling are not seen: pass it as an argument") as seen:
        cache_key.derivative_key(ns["f"])
    assert f"{ns['__name__']}:7: f reads" in str(seen[0].message)  # where f reads W
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache_key.derivative_key(ns["f"])  # once
        cache_key.derivative_key(ns["in_tuple"])  # T[0] is 8 bytes: watched, nothing to say
    defaults = module("import numpy as np\ndef g(x, w=np.ones(4)):\n    return w[0] * x\n")
    with pytest.warns(GpuadWarning, match=r":2: g reads a default argument array \(0.0 MiB, float64"):
        cache_key.derivative_key(defaults["g"])
