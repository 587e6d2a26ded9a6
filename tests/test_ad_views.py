"""Shadows follow array values (gpuad/ad/views.py): aliases, row views, slices, choices, helpers.

Every view form is combined with every way of using it (reads in a loop, a store through it, a
helper taking it, rebinding the index it was taken with), generated as source, and checked in
reverse and forward mode against central differences of the same Python function.
"""
from __future__ import annotations

import itertools
import math

import corpus
import numba
import numpy as np
import pytest

from gpuad import Active, Const, Duplicated, Forward, Reverse, autodiff
from gpuad.errors import UnsupportedConstruct

# (view expression over m (3x4) and v (6,), its length)
VIEWS = [
    ("v", 6), ("m[1]", 4), ("m[2, 1:4]", 3), ("m[0][1:3]", 2), ("v[1:5]", 4), ("v[::2]", 3),
    ("v[5:0:-2]", 3), ("v[-3:]", 3), ("m[1:3][1]", 4), ("m[j]", 4), ("v[j:j + 3]", 3),
    ("(m[0] if x > 0.0 else m[2])", 4), ("(v[0:4] if x < 0.0 else m[1])", 4),
]
# How the view is used; `w` is the view, `n` its length.
USES = {
    "loop_reads": ["s = 0.0", "for k in range({n}):", "    s += w[k] * x * (k + 1.0)", "return s"],
    "alias_chain": ["u = w", "z = u", "return z[0] * z[{n} - 1] * x + math.sin(z[1])"],
    "negative_index": ["return w[-1] * x * x + w[-{n}]"],
    "store_then_read": ["w[1] = w[0] * x", "return w[1] * w[1] + v[2] + m[1, 1]"],
    "helper": ["return helper(w, x) + w[0]"],
    "index_rebound": ["j = 0", "return w[1] * x + w[0]"],
    "loop_rebinding": ["s = 0.0", "for k in range(2):", "    r = m[k]", "    s += r[0] * w[k] * x",
                       "    r[1] = s", "return s + m[0, 1] + m[1, 1]"],
}
HELPER = '''
def helper(a, x):
    t = 0.0
    for i in range(a.shape[0]):
        t += a[i] * (x + i)
    return t * a[0]
'''
_serial = itertools.count()


def make(view: str, n: int, use: str):
    body = [f"w = {view}"] + [line.format(n=n) for line in USES[use]]
    source = HELPER + "\n\ndef f(m, v, x, j):\n" + "".join(f"    {line}\n" for line in body)
    return corpus.exec_source(source, f"<views {next(_serial)}>", {"math": math})["f"], source


def primal(f, m, v, x, j):
    return f(m.copy(), v.copy(), x, j)


def finite_difference(f, m, v, x, j, direction):
    dm, dv, dx = direction
    h = 1e-4

    def at(s):
        return primal(f, m + s * dm, v + s * dv, x + s * dx, j)
    return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)


CASES = [(v, n, u) for (v, n), u in itertools.product(VIEWS, USES)]


@pytest.mark.parametrize("view,n,use", CASES, ids=[f"{v}-{u}" for v, _, u in CASES])
@pytest.mark.parametrize("x", [0.7, -0.4])
def test_view_reverse_and_forward_match_finite_differences(view, n, use, x):
    f, source = make(view, n, use)
    rng = np.random.default_rng(len(source))
    m, v, j = rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, 6), 1
    dm, dv = np.zeros_like(m), np.zeros_like(v)
    (derivs,) = autodiff(Reverse, f, Duplicated(m.copy(), dm), Duplicated(v.copy(), dv), Active(x), Const(j))
    for k, e in enumerate(np.eye(m.size + v.size + 1)):
        direction = (e[:m.size].reshape(m.shape), e[m.size:m.size + v.size], e[-1])
        expected = finite_difference(f, m, v, x, j, direction)
        got = np.concatenate([dm.ravel(), dv, [derivs[2]]])[k]
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-8), (k, source)
    direction = (rng.uniform(-1, 1, m.shape), rng.uniform(-1, 1, v.shape), 0.3)
    (df,) = autodiff(Forward, f, Duplicated(m.copy(), direction[0].copy()),
                     Duplicated(v.copy(), direction[1].copy()), Duplicated(x, direction[2]), Const(j))
    assert df == pytest.approx(finite_difference(f, m, v, x, j, direction), rel=1e-6, abs=1e-8), source


def test_view_primal_writes_reach_the_array():
    f, _ = make("m[1]", 4, "store_then_read")
    m, v = np.arange(12.0).reshape(3, 4), np.arange(6.0)
    expected = m.copy()
    f(expected, v.copy(), 0.5, 1)
    autodiff(Reverse, f, Duplicated(m, np.zeros_like(m)), Duplicated(v, np.zeros_like(v)), Active(0.5),
             Const(1))
    np.testing.assert_array_equal(m, expected)


def test_choice_between_active_and_constant_array_is_refused():
    f, _ = make("(m[0] if x > 0.0 else v[0:4])", 4, "loop_reads")
    with pytest.raises(UnsupportedConstruct, match="pass v as Duplicated"):
        autodiff(Reverse, f, Duplicated(np.ones((3, 4)), np.zeros((3, 4))), Const(np.ones(6)), Active(0.5),
                 Const(1))


def test_store_into_a_slice_is_refused_at_its_line():
    source = "def f(v, x):\n    v[0:2] = x\n    return v[0]\n"
    f = corpus.exec_source(source, "<views slice store>", {})["f"]
    with pytest.raises(UnsupportedConstruct, match="assigning to a slice") as info:
        autodiff(Reverse, f, Duplicated(np.ones(3), np.zeros(3)), Active(0.5))
    assert info.value.location.line == 2


def test_array_returned_by_a_call_is_refused():
    source = "import numpy as np\ndef f(v, x):\n    w = np.copy(v)\n    return w[0] * x\n"
    f = corpus.exec_source(source, "<views call>", {})["f"]
    with pytest.raises(UnsupportedConstruct, match="computed from another array by a call"):
        autodiff(Reverse, f, Duplicated(np.ones(3), np.zeros(3)), Active(0.5))


def test_view_in_kernel_on_cpu_target():
    """The real path: a kernel whose differentiated function takes a row view and a slice."""
    import gpuad

    source = "def energy(m, i):\n    row = m[i]\n    s = row[1:]\n    return s[0] * s[1] + row[0] * row[0]\n"
    energy = corpus.exec_source(source, "<views kernel fn>", {})["energy"]

    @gpuad.kernel(target="cpu")
    def grad(m, dm):
        i = gpuad.thread_index()
        if i < m.shape[0]:
            autodiff(Reverse, energy, Duplicated(m, dm), Const(i))

    m = np.arange(12.0).reshape(4, 3)
    dm = np.zeros_like(m)
    grad.launch(4, m, dm)
    expected = np.zeros_like(m)
    expected[:, 0], expected[:, 1], expected[:, 2] = 2 * m[:, 0], m[:, 2], m[:, 1]
    np.testing.assert_allclose(dm, expected)


def test_numba_types_the_views_used_here():
    """Guard for the test itself: the generated functions compile as plain numba too."""
    f, _ = make("v[5:0:-2]", 3, "loop_reads")
    assert numba.njit(f)(np.ones((3, 4)), np.arange(6.0), 0.5, 1) == pytest.approx(
        f(np.ones((3, 4)), np.arange(6.0), 0.5, 1))


# Found by the random programs (views and rebinding features), reduced by hand.
FOUND = {
    "view bound in a branch, name rebound after it": (
        "def f(x, a, m):\n    if x > 0.5:\n        v = x\n    else:\n        r = m[1]\n        v = x * r[2]\n"
        "    r = a\n    return v\n", 0.25),
    "view rebound to itself in one branch": (
        "def f(x, a, m):\n    if x > 0.0:\n        r = m[0]\n        r = r\n    else:\n        r = m[1]\n"
        "    return r[0] * x + a[1]\n", -0.5),
    "array parameter rebound to a float after early returns": (
        "def f(x, a, m):\n    if x > 0.0:\n        return x + a[0]\n"
        "    if x > 0.0:\n        return x + a[0]\n"
        "    a = a[0] * 2.0 + x\n    return a * 0.5 + m[0, 0]\n", -0.5),
    "choice of arrays inside a loop": (
        "def f(x, a, m):\n    for i in range(3):\n        w = a if a[1] > -0.3 else m[1]\n"
        "    return x * a[0] + w[1]\n", 0.3),
    "view bound and read on one path inside a loop": (
        "def f(x, a, m):\n    s = 0.0\n    for i in range(3):\n        if a[1] > -0.3:\n"
        "            w = m[1]\n            s = s + x * w[0]\n    return s\n", 0.3),
}


@pytest.mark.parametrize("name", list(FOUND))
def test_found_programs(name):
    source, x = FOUND[name]
    f = corpus.exec_source(source, f"<views found {next(_serial)}>", {})["f"]
    a, m = np.linspace(0.5, 1.5, 3), np.arange(9.0).reshape(3, 3) * 0.25
    da, dm = np.zeros_like(a), np.zeros_like(m)
    ((dx, _, _),) = autodiff(Reverse, f, Active(x), Duplicated(a.copy(), da), Duplicated(m.copy(), dm))
    eye = np.eye(1 + a.size + m.size)
    for k, e in enumerate(eye):
        direction = (e[1 + a.size:].reshape(m.shape), e[1:1 + a.size], e[0])

        def at(s, d=direction):
            return f(x + s * d[2], a + s * d[1], m + s * d[0])
        expected = (at(1e-6) - at(-1e-6)) / 2e-6
        assert np.concatenate([[dx], da, dm.ravel()])[k] == pytest.approx(expected, abs=1e-7), (k, source)
    (df,) = autodiff(Forward, f, Duplicated(x, 1.0), Const(a), Const(m))
    assert df == pytest.approx(dx)


@pytest.mark.parametrize("source", [
    "def f(x, m, n):\n    s = 0.0\n    r = m[0]\n    for k in range(n):\n        s += r[0] * x\n"
    "        r = m[k]\n    return s\n",
    "def f(x, m, n):\n    s = 0.0\n    r = m[2]\n    for k in range(n):\n        if x > 0.0:\n"
    "            r = m[k]\n        s += r[0] * x\n    return s\n",
])
def test_array_names_carried_between_iterations_are_refused(source):
    f = corpus.exec_source(source, f"<views loop {next(_serial)}>", {})["f"]
    m = np.ones((3, 3))
    with pytest.raises(UnsupportedConstruct, match="iteration"):
        autodiff(Reverse, f, Active(0.5), Duplicated(m, np.zeros_like(m)), Const(3))
