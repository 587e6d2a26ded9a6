"""Shadow atomics that a warp combines (`gpuad.targets.warp_atomics`).

The PTX checks run anywhere (the CUDA pipeline needs no GPU); the numbers need one. Every GPU
case mixes the paths a warp can take: all lanes on one element (combined), lanes on different
elements (a scatter: each lane adds its own), partial warps (the launch's last warp, divergent
branches) and lanes that agree on an index but not on the array.
"""
import math
import re

import numpy as np
import pytest
from numba import cuda

import gpuad
from gpuad import Const, Duplicated, Reverse, autodiff


def horner(c, x, n):
    s = c[0]
    for k in range(1, n):
        s = s * x + c[k]
    return s


def horner_coefficient_gradient(x, c, dc, n):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        autodiff(Reverse, horner, Duplicated(c, dc), Const(x[i]), Const(n))


def reference_horner_dc(x, n):
    # d horner / d c[k] = x ** (n - 1 - k), summed over the threads
    x = x.astype(np.float64)
    return np.array([np.sum(x ** (n - 1 - k)) for k in range(n)])


def test_shared_shadow_atomics_are_combined_per_warp_in_the_ptx():
    x = np.linspace(0, 1, 100, dtype=np.float32)
    c, dc = np.ones(16, np.float32), np.zeros(16, np.float32)
    ptx = gpuad.kernel(horner_coefficient_gradient).compile(x, c, dc, np.int64(16)).ptx
    # the warp votes on one address, sums with five butterfly shuffles, then adds atomically
    assert "vote.sync.all.pred" in ptx
    assert len(re.findall(r"shfl\.sync\.bfly", ptx)) >= 5
    assert "atom.global.add.f32" in ptx


def test_a_scatter_pays_one_shuffle_and_one_atomic_per_update_in_the_ptx():
    # issue 11 (stencil_scatter 1.39x): every update had two atomic instructions (the combined
    # and the lane's own) and shuffled the whole 64-bit address before lanes on different
    # elements could leave. Now: one atomic per update, and they leave after one 32-bit shuffle.
    u, du = np.ones(64, np.float32), np.zeros(64, np.float32)
    ptx = gpuad.kernel(scatter_gradient).compile(u, du).ptx
    updates = ptx.count("activemask.b32")
    assert updates == 1  # u[(i + 1) % n]; the three of u[i] (the id) cannot combine: plain atomics
    assert len(re.findall(r"atom\.global\.add\.f32", ptx)) == 4
    before_first_vote = [part.split("vote.sync.all.pred")[0] for part in ptx.split("activemask.b32")[1:]]
    assert [part.count("shfl.sync.idx.b32") for part in before_first_vote] == [1] * updates


def two_arrays_one_index(x, a, da, b, db):
    # Even lanes add into da[0], odd lanes into db[0]: the same index, different arrays.
    i = gpuad.thread_index()
    if i < x.shape[0]:
        if i % 2 == 0:
            autodiff(Reverse, first_times, Duplicated(a, da), Const(x[i]))
        else:
            autodiff(Reverse, first_times, Duplicated(b, db), Const(x[i]))


def first_times(a, x):
    return a[0] * x


def neighbours(u, i):
    # lanes add into different elements: the scatter path
    return u[i] * u[i] + 0.5 * u[i] * u[(i + 1) % u.shape[0]]


def scatter_gradient(u, du):
    i = gpuad.thread_index()
    if i < u.shape[0]:
        autodiff(Reverse, neighbours, Duplicated(u, du), Const(i))


def grid_cell(w, x, i):
    # a 2-D shared shadow with a tuple index: lanes agree on the row, not always on the column
    return w[0, i % 3] * x + w[1, 0] * x * x


def grid_gradient(x, w, dw):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        autodiff(Reverse, grid_cell, Duplicated(w, dw), Const(x[i]), Const(i))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("n_threads", [1, 31, 32, 1000, 4096, 100_003])
def test_shared_coefficients_gradient_on_gpu(dtype, rtol, n_threads):
    x = np.linspace(-1, 1, n_threads).astype(dtype)
    c, dc = np.ones(16, dtype), np.zeros(16, dtype)
    gpuad.kernel(horner_coefficient_gradient, target="cuda").launch(n_threads, x, c, dc, 16)
    np.testing.assert_allclose(dc, reference_horner_dc(x, 16), rtol=rtol, atol=rtol * n_threads)


@pytest.mark.gpu
@pytest.mark.parametrize("n_threads", [32, 1000, 65_536])
def test_same_index_different_arrays_are_not_combined(n_threads):
    x = np.linspace(0.5, 1.5, n_threads)
    a, b, da, db = np.ones(1), np.ones(1), np.zeros(1), np.zeros(1)
    gpuad.kernel(two_arrays_one_index, target="cuda").launch(n_threads, x, a, da, b, db)
    np.testing.assert_allclose(da[0], np.sum(x[0::2]), rtol=1e-12)
    np.testing.assert_allclose(db[0], np.sum(x[1::2]), rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [33, 4096])
def test_scatter_into_different_elements_on_gpu(n):
    u = np.linspace(-1, 2, n)
    du = np.zeros(n)
    gpuad.kernel(scatter_gradient, target="cuda").launch(n, u, du)
    expected = 2 * u + 0.5 * np.roll(u, -1) + 0.5 * np.roll(u, 1)
    np.testing.assert_allclose(du, expected, rtol=1e-12)


@pytest.mark.gpu
def test_two_dimensional_shadow_with_tuple_index_on_gpu():
    n = 10_000
    x = np.linspace(-1, 1, n)
    w, dw = np.ones((2, 3)), np.zeros((2, 3))
    gpuad.kernel(grid_gradient, target="cuda").launch(n, x, w, dw)
    expected = np.zeros((2, 3))
    for col in range(3):
        expected[0, col] = np.sum(x[np.arange(n) % 3 == col])
    expected[1, 0] = np.sum(x * x)
    np.testing.assert_allclose(dw, expected, rtol=1e-11, atol=1e-9)
    assert math.isfinite(dw.sum())


# -- lanes apart: an index that is the thread id plus a constant needs no combining ------------

def stencil_ptx(case_name: str) -> tuple[str, str]:
    """The PTX of a suite case's gpuad kernel and of its hand-written kernel (sm_90)."""
    import numba
    from numba import cuda

    from benchmarks.cases import all_cases
    from gpuad.compiler.numba_adapter import compute_capability

    case = all_cases()[case_name]
    sizes = case.sizes(1, True)
    arrays = {**case.inputs(sizes, np.random.default_rng(0)), **case.outputs(sizes)}
    mine, hand = case.gpuad(sizes), case.hand(sizes)
    ptx = mine.kernel.compile(*mine.arguments(arrays), arch="sm_90").ptx
    with compute_capability((9, 0)):
        hand_ptx, _ = cuda.compile_ptx(hand.kernel.py_func, tuple(map(numba.typeof, hand.arguments(arrays))),
                                       cc=(9, 0))
    return ptx, hand_ptx


WARP_WORK = [r"shfl\.sync", r"vote\.sync", r"activemask", r"atom\.global\.add"]


def test_stencil_scatter_updates_are_plain_atomics_as_in_the_hand_written_kernel():
    # issue 11 (stencil_scatter 1.39x): x[i] and x[right] (i + 1, periodic) differ in every lane
    # of a warp, yet each update paid an activemask, shuffles and votes before its atomic (14
    # shuffles, 4 votes). Now: the hand-written kernel's two atomics and nothing else.
    ptx, hand = stencil_ptx("stencil_scatter")
    counts = [len(re.findall(p, ptx)) for p in WARP_WORK]
    assert counts == [len(re.findall(p, hand)) for p in WARP_WORK] == [0, 0, 0, 2]


def pair_energy(x, a, b, c, out):
    # x[a]: lanes 2k and 2k + 1 meet; x[b]: wherever idx says; x[c]: a different element per lane
    return x[a] * x[b] + 0.5 * x[c] * x[c] + out[0] * x[a]


def test_indices_where_lanes_collide_keep_the_combining_atomic_in_the_ptx():
    x, dx, idx = np.ones(65, np.float32), np.zeros(65, np.float32), np.zeros(65, np.int64)
    record = gpuad.kernel(colliding_lanes).compile(x, dx, idx, np.ones(1, np.float32))
    ptx = record.ptx
    (job,) = record.jobs
    source = record.adjoint_sources[job.id]
    # x[a] twice and x[b] combine; x[c] (i + 1) is a plain atomic (merged into one update or not)
    assert len(re.findall(r"\batomic_add\(d_x", source)) == 3
    assert len(re.findall(r"\batomic_add_distinct\(d_x", source)) >= 1
    assert ptx.count("activemask.b32") == 3
    assert ptx.count("vote.sync.all.pred") >= 3


def colliding_inputs(n, dtype):
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 1.0, n + 1).astype(dtype)  # x[i + 1] exists for the last thread
    idx = rng.integers(0, min(4, n + 1), n + 1)  # most lanes of a warp on four elements
    return x, idx, np.array([0.25], dtype)


def colliding_expected(x, idx, out):
    n = x.shape[0] - 1
    i = np.arange(n)
    x64 = x.astype(np.float64)
    expected = np.zeros(n + 1)
    np.add.at(expected, i // 2, x64[idx[:n]] + out[0])
    np.add.at(expected, idx[:n], x64[i // 2])
    np.add.at(expected, i + 1, x64[i + 1])
    return expected


def colliding_kernel_launch(target, n, dtype):
    x, idx, out = colliding_inputs(n, dtype)
    dx = np.zeros(n + 1, dtype)
    gpuad.kernel(colliding_lanes, target=target).launch(n, x, dx, idx, out)
    return dx, colliding_expected(x, idx, out)


def colliding_lanes(x, dx, idx, out):
    i = gpuad.thread_index()
    if i < x.shape[0] - 1:
        autodiff(Reverse, pair_energy, Duplicated(x, dx), i // 2, idx[i], i + 1, Const(out))


@pytest.mark.parametrize("n", [1, 33, 200])
def test_colliding_and_distinct_lanes_on_the_cpu_target(n):
    dx, expected = colliding_kernel_launch("cpu", n, np.float64)
    np.testing.assert_allclose(dx, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 31, 32, 1000, 100_003])
def test_colliding_and_distinct_lanes_on_gpu(dtype, n):
    dx, expected = colliding_kernel_launch("cuda", n, dtype)
    # the four crowded elements sum ~n/4 terms of size <= 1.25 in any order: n eps bounds the error
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(dx, expected, rtol=8 * eps, atol=4 * n * eps)


def periodic_scatter(x, dx):
    i = cuda.grid(1)
    n = x.shape[0]
    if i < n:
        right = i + 1 if i < n - 1 else 0
        left = (i - 1) % n
        autodiff(Reverse, three_bonds, Duplicated(x, dx), left, i, right, i - 1 + 1)


def three_bonds(x, a, b, c, d):
    return x[a] * x[b] + x[b] * x[c] * x[d]


def periodic_expected(x):
    # thread i: x[i-1] x[i] + x[i]^2 x[i+1] (periodic; d = i - 1 + 1 = i)
    left, right = np.roll(x, 1), np.roll(x, -1)
    n = x.shape[0]
    i = np.arange(n)
    expected = np.zeros(n)
    np.add.at(expected, (i - 1) % n, x)
    np.add.at(expected, i, left + 2 * x * right)
    np.add.at(expected, (i + 1) % n, x * x)
    return expected


def test_periodic_neighbours_are_plain_atomics_in_the_ptx():
    x, dx = np.ones(64, np.float32), np.zeros(64, np.float32)
    ptx = gpuad.kernel(periodic_scatter).compile(x, dx).ptx
    assert [len(re.findall(p, ptx)) for p in WARP_WORK[:3]] == [0, 0, 0]
    assert len(re.findall(r"atom\.global\.add", ptx)) >= 3


@pytest.mark.parametrize("n", [2, 40])
def test_periodic_neighbours_on_the_cpu_target(n):
    x = np.linspace(-1.0, 1.5, n)
    dx = np.zeros(n)
    gpuad.kernel(periodic_scatter, target="cpu").launch(n, x, dx)
    np.testing.assert_allclose(dx, periodic_expected(x), rtol=1e-13, atol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [2, 31, 33, 4096, 100_003])
def test_periodic_neighbours_on_gpu(n):
    x = np.linspace(-1.0, 1.5, n)
    dx = np.zeros(n)
    gpuad.kernel(periodic_scatter, target="cuda").launch(n, x, dx)
    np.testing.assert_allclose(dx, periodic_expected(x), rtol=1e-12, atol=1e-12)
