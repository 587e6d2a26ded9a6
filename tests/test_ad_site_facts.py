"""What call sites let the entry skip (gpuad.ad.site_facts): atomics, unread stores."""
from __future__ import annotations

import math
import re

import numba
import numpy as np
import pytest
from corpus import exec_source
from numba import cuda
from test_ad_helpers import status

import gpuad
from gpuad.ad import differentiate
from gpuad.ad.primitives import atomic_add, atomic_add_distinct
from gpuad.ad.typing import jit_derivative
from gpuad.api import Const, Duplicated, DuplicatedNoNeed, Forward, Reverse, autodiff

VEC = numba.typeof(np.zeros(4))
MAT = numba.typeof(np.zeros((4, 3)))
INT = numba.typeof(1)


def own_read_write(x, y, i):
    v = math.sin(x[i]) * x[i]
    y[i] = v * v
    return v


def neighbour(x, i):
    return x[i] * x[i + 1]


def copied_id(x, i):
    j = i
    return x[j] * x[j]


def moved_id(x, i):
    i = i + 1
    return x[i] * x[i]


def row(m, i):
    s = 0.0
    for k in range(m.shape[1]):
        s += m[i, k] * m[i, k]
    return s


def square(a, i):
    return a[i] * a[i]


def passed_on(x, i):
    return square(x, i) + x[i]


def own_and_other(x, y, i):
    return x[i] * y[0]


def reverse(f, argtypes, activities, thread_ids=frozenset(), exclusive=frozenset()):
    return differentiate(f, Reverse, activities, argtypes, thread_ids=thread_ids, exclusive=exclusive)


def test_thread_own_reads_and_writes_drop_the_atomic():
    d = reverse(own_read_write, (VEC, VEC, INT), (Duplicated, Duplicated, Const), {2}, {0, 1})
    assert d.own_arrays == {"x", "y"}
    assert "atomic_add" not in d.source
    # a plain update of the own element, merged or not, its old value read in place or early
    # (`_e0 = d_x[i]` above the math: `emit.hoist_shadow_reads`)
    update = re.search(r"d_x\[i\] (\+=|= (d_x\[i\]|(_e\d+)) \+) ", d.source)
    assert update and (update[3] is None or f"{update[3]} = d_x[i]\n" in d.source)


@pytest.mark.parametrize("jit", [False, True])
def test_dropped_atomics_give_the_same_gradient(jit):
    x, y = np.array([0.3, 0.7, 1.1, 1.9]), np.zeros(4)
    results = []
    for own in (True, False):
        d = reverse(own_read_write, (VEC, VEC, INT), (Duplicated, Duplicated, Const),
                    {2} if own else set(), {0, 1} if own else set())
        fn = jit_derivative(d) if jit else d.function
        dx, dy = np.zeros(4), np.array([0.0, 0.0, 2.0, 0.0])
        fn(x, dx, y.copy(), dy, 2, status())
        results.append(dx)
    v = math.sin(1.1) * 1.1
    expected = (math.cos(1.1) * 1.1 + math.sin(1.1)) * (1.0 + 2.0 * 2.0 * v)
    assert results[0][2] == pytest.approx(expected, rel=1e-14)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("f, argtypes, why", [
    (neighbour, (VEC, INT), "x[i + 1] may be another thread's element"),
    (moved_id, (VEC, INT), "the id is reassigned"),
    (passed_on, (VEC, INT), "the array reaches another function"),
])
def test_atomics_kept_where_ownership_is_not_proven(f, argtypes, why):
    d = reverse(f, argtypes, (Duplicated, Const), {1}, {0})
    assert d.own_arrays == frozenset(), why
    assert re.search(r"atomic_add(_distinct)?\(d_x", d.source), why  # atomic (lanes apart or not)


def test_ownership_needs_both_facts_from_the_call_site():
    for ids, exclusive in (({1}, set()), (set(), {0})):
        d = reverse(square, (VEC, INT), (Duplicated, Const), ids, exclusive)
        assert re.search(r"atomic_add(_distinct)?\(d_a, i", d.source)


def test_plain_copies_of_the_id_and_rows_of_matrices_are_own():
    assert reverse(copied_id, (VEC, INT), (Duplicated, Const), {1}, {0}).own_arrays == {"x"}
    d = reverse(row, (MAT, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == {"m"}
    assert "d_m[i, k] += " in d.source


def test_only_the_arrays_indexed_by_the_id_are_own():
    d = reverse(own_and_other, (VEC, VEC, INT), (Duplicated, Duplicated, Const), {2}, {0, 1})
    assert d.own_arrays == {"x"}
    assert "atomic_add(d_y, 0" in d.source


# ---- the thread-own rule: one index position holds the id in every access of the array


def cross(m, i):
    d = 0.0
    for k in range(m.shape[1]):
        d += m[i, k] * m[k, i]
    return d


def test_the_id_at_two_positions_keeps_the_atomics():
    """Threads a and b both update element (a, b): m[a, b] in a's row, m[a, b] in b's column."""
    d = reverse(cross, (MAT, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == frozenset()
    # atomic; lanes (different i) are on different elements, so nothing to combine
    assert "atomic_add_distinct(d_m, (i, k)" in d.source
    assert "atomic_add_distinct(d_m, (k, i)" in d.source


# Pairs of index patterns of a 4x4 matrix `m`, read as `m[A] * m[B]` or written `m[A] = m[B]`,
# with `i` the thread id, `j = i` a copy of it and `k` a loop variable. `races` checks each
# label: in a racy pair two threads touch one element.
SOUND_PAIRS = [
    ("i, k", "i, k"), ("i, k", "i, 0"), ("i, i", "i, k"), ("j, k", "i, 0"), ("k, i", "0, i"),
    ("i, k", "j, i"), ("i, -1", "i, k"), ("i, k", "i, 3 - k"), ("0, i", "i, i"),
]
RACY_PAIRS = [
    ("i, k", "k, i"), ("i, 1", "0, i"), ("i, k", "k, k"), ("i, k", "0, 0"), ("i + 1, k", "i, k"),
    ("i, k", "k, j"), ("2 * i, k", "i, k"), ("i, k", "k, 0"), ("i, k", "3 - i, k"),
]


def races(a: str, b: str, n: int = 4) -> bool:
    """Whether two of n threads touch one element of an n x n matrix (or n-vector)."""
    def touched(t):
        cells = set()
        for k in range(n):
            for pattern in (a, b):
                cell = tuple(eval(f"({pattern},)", {"i": t, "j": t, "k": k}))  # noqa: S307
                if all(-n <= c < n for c in cell):
                    cells.add(tuple(c % n for c in cell))
        return cells

    return any(touched(t) & touched(u) for t in range(n) for u in range(t))


READS = """def {name}(m, i):
    j = i
    s = 0.0
    for k in range(m.shape[0]):
        s += m[{a}] * m[{b}]
    return s
"""
WRITES = """def {name}(m, i):
    j = i
    s = 0.0
    for k in range(m.shape[0]):
        v = m[{b}]
        m[{a}] = v * 2.0
        s += v
    return s
"""
_programs = iter(range(1_000_000))


def pattern_function(template: str, a: str, b: str):
    k = next(_programs)
    name = f"pattern_{k}"
    return exec_source(template.format(name=name, a=a, b=b), f"<site-facts pattern {k}>", {})[name]


@pytest.mark.parametrize("template", [READS, WRITES], ids=["reads", "writes"])
@pytest.mark.parametrize("a, b", SOUND_PAIRS + [(b, a) for a, b in SOUND_PAIRS])
def test_the_id_at_one_position_in_every_access_drops_the_atomics(template, a, b):
    assert not races(a, b)
    d = reverse(pattern_function(template, a, b), (MAT, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == {"m"}
    assert "atomic_add" not in d.source


@pytest.mark.parametrize("template", [READS, WRITES], ids=["reads", "writes"])
@pytest.mark.parametrize("a, b", RACY_PAIRS + [(b, a) for a, b in RACY_PAIRS])
def test_accesses_other_threads_can_reach_keep_the_atomics(template, a, b):
    assert races(a, b)
    d = reverse(pattern_function(template, a, b), (MAT, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == frozenset()
    assert re.search(r"atomic_add(_distinct)?\(d_m", d.source)  # combining or not, atomic


@pytest.mark.parametrize("a, b, own", [("i", "j", True), ("i", "k", False), ("i", "0", False),
                                       ("j", "i + 1", False), ("i", "-1", False)])
def test_vectors_follow_the_same_rule(a, b, own):
    assert races(a, b) != own
    d = reverse(pattern_function(READS, a, b), (VEC, INT), (Duplicated, Const), {1}, {0})
    assert d.own_arrays == ({"m"} if own else frozenset())


def rotated_cross(m, i):
    """`cross` with the columns visited from a per-thread start: threads a and b meet on element
    (a, b) in the same iteration (k = a + b), so without atomics a warp loses updates."""
    n = m.shape[0]
    d = 0.0
    for k in range(n):
        c = (k - i) % n
        d += m[i, c] * m[c, i]
    return d


def cross_kernel(m, dm):
    i = cuda.grid(1)
    if i < m.shape[0]:
        autodiff(Reverse, cross, Duplicated(m, dm), i)


def rotated_cross_kernel(m, dm):
    i = cuda.grid(1)
    if i < m.shape[0]:
        autodiff(Reverse, rotated_cross, Duplicated(m, dm), i)


CROSS_KERNELS = [cross_kernel, rotated_cross_kernel]


def check_cross_kernel(body, target: str, n: int) -> gpuad.kernel:
    """Every thread adds its d(sum_k m[i,k] m[k,i]) into one shared shadow: dm = 2 m^T."""
    m = np.random.default_rng(7).uniform(-1.0, 1.0, (n, n))
    dm = np.zeros((n, n))
    k = gpuad.kernel(body, target=target, tape_capacity=n)
    k.launch(n, m, dm)
    np.testing.assert_allclose(dm, 2.0 * m.T, rtol=1e-14, atol=1e-15)
    return k


@pytest.mark.parametrize("body", CROSS_KERNELS)
def test_the_cross_kernel_keeps_its_atomics_and_its_gradient(body):
    m, dm = np.zeros((8, 8)), np.zeros((8, 8))
    record = gpuad.kernel(body).compile(m, dm)
    (job,) = record.jobs
    assert job.own_shadows == ()
    # still atomic; lanes are on different rows or columns (i), so none to combine
    assert "atomic_add_distinct(d_m" in record.adjoint_sources[job.id]
    check_cross_kernel(body, "cpu", 48)


def scatter_square(x, out, n):
    for k in range(n):
        out[k] = x[k] * x[k]


def reads_back(out, x):
    out[0] = x[0] * 2.0
    return out[0] * x[0]


VEC_ARGS = (VEC, VEC, INT)


def stores_into(source, array):
    return any(line.strip().startswith(f"{array}[") for line in source.splitlines())


@pytest.mark.parametrize("mode", [Reverse, Forward])
def test_duplicated_no_need_skips_stores_nobody_reads(mode):
    x, out = np.array([0.5, 1.5, 2.5, 3.0]), np.full(4, -1.0)
    d = differentiate(scatter_square, mode, (Duplicated, DuplicatedNoNeed, Const), VEC_ARGS)
    assert not stores_into(d.source, "out")
    if mode is Reverse:
        dx, dout = np.zeros(4), np.ones(4)
        d.function(x, dx, out, dout, 4, status())
        np.testing.assert_array_equal(dx, 2.0 * x)
        np.testing.assert_array_equal(dout, 0.0)  # the seed is consumed as for Duplicated
    else:
        tout = np.zeros(4)
        d.function(x, np.ones(4), out, tout, 4, status())
        np.testing.assert_array_equal(tout, 2.0 * x)
    np.testing.assert_array_equal(out, -1.0)  # the primal store was skipped
    kept = differentiate(scatter_square, mode, (Duplicated, Duplicated, Const), VEC_ARGS)
    assert stores_into(kept.source, "out")


def test_duplicated_no_need_keeps_stores_read_back():
    d = differentiate(reads_back, Reverse, (DuplicatedNoNeed, Duplicated), (VEC, VEC))
    assert stores_into(d.source, "out")
    out, dout, x, dx = np.zeros(1), np.zeros(1), np.array([1.5]), np.zeros(1)
    d.function(out, dout, x, dx, status())
    assert dx[0] == pytest.approx(4.0 * 1.5, rel=1e-15)  # d(2x * x)/dx
    assert out[0] == 3.0


# ---- lanes apart: the id plus a constant reaches a different element in every lane (no combining)

def shifted_reads(x, i):
    j = i + 1
    k = 2 + i
    return x[i] * x[j] + x[i - 1] * x[k] + x[-i]


def row_of_shifted(m, i):
    s = 0.0
    for c in range(m.shape[1]):
        s += m[i - 1, c] * m[c, i + 1]
    return s


def halved(x, i):
    return x[i // 2] * x[i]


def doubled(x, i):
    return x[2 * i]


def shifted_by_variable(x, i, n):
    return x[i + n]


def from_memory(x, idx, i):
    return x[idx[i]]


def in_loop(x, i):
    s = 0.0
    for k in range(3):
        s += x[i + k]
    return s


def rebound(x, i):
    j = i + 1
    if x[0] > 0.0:
        j = 0
    return x[j]


def lane_updates(source: str) -> tuple[int, int]:
    """(combining atomics, lanes-apart atomics) in a derivative's source."""
    return len(re.findall(r"\batomic_add\(", source)), len(re.findall(r"\batomic_add_distinct\(", source))


IVEC = numba.typeof(np.zeros(4, np.int64))


def test_the_id_plus_a_constant_is_a_plain_atomic():
    d = reverse(shifted_reads, (VEC, INT), (Duplicated, Const), {1})
    assert lane_updates(d.source) == (0, 5)
    d = reverse(row_of_shifted, (MAT, INT), (Duplicated, Const), {1})
    assert lane_updates(d.source) == (0, 2)  # d_m[i - 1, c], d_m[c, i + 1]: the id at any position
    assert d.own_arrays == frozenset()  # still atomic: lanes apart is not thread-own


def test_without_the_call_site_fact_every_update_combines():
    d = reverse(shifted_reads, (VEC, INT), (Duplicated, Const))
    assert lane_updates(d.source) == (5, 0)


def test_the_shifted_id_passed_in_counts_as_the_id():
    d = differentiate(shifted_reads, Reverse, (Duplicated, Const), (VEC, INT), distinct_lanes={1})
    assert lane_updates(d.source) == (0, 5)


@pytest.mark.parametrize("f, argtypes, activities, combining", [
    (halved, (VEC, INT), (Duplicated, Const), 1),  # lanes 2k and 2k + 1 meet on x[k]
    (doubled, (VEC, INT), (Duplicated, Const), 1),  # distinct, but not by this rule
    (shifted_by_variable, (VEC, INT, INT), (Duplicated, Const, Const), 1),
    (from_memory, (VEC, IVEC, INT), (Duplicated, Const, Const), 1),
    (in_loop, (VEC, INT), (Duplicated, Const), 1),
    (rebound, (VEC, INT), (Duplicated, Const), 2),
])
def test_indices_not_provably_apart_keep_the_combining_atomic(f, argtypes, activities, combining):
    ids = {activities.index(Const)}
    d = reverse(f, argtypes, activities, ids)
    distinct = 1 if f is halved else 0  # x[i] itself
    assert lane_updates(d.source) == (combining, distinct)


@pytest.mark.parametrize("jit", [False, True])
def test_lanes_apart_gives_the_same_gradient(jit):
    x = np.array([0.3, 0.7, 1.1, 1.9, -0.4, 2.2])
    results = []
    for ids in ({1}, set()):
        d = reverse(shifted_reads, (VEC, INT), (Duplicated, Const), ids)
        fn = jit_derivative(d) if jit else d.function
        dx = np.full(6, 0.5)  # a shadow that already holds something
        fn(x, dx, 2, status())
        results.append(dx)
    expected = np.full(6, 0.5)  # i = 2: x[2] x[3] + x[1] x[4] + x[-2], and x[-2] is x[4]
    np.add.at(expected, [2, 3, 1, 4, 4], [x[3], x[2], x[4], x[1], 1.0])
    np.testing.assert_allclose(results[0], expected, rtol=1e-15)
    np.testing.assert_array_equal(results[0], results[1])


# ---- the kernel's side: which arguments differ in every lane (KernelLanes)

def lanes_of(source: str) -> list[bool]:
    """For each argument of the last call in `source`'s function: does it differ in every lane?"""
    import ast
    import textwrap

    from gpuad.ad.site_facts import KernelLanes

    tree = ast.parse(textwrap.dedent(source)).body[0]
    lanes = KernelLanes(tree, {"i"})
    call = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "f"][-1]
    return [lanes.distinct(a, call) for a in call.args]


@pytest.mark.parametrize("body, expected", [
    ("f(i, i + 1, 1 + i, i - 3, j)", [True, True, True, True, True]),
    ("f(i // 2, 2 * i, i + n, idx[i], k)", [False, False, False, False, False]),
    ("if i < n:\n    f(r, l, (i + 1) % n, (i - 2) % n, (i + 1) % x.shape[0])",
     [True, True, True, True, False]),
    ("if i < m:\n    f(r, l, (i + 1) % n)", [False, False, False]),  # the guard is on another bound
    ("f(r, l, (i + 1) % n)", [False, False, False]),  # no guard: every lane past n - 1 takes 0
    ("if i < n and x[i] > 0:\n    f(r, l)", [True, True]),
    ("if n > i:\n    f(r)\nelse:\n    f(r)", [False]),  # the last call is in the else branch
])
def test_kernel_arguments_that_differ_in_every_lane(body, expected):
    source = ("def kernel(x, idx, n, m):\n    i = cuda.grid(1)\n    j = i + 2\n    k = idx[i]\n"
              "    r = i + 1 if i < n - 1 else 0\n    l = i - 1 if i > 0 else n - 1\n"
              + "".join(f"    {line}\n" for line in body.splitlines()))
    assert lanes_of(source) == expected


@pytest.mark.parametrize("binding", [
    "r = i + 1 if i < n - 2 else 0",  # two lanes take 0
    "r = i + 1 if i < n - 1 else 1",  # lane 0's i + 1 is 1 too
    "r = i + 2 if i < n - 1 else 0",
    "r = i - 1 if i > 1 else n - 1",  # lanes 0 and 1 take n - 1
    "r = i - 1 if i > 0 else n - 2",  # lane n - 1's i - 1 is n - 2 too
    "r = i + 1 if i < n - 1 else 0\n    r = 0",  # bound twice
    "r = i + 1 if i < s - 1 else 0",  # s is not the same in every thread
])
def test_periodic_neighbours_are_recognised_only_as_bijections(binding):
    source = (f"def kernel(x, n, idx):\n    i = cuda.grid(1)\n    s = idx[i]\n    {binding}\n"
              "    if i < n:\n        if i < s:\n            f(r)\n")
    assert lanes_of(source) == [False]


def scattered_pair(x, j):
    return x[j] * x[j]


def two_sites_kernel(x, dx, idx):
    i = cuda.grid(1)
    if i < x.shape[0] - 1:
        autodiff(Reverse, scattered_pair, Duplicated(x, dx), i + 1)
        autodiff(Reverse, scattered_pair, Duplicated(x, dx), idx[i])


def test_one_function_at_two_sites_gets_a_derivative_per_fact():
    """The job's key holds the fact: the `idx[i]` site must not reuse the `i + 1` derivative."""
    x, dx, idx = np.ones(8), np.zeros(8), np.zeros(8, np.int64)
    record = gpuad.kernel(two_sites_kernel).compile(x, dx, idx)
    first, second = record.jobs
    assert lane_updates(record.adjoint_sources[first.id]) == (0, 2)
    assert lane_updates(record.adjoint_sources[second.id]) == (2, 0)


@pytest.mark.parametrize("n", [5, 37, 70])
def test_one_function_at_two_sites_on_the_cpu_target(n):
    rng = np.random.default_rng(3)
    x, dx = rng.uniform(-1.0, 1.0, n), np.zeros(n)
    idx = rng.integers(0, 3, n)  # most threads collide on three elements
    gpuad.kernel(two_sites_kernel, target="cpu").launch(n, x, dx, idx)
    expected = np.zeros(n)
    expected[1:] += 2 * x[1:]
    np.add.at(expected, idx[:n - 1], 2 * x[idx[:n - 1]])
    np.testing.assert_allclose(dx, expected, rtol=1e-14)


def adds_into(a, x, i):
    atomic_add_distinct(a, i, x * x)
    atomic_add(a, i + 1, x)
    return x


def test_forward_over_an_adjoints_updates_keeps_each_kind_of_atomic():
    """The tangent of a shadow update is the same update of the shadow's tangent, at the same index
    (so with the same lanes): `atomic_add_distinct` stays itself, not a plain `+=` of its body."""
    d = differentiate(adds_into, Forward, (Duplicated, Duplicated, Const), (VEC, numba.float64, INT))
    assert "atomic_add_distinct(t_a, i, t__t0)" in d.source
    assert re.search(r"\batomic_add\(t_a, _t\d+, t_x\)", d.source)
    a, ta = np.zeros(4), np.zeros(4)
    assert d.function(a, ta, 3.0, 1.0, 1, status()) == (1.0,)
    np.testing.assert_array_equal(ta, [0.0, 6.0, 1.0, 0.0])
