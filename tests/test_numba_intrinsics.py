"""The intrinsics of generated code (`gpuad.compiler.numba_intrinsics`): `guarded_mul`'s value at
zeros, infinities and NaN on the cpu target, and what its lowering lets NVVM do with a product a
caller adds (an fma), down to the pairwise benchmark's inner loop against its hand-written kernel."""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_ad_emit import _count, _loops, _ptx

from gpuad.ad.primitives import guarded_mul
from gpuad.compiler import numba_intrinsics

VALUES = [0.0, -0.0, 1.5, -2.0, 1e-300, math.inf, -math.inf, math.nan]


def _same(a, b) -> bool:
    """Equal bit for bit where it matters: NaN is NaN, and a zero keeps its sign."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def test_the_cpu_intrinsic_gives_the_primitives_value_everywhere():
    from numba import njit

    intrinsic = numba_intrinsics.cpu_guarded_mul()

    @njit
    def compiled(a, b):
        return intrinsic(a, b)

    @njit
    def int_factor(a, b):
        return intrinsic(a, b)

    for a in VALUES:
        for b in VALUES:
            assert _same(compiled(a, b), guarded_mul(a, b)), (a, b)
    for a in (0, 3, -1):
        for b in (math.inf, 2.5, math.nan):
            assert _same(int_factor(a, b), guarded_mul(a, b)), (a, b)


def _device_ptx(fn, argtypes):
    from numba import cuda

    from gpuad.compiler.numba_adapter import compute_capability

    with compute_capability((9, 0)):
        ptx, _ = cuda.compile_ptx(fn, argtypes, cc=(9, 0))
    return ptx


def test_an_add_of_a_guarded_product_fuses_into_an_fma():
    """The select is on the partial (`a * (b if a != 0 else 0)`), so `c + guarded_mul(a, b)` is
    one fma: a select after the multiply kept the multiply and the add apart."""
    from numba import float32

    intrinsic = numba_intrinsics.cuda_guarded_mul()

    def kernel(out, a, b, c):
        out[0] = c[0] + intrinsic(a[0], b[0])

    ptx = _device_ptx(kernel, (float32[::1],) * 4)
    assert _count(r"\bfma\.rn\.f32\b", ptx) == 1
    assert _count(r"\b(add|sub|mul)(\.rn)?\.f32\b", ptx) == 0
    assert _count(r"\bselp\.f32\b", ptx) == 1


F32_ARITHMETIC = r"\b(add|sub|mul|fma\.rn|neg)(\.rn)?\.f32\b"


def _per_pair(ptx: str) -> tuple[float, float, float]:
    """(arithmetic, selects, compares) per pair in the loop that computes the most pairs
    (one `ex2` per pair: NVVM unrolls the j loop)."""
    loop = max(_loops(ptx), key=lambda text: _count(r"\bex2\.", text))
    pairs = _count(r"\bex2\.", loop)
    assert pairs > 0
    return (_count(F32_ARITHMETIC, loop) / pairs, _count(r"\bselp\.f32\b", loop) / pairs,
            _count(r"\bsetp\.\w+\.f32\b", loop) / pairs)


@pytest.mark.parametrize("case", ["pairwise_naive", "pairwise_tiled", "pairwise_split"])
def test_a_per_pair_autodiff_costs_the_hand_written_arithmetic_and_its_guards(case):
    """`autodiff(Reverse, pair, Active(xi), ...)` in the j loop: no more multiplies and adds than
    the hand-written `-(e + e) * dx` (x * x's two adjoint terms are one product of the doubled
    adjoint, and the caller's `fx + ax` fuses with it), and the zero-adjoint guards cost one compare
    and one select per returned adjoint. Before: 23 arithmetic instructions per pair against the
    hand-written 20 (now 18), and NVVM unrolled the naive and split loops 2 times instead of 4."""
    ptx, hand = _ptx(case)
    arithmetic, selects, compares = _per_pair(ptx)
    hand_arithmetic, hand_selects, _ = _per_pair(hand)
    assert hand_selects == 0
    assert arithmetic <= hand_arithmetic
    assert selects == 3 and compares == 1
    assert _count(r"\bex2\.", max(_loops(ptx), key=len)) >= _count(r"\bex2\.", max(_loops(hand), key=len))
    assert _count(r"\b(ld|st)\.local\b", ptx) == 0 and _count(r"\.f64\b", ptx) == 0


@pytest.mark.parametrize("case", ["pairwise_naive", "pairwise_split"])
def test_the_pairwise_gradient_on_the_cpu_target(case):
    """The benchmark kernel on the cpu target against the float64 reference, and with a particle
    at infinity: its pairs' exp(-inf) adjoints are zero and add nothing to the others' gradients
    (a doubled zero adjoint still guards its infinite partial)."""
    import gpuad
    from benchmarks.cases import THREADS, all_cases, blocks
    from benchmarks.cases import pairwise as P

    kernel = {"pairwise_naive": P.grad_naive, "pairwise_split": P.grad_split}[case]
    per_particle = P.SPLIT if case == "pairwise_split" else 1
    n = 40
    rng = np.random.default_rng(3)
    a = {name: rng.uniform(0.0, 2.5, n).astype(np.float32) for name in ("xs", "ys", "zs")}
    a["xs"][7] = np.inf
    g = {name: np.zeros(n, np.float32) for name in ("gx", "gy", "gz")}
    gpuad.kernel(kernel, target="cpu")[blocks(n * per_particle), THREADS](
        a["xs"], a["ys"], a["zs"], g["gx"], g["gy"], g["gz"])
    finite = np.arange(n) != 7
    ref = all_cases()[case].reference({"n": n - 1}, {k: v[finite] for k, v in a.items()})
    for name in ("gx", "gy", "gz"):
        assert np.all(np.isfinite(g[name][finite])), name
        np.testing.assert_allclose(g[name][finite], ref[name], rtol=1e-4, atol=1e-5)
