"""Shared shadows reduced per block (`gpuad.targets.block_shadows`): which kernels qualify, the
generated wrapper, and (on a GPU) that the numbers do not change."""
import re

import numpy as np
import pytest
from test_warp_atomics import horner, horner_coefficient_gradient, reference_horner_dc, two_arrays_one_index

import gpuad
from gpuad import Const, Duplicated, Forward, Reverse, ReverseWithPrimal, autodiff
from gpuad.targets import block_shadows


def stores(c, x):
    c[0] = x  # writes memory: its reverse sweep reads and zeroes d_c[0]
    return c[1] * x


def reads_its_shadow(x, c, dc, out):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        autodiff(Reverse, horner, Duplicated(c, dc), Const(x[i]), Const(4))
        out[i] = dc[0]  # sees the partial sums: no copy


def forward_tangent(x, c, tc, out):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        (t,) = autodiff(Forward, horner, Duplicated(c, tc), Const(x[i]), Const(4))
        out[i] = t  # tc is read, not accumulated: no copy


def writes_memory(x, c, dc):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        autodiff(Reverse, stores, Duplicated(c, dc), Const(x[i]))


def element_shadow(x, c, dc):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        autodiff(Reverse, horner, Duplicated(c[i:], dc[i:]), Const(x[i]), Const(2))


def with_primal(x, c, dc, out):
    i = gpuad.thread_index()
    if i < x.shape[0]:
        _, value = autodiff(ReverseWithPrimal, horner, Duplicated(c, dc), Const(x[i]), Const(4))
        out[i] = value


def declares_shared_memory(x, c, dc):
    from numba import cuda

    scratch = cuda.shared.array(4, np.float64)
    i = gpuad.thread_index()
    if i < x.shape[0]:
        scratch[0] = 1.0
        autodiff(Reverse, horner, Duplicated(c, dc), Const(x[i]), Const(4))


@pytest.mark.parametrize("kernel,positions", [
    (horner_coefficient_gradient, (2,)),
    (two_arrays_one_index, (2, 4)),
    (with_primal, (2,)),
    (reads_its_shadow, ()),
    (forward_tangent, ()),
    (writes_memory, ()),
    (element_shadow, ()),
    (declares_shared_memory, ()),
])
def test_which_shadows_blocks_may_reduce(kernel, positions):
    assert block_shadows.reducible_shadows(kernel) == positions


def test_types_and_sizes_that_get_a_copy():
    from numba.core import types

    f32, f64 = types.float32[::1], types.float64[::1]
    assert block_shadows.eligible_types((1, 2), (f32, f32, f32)) == (1, 2)
    assert block_shadows.eligible_types((1, 2), (f32, f32, f64)) == ()  # one region, one dtype
    assert block_shadows.eligible_types((1,), (f32, types.float32[:, ::1])) == ()  # 1-D only
    assert block_shadows.eligible_types((1,), (f32, types.float32[:])) == ()  # contiguous only
    x, c = np.ones(8), np.ones(16)
    assert block_shadows.launch_bytes((1,), (x, np.zeros(16))) == 128
    assert block_shadows.launch_bytes((1,), (x, np.zeros(block_shadows.MAX_BYTES // 8 + 1))) == 0
    assert block_shadows.launch_bytes((1,), (c, c[2:6])) == 0  # the shadow is memory another argument has
    assert block_shadows.launch_bytes((), (x, c)) == 0


def test_block_reduced_kernel_accumulates_in_shared_memory():
    """The wrapper's PTX: dynamic shared memory, two barriers, the derivative's atomics on
    shared memory, and global atomics only in the flush (and the warp-combined fallback)."""
    from gpuad.compiler import driver
    from gpuad.targets import cuda as cuda_target

    kernel = gpuad.kernel(horner_coefficient_gradient)
    x, c = np.linspace(0, 1, 100, dtype=np.float32), np.ones(16, np.float32)
    argtypes = kernel.argument_types((x, c, np.zeros(16, np.float32), np.int64(16)))
    target = cuda_target.CudaTarget("sm_90", False, True, (2,))
    ptx = target.record(driver.compile(kernel.pyfunc, argtypes, target), kernel.pyfunc).ptx
    assert re.search(r"\.extern \.shared .*\[\]", ptx)
    assert ptx.count("bar.sync") == 2
    assert "atom.shared.add.f32" in ptx


def block_reduced_launches(kernel) -> list:
    return [plan.block_reduced is not None for plan in kernel._plans.values()]


@pytest.mark.gpu
@pytest.mark.parametrize("n_threads,block", [(1, 256), (100, 32), (4096, 256), (100_003, 128),
                                             (70_000, 1024)])
def test_block_reduced_shared_coefficients_on_gpu(n_threads, block):
    x = np.linspace(-1, 1, n_threads)
    c, dc = np.ones(16), np.full(16, 0.25)  # the shadow's own value is kept and added to
    kernel = gpuad.kernel(horner_coefficient_gradient, target="cuda")
    kernel.launch(n_threads, x, c, dc, 16, block=block)
    assert block_reduced_launches(kernel) == [True]
    np.testing.assert_allclose(dc, 0.25 + reference_horner_dc(x, 16), rtol=1e-12, atol=1e-9 * n_threads)


@pytest.mark.gpu
def test_two_shadows_share_the_block_region_on_gpu():
    n = 10_000
    x = np.linspace(0.5, 1.5, n)
    a, b, da, db = np.ones(1), np.ones(1), np.zeros(1), np.zeros(1)
    kernel = gpuad.kernel(two_arrays_one_index, target="cuda")
    kernel.launch(n, x, a, da, b, db)
    assert block_reduced_launches(kernel) == [True]
    np.testing.assert_allclose(da[0], np.sum(x[0::2]), rtol=1e-12)
    np.testing.assert_allclose(db[0], np.sum(x[1::2]), rtol=1e-12)


@pytest.mark.gpu
def test_a_shadow_over_the_size_bound_runs_without_copies_on_gpu():
    n, size = 10_000, block_shadows.MAX_BYTES // 8 + 1
    x = np.linspace(0.5, 1.5, n)
    a, b, da, db = np.ones(size), np.ones(size), np.zeros(size), np.zeros(size)
    kernel = gpuad.kernel(two_arrays_one_index, target="cuda")
    kernel.launch(n, x, a, da, b, db)
    assert block_reduced_launches(kernel) == [False]
    np.testing.assert_allclose(da[0], np.sum(x[0::2]), rtol=1e-12)
    np.testing.assert_allclose(db[0], np.sum(x[1::2]), rtol=1e-12)
    assert not da[1:].any() and not db[1:].any()


def test_a_launch_picks_the_variant_and_sizes_its_shared_memory(monkeypatch):
    """The launch path without a GPU (loading and launching stubbed): the block variant for a
    small shadow, with its bytes of dynamic shared memory; the plain one when it is too big."""
    from gpuad.targets import cuda as cuda_target

    loaded, launched = [], []
    monkeypatch.setattr(gpuad.Kernel, "_device_arch", lambda self: "sm_90")
    monkeypatch.setattr(cuda_target, "load_ptx", lambda ptx, *rest, **kw: loaded.append(ptx) or object())
    monkeypatch.setattr(cuda_target, "launch", lambda *args, **kw: launched.append(kw["shared_bytes"]))
    kernel = gpuad.kernel(horner_coefficient_gradient, target="cuda")
    x = np.linspace(0, 1, 1000, dtype=np.float32)
    kernel.launch(1000, x, np.ones(16, np.float32), np.zeros(16, np.float32), 16)
    big = block_shadows.MAX_BYTES // 4 + 1
    kernel.launch(1000, x, np.ones(big, np.float32), np.zeros(big, np.float32), 16)
    assert launched == [64, 0]
    assert ".extern .shared" in loaded[0] and ".extern .shared" not in loaded[1]
