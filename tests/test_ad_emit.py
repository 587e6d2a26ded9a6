"""Tidying generated code lists (`gpuad.ad.emit.fold_zero_inits`, `merge_shadow_increments`): the
same values in fewer instructions, checked on the text, on the numbers and in the PTX against the
hand-written kernels of the benchmark suite (issue 11: elementwise_dup, pairwise)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from test_ad_helpers import status

import gpuad
from gpuad.ad import differentiate
from gpuad.ad.emit import SourceLine, fold_zero_inits, hoist_shadow_reads, merge_shadow_increments, render
from gpuad.ad.typing import jit_derivative
from gpuad.api import Const, Duplicated, Reverse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark cases

Z = "np.float32(0.0)"


# -- fold_zero_inits -------------------------------------------------------------

def test_a_zeroed_float32_adjoint_is_assigned_at_its_first_increment():
    code = [f"d_a = {Z}", f"d_b = {Z}", "y = 1", "d_a += guarded_mul(d_r, c)", "d_b -= d_a",
            "d_a += d_b"]
    assert fold_zero_inits(code) == ["y = 1", "d_a = guarded_mul(d_r, c)", "d_b = -d_a", "d_a += d_b"]


def test_a_subtracted_expression_is_negated_whole():
    assert fold_zero_inits([f"d_a = {Z}", "d_a -= x * y"]) == ["d_a = -(x * y)"]


@pytest.mark.parametrize("code", [
    ["d_a = 0.0", "d_a += x"],  # float64 zero: dropping it could narrow the variable to float32
    [f"d_a = {Z}", ("for k in range(n):", ["d_a += x"])],  # first use in a loop: accumulates
    [f"d_a = {Z}", ("if c:", ["d_a += x"])],  # only on one path
    [f"d_a = {Z}", "d_a += d_a * x"],  # reads itself
    [f"d_a = {Z}", "y = d_a", "d_a += x"],  # read first
    [f"d_a = {Z}", "d_a *= x"],
])
def test_a_zero_that_is_read_stays(code):
    assert fold_zero_inits(code) == code


# -- merge_shadow_increments -----------------------------------------------------

def test_increments_of_one_element_become_one_read_add_store_in_the_same_order():
    code = ["d_x[i] += d_1", SourceLine(3, "x"), "d_2 = guarded_mul(d_r, math.cos(t))",
            "d_x[i] += d_2", "d_3 = -d_2", "d_x[i] += d_3 * c"]
    assert merge_shadow_increments(code) == [SourceLine(3, "x"), "d_2 = guarded_mul(d_r, math.cos(t))",
                                             "d_3 = -d_2", "d_x[i] = d_x[i] + d_1 + d_2 + (d_3 * c)"]


@pytest.mark.parametrize("between", [
    "y = d_x[j]",  # reads the shadow
    "d_y[j] = 0.0",  # writes memory that may be the same
    "t = _tf[_spf]",  # reads memory
    "r = rev_g(x, d_x, s)",  # a call that may write
    "i = i + 1",  # another element
    "d_1 = 0.0",  # the first increment's value changed
    ("if c:", ["y = 1"]),
])
def test_increments_are_not_merged_across(between):
    code = ["d_x[i] += d_1", between, "d_x[i] += d_2"]
    assert merge_shadow_increments(code) == code


def test_different_elements_are_not_merged():
    code = ["d_x[i] += d_1", "d_x[j] += d_2"]
    assert merge_shadow_increments(code) == code


def test_render_tidies_nested_lists():
    lines = render([("for k in range(n):", [f"d_a = {Z}", "d_a += x", "d_x[k] += d_a", "d_x[k] += y"])])
    assert lines == ["for k in range(n):", "    d_a = x", "    d_x[k] = d_x[k] + d_a + y"]


# -- the numbers: an own-element shadow still accumulates (Enzyme), in float32 -----

def energy_at(x, i):
    return math.sin(x[i]) * x[i] ** 2 + math.exp(-x[i])


def test_own_element_shadow_is_read_added_and_stored_once_and_accumulates():
    x = np.linspace(-2, 2, 7).astype(np.float32)
    d = differentiate(energy_at, Reverse, (Duplicated, Const), (numba.typeof(x), numba.int64),
                      thread_ids={1}, exclusive={0})
    assert d.source.count("d_x[i]") == 2 and "atomic_add" not in d.source  # one read, one store
    fn = jit_derivative(d)
    dx = np.full(7, 0.25, np.float32)  # non-zero on entry: the gradient adds to it
    for i in range(7):
        fn(x, dx, i, status())
    xs = x.astype(np.float64)
    expected = 0.25 + np.cos(xs) * xs * xs + 2 * xs * np.sin(xs) - np.exp(-xs)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)
    # the same float32 additions in the same order as three separate increments
    t0 = x
    d_t5 = -np.exp(-t0)
    d_t2 = (np.sin(t0) * (np.float32(2) * t0)).astype(np.float32)
    d_t0 = (t0 ** 2 * np.cos(t0)).astype(np.float32)
    ref = ((np.float32(0.25) + d_t5) + d_t2) + d_t0
    np.testing.assert_allclose(dx, ref, rtol=2e-6)


# -- the PTX against the suite's hand-written kernels -----------------------------

def _ptx(case_name: str):
    from numba import cuda

    from benchmarks.cases import all_cases
    from gpuad.compiler.numba_adapter import compute_capability

    case = all_cases()[case_name]
    sizes = case.sizes(1, True)
    arrays = {**case.inputs(sizes, np.random.default_rng(0)), **case.outputs(sizes)}
    mine, hand = case.gpuad(sizes), case.hand(sizes)
    ptx = mine.kernel.compile(*mine.arguments(arrays), arch="sm_90").ptx
    types = tuple(numba.typeof(a) for a in hand.arguments(arrays))
    with compute_capability((9, 0)):
        hand_ptx, _ = cuda.compile_ptx(hand.kernel.py_func, types, cc=(9, 0))
    return ptx, hand_ptx


def _count(pattern: str, ptx: str) -> int:
    return len(re.findall(pattern, ptx, re.M))


def test_elementwise_dup_gradient_touches_global_memory_as_the_hand_written_kernel():
    ptx, hand = _ptx("elementwise_dup")
    for pattern in (r"\bld\.global", r"\bst\.global", r"\b(atom|red)\."):
        assert _count(pattern, ptx) == _count(pattern, hand), pattern
    assert _count(r"\bst\.global", ptx) == 1


def _loops(ptx: str) -> list[str]:
    """The text of each loop: from a label to the branch back to it."""
    lines = ptx.splitlines()
    labels = {line.strip()[:-1]: k for k, line in enumerate(lines) if re.match(r"^\$\w+:$", line.strip())}
    loops = []
    for k, line in enumerate(lines):
        target = re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", line)
        if target and labels.get(target.group(1), k) < k:
            loops.append("\n".join(lines[labels[target.group(1)]:k + 1]))
    return loops


FMA, MUL, ADD = r"\bfma\.rn\.f32\b", r"\bmul(\.rn)?\.f32\b", r"\b(add|sub)(\.rn)?\.f32\b"


def test_forward_tangent_updates_fuse_into_fmas_as_in_the_hand_written_loop():
    """`t_q + guarded_mul(t_p, h)` is `guarded_add_mul(t_q, t_p, h)`: a select after the
    multiply-add, so NVVM fuses it (a select between the multiply and the add kept them apart:
    17 fma, 12 mul, 4 add against the hand-written 19, 10, 2)."""
    ptx, hand = _ptx("ode_forward")
    (loop,), (hand_loop,) = _loops(ptx), _loops(hand)
    assert _count(FMA, loop) == _count(FMA, hand_loop)
    assert _count(MUL, loop) + _count(ADD, loop) <= _count(MUL, hand_loop) + _count(ADD, hand_loop)


def test_a_merged_shadow_update_fuses_its_guarded_terms():
    ptx, hand = _ptx("elementwise_dup")
    assert _count(FMA, ptx) >= _count(FMA, hand)
    assert _count(MUL, ptx) + _count(ADD, ptx) <= _count(MUL, hand) + _count(ADD, hand)


ADD_ZERO = r"\b(add|sub)\.f32\s[^;]*0f00000000;|\bfma\.rn\.f32\s[^;]*0f00000000;"


@pytest.mark.parametrize("case", ["pairwise_naive", "pairwise_tiled", "elementwise_dup", "stencil_scatter"])
def test_zeroed_adjoints_add_no_zero_in_the_ptx(case):
    ptx, hand = _ptx(case)
    assert _count(ADD_ZERO, hand) == 0
    assert _count(ADD_ZERO, ptx) == 0


def test_the_kernel_of_the_suite_still_gives_its_gradient_on_the_cpu_target():
    from benchmarks.cases.elementwise import grad_energy_array

    x = np.linspace(-2, 2, 100).astype(np.float32)
    dx = np.full(100, 1.5, np.float32)
    gpuad.kernel(grad_energy_array, target="cpu")[4, 32](x, dx)
    xs = x.astype(np.float64)
    np.testing.assert_allclose(dx, 1.5 + np.cos(xs) * xs * xs + 2 * xs * np.sin(xs) - np.exp(-xs),
                               rtol=1e-5, atol=1e-5)


# -- hoist_shadow_reads: a shadow element an update reads, read early ------------------

UPDATE = "d_x[i] = guarded_add_mul(d_x[i] + d_5, d_3, math.cos(t0))"
EARLY_UPDATE = "d_x[i] = guarded_add_mul(_e0 + d_5, d_3, math.cos(t0))"


def test_a_shadow_read_moves_above_loads_and_math_to_the_top():
    work = ["t0 = x[i]", "t1 = math.sin(t0)", "d_3 = guarded_mul(d_r, t1)"]
    code = ["# forward sweep", SourceLine(3, "x"), *work, UPDATE]
    early = ["# forward sweep", SourceLine(3, "x"), "_e0 = d_x[i]", *work, EARLY_UPDATE]
    assert hoist_shadow_reads(code) == early


@pytest.mark.parametrize("barrier", [
    "out[j] = 5.0",  # a primal array: may be the shadow under another name
    "v[0] = t",  # a view
    "_tf[_spf] = t",  # even the tape
    "d_x[j] = t",  # a store to the shadow, maybe to the same element
    "atomic_add(d_x, j, t)",
    "_r0, _spf = rev_g(x, d_x, _spf)",  # a call that may store
    "i = i + 1",  # another element
    "d_x = d_y",  # another array
    ("if c:", ["y = 1"]),
])
def test_a_shadow_read_stays_below_what_may_store_or_rebind_its_element(barrier):
    code = ["t0 = x[i]", barrier, "t1 = math.sin(t0)", UPDATE]
    early = ["t0 = x[i]", barrier, "_e0 = d_x[i]", "t1 = math.sin(t0)", EARLY_UPDATE]
    assert hoist_shadow_reads(code) == early


def test_an_increment_reads_early_as_an_assignment():
    code = ["t = math.exp(y)", "d_x[i] += t * c", "s = x[k]", "d_x[k] -= s + t"]
    early = ["_e0 = d_x[i]", "t = math.exp(y)", "d_x[i] = _e0 + t * c",
             "_e1 = d_x[k]", "s = x[k]", "d_x[k] = _e1 - (s + t)"]  # d_x[k]: below the store to d_x[i]
    assert hoist_shadow_reads(code) == early


@pytest.mark.parametrize("code", [
    ["a = b * c", "d_x[i] += a"],  # nothing slow to pass
    ["t = math.sin(y)", "d_x[idx[k]] += t"],  # an index read from memory
    ["t = math.sin(y)", "d_x[1:3] += t"],  # a slice: a view, not a value
    ["t = math.sin(y)", "d_x[i] = t"],  # a store that reads nothing
    ["t = math.sin(y)", "x[i] += t"],  # not a shadow
    ["t = math.sin(y)", "d_x[i] += g(t)"],  # a call that may store, in the update itself
])
def test_nothing_moves_where_nothing_is_gained_or_it_is_not_a_read_of_one_element(code):
    assert hoist_shadow_reads(code) == code


def test_reads_move_inside_each_block_never_out_of_it():
    body = ["k = _k0", "t = x[k]", "d_x[i] += t"]
    assert render([("for _k0 in range(n):", body)]) == [
        "for _k0 in range(n):", "    _e0 = d_x[i]", "    k = _k0", "    t = x[k]", "    d_x[i] = _e0 + t"]


def test_the_elementwise_dup_derivative_reads_its_shadow_before_sin():
    x = np.zeros(4, np.float32)
    source = differentiate(energy_at, Reverse, (Duplicated, Const), (numba.typeof(x), numba.int64),
                           thread_ids={1}, exclusive={0}).source
    assert source.index("_e0 = d_x[i]") < source.index("= math.sin(")


def _branches_before_last_global_load(ptx: str) -> int:
    body = ptx[:ptx.rindex("ld.global")]
    return _count(r"^\s*@%p\d+ bra\b", body)


def test_elementwise_dup_loads_its_shadow_before_sins_branches_as_the_hand_written_kernel():
    """The hand-written `dxs[i] += ...` loads dxs[i] first, only the bounds check before it;
    the generated update loaded it after sin's and cos's range reductions (7 branches)."""
    ptx, hand = _ptx("elementwise_dup")
    assert _branches_before_last_global_load(hand) == 1
    assert _branches_before_last_global_load(ptx) == _branches_before_last_global_load(hand)


# -- early reads against aliasing: the numbers on the cpu target ---------------------

def _own_element(fn, activities, argtypes, thread_ids):
    """`fn`'s reverse derivative with the shadow of argument 0 updated without atomics at `thread_ids`."""
    d = differentiate(fn, Reverse, activities, argtypes, thread_ids=thread_ids, exclusive={0})
    assert "atomic_add" not in d.source  # plain read-add-stores: what an early read could get wrong
    return d


def write_then_square(x, out, i, j):
    out[j] = 5.0
    return math.sin(x[i]) * x[i]


@pytest.mark.parametrize("alias", ["same", "view"])
def test_a_primal_store_into_the_shadow_under_another_name_is_read_back(alias):
    """`out` is the shadow itself (or a view of it): the update must read what `out[j] = 5.0`
    stored, so the read stays below that store (read above it, the 5.0 is lost)."""
    x = np.linspace(-1, 1, 6).astype(np.float32)
    f32 = numba.typeof(x)
    argtypes = (f32, f32, numba.int64, numba.int64)
    d = _own_element(write_then_square, (Duplicated, Const, Const, Const), argtypes, {2})
    fn = jit_derivative(d)
    for i in range(1, 6):
        dx = np.full(6, 0.5, np.float32)
        out, j = (dx, i) if alias == "same" else (dx[1:], i - 1)
        fn(x, dx, out, i, j, status())
        xi = np.float64(x[i])
        assert dx[i] == pytest.approx(5.0 + np.cos(xi) * xi + np.sin(xi), rel=1e-6)
    assert d.source.index("out[j] = 5.0") < d.source.index("_e0 = d_x[i]") < d.source.index("= math.sin(")


def product(x, i, j):
    return math.sin(x[i]) * math.exp(x[j])


def test_two_updates_of_one_element_under_two_index_names_both_count():
    """`i` and `j` are both the thread id, so `d_x[i]` and `d_x[j]` are one element: the second
    update reads after the first one's store."""
    x = np.linspace(-1, 1, 5).astype(np.float32)
    d = _own_element(product, (Duplicated, Const, Const), (numba.typeof(x), numba.int64, numba.int64), {1, 2})
    fn = jit_derivative(d)
    dx = np.full(5, 0.25, np.float32)
    for i in range(5):
        fn(x, dx, i, i, status())
    xs = x.astype(np.float64)
    np.testing.assert_allclose(dx, 0.25 + (np.cos(xs) + np.sin(xs)) * np.exp(xs), rtol=1e-5)


def looped(x, i, n):
    s = 0.0
    for k in range(n):
        s += math.sin(x[i] * k)
    return s


def test_an_update_in_a_loop_reads_each_iterations_sum():
    """The reverse loop updates `d_x[i]` every iteration: each iteration's read must see the last
    iteration's store (a read moved out of the loop would keep only the last term)."""
    x = np.linspace(-1, 1, 5).astype(np.float32)
    d = _own_element(looped, (Duplicated, Const, Const), (numba.typeof(x), numba.int64, numba.int64), {1})
    fn = jit_derivative(d)
    dx = np.full(5, 0.25, np.float32)
    for i in range(5):
        fn(x, dx, i, 6, status())
    xs, k = x.astype(np.float64)[:, None], np.arange(6)[None, :]
    np.testing.assert_allclose(dx, 0.25 + (np.cos(xs * k) * k).sum(axis=1), rtol=1e-5, atol=1e-6)
