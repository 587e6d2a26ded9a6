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
    assert updates == 4  # the four reads of u: three of u[i], one of u[(i + 1) % n]
    assert len(re.findall(r"atom\.global\.add\.f32", ptx)) == updates
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
