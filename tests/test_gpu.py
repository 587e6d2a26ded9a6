"""The cuda target on a real GPU: same kernels, same numbers as the cpu target."""
import numpy as np
import pytest
from test_kernel import forward_kernel, nested, own_gradient, squared_sine, squared_sine_gradient, twice

import gpuad
import gpuad.errors
from gpuad.examples import grad_f

pytestmark = pytest.mark.gpu


def inputs(n=1000, dtype=np.float64):
    return (np.linspace(-2.0, 2.0, n, dtype=dtype), np.linspace(0.5, 1.5, n, dtype=dtype),
            np.zeros(n, dtype=dtype))


@pytest.mark.parametrize("body", [grad_f.pyfunc, twice, nested])
def test_cuda_matches_cpu(body):
    on_gpu, on_cpu = inputs(), inputs()
    gpuad.kernel(body, target="cuda").launch(1000, *on_gpu)
    gpuad.kernel(body, target="cpu").launch(1000, *on_cpu)
    assert np.any(on_cpu[2] != 0)
    np.testing.assert_allclose(on_gpu[2], on_cpu[2], rtol=1e-13, atol=1e-15)


def test_forward_mode_on_gpu():
    xs, ys, out = inputs()
    primal = np.zeros_like(xs)
    gpuad.kernel(forward_kernel, target="cuda")[4, 256](xs, ys, out, primal)
    np.testing.assert_allclose(out, np.cos(xs) * ys, rtol=1e-13)
    np.testing.assert_allclose(primal, np.sin(xs) * ys, rtol=1e-13)


def test_float32_on_gpu():
    xs, ys, dxs = inputs(dtype=np.float32)
    gpuad.kernel(grad_f.pyfunc, target="cuda").launch(1000, xs, ys, dxs)
    np.testing.assert_allclose(dxs, np.cos(xs) * ys, rtol=1e-5)


def test_device_arrays_are_not_copied():
    from numba import cuda

    xs, ys, dxs = inputs()
    d_out = cuda.to_device(dxs)
    gpuad.kernel(grad_f.pyfunc, target="cuda")[4, 256](cuda.to_device(xs), cuda.to_device(ys), d_out)
    np.testing.assert_allclose(d_out.copy_to_host(), np.cos(xs) * ys, rtol=1e-13)


def test_cupy_arrays():
    cp = pytest.importorskip("cupy")
    xs, ys, dxs = inputs()
    out = cp.asarray(dxs)
    gpuad.kernel(grad_f.pyfunc, target="cuda").launch(1000, cp.asarray(xs), cp.asarray(ys), out)
    np.testing.assert_allclose(cp.asnumpy(out), np.cos(xs) * ys, rtol=1e-13)


def test_default_target_is_cuda_with_a_gpu(monkeypatch):
    from gpuad.targets import default_target

    monkeypatch.delenv("GPUAD_TARGET", raising=False)
    assert default_target() == "cuda"


def test_dynamic_loop_gradient_and_tape_overflow_on_gpu():
    from test_kernel import grad_orbit, orbit_gradient

    xs, ys, dxs = inputs()
    k = gpuad.kernel(grad_orbit, target="cuda", tape_capacity=16)
    k.launch(1000, xs, ys, dxs, 10)
    np.testing.assert_allclose(dxs, [orbit_gradient(x, y, 10) for x, y in zip(xs, ys)], rtol=1e-12)
    before = dxs.copy()
    with pytest.raises(gpuad.errors.TapeOverflow, match="needed 20 tape entries .* holds 16"):
        k.launch(1000, xs, ys, dxs, 20)
    assert np.array_equal(dxs, before)


def test_overflow_hint_covers_the_thread_that_needs_most_on_gpu():
    from test_kernel import per_thread_orbit

    n = 1000
    xs, ws, dxs = np.full(n, 0.5), np.full(n, 0.9), np.zeros(n)
    steps = (np.arange(n) % 37 + 1).astype(np.int64)
    with pytest.raises(gpuad.errors.TapeOverflow) as info:
        gpuad.kernel(per_thread_orbit, target="cuda", tape_capacity=16).launch(n, xs, ws, dxs, steps)
    assert "tape_capacity=37" in str(info.value)


def test_thread_own_shadows_on_gpu():
    n = 1 << 20
    x, dx = np.linspace(0.1, 2.0, n), np.zeros(n)
    k = gpuad.kernel(own_gradient, target="cuda")
    k.launch(n, x, dx)
    np.testing.assert_allclose(dx, squared_sine_gradient(x), rtol=1e-13)
    assert all(c.drops_atomics for c in k._cuda.values())
    # Two rows of blocks: cuda.grid(1) repeats, so every element is updated
    # by two threads; the launch must take the variant that keeps atomics.
    dx[:] = 0.0
    k[(n // 256, 2), 256](x, dx)
    np.testing.assert_allclose(dx, 2.0 * squared_sine_gradient(x), rtol=1e-13)
    assert any(not c.drops_atomics for c in k._cuda.values())


def neighbours(x, i):
    return x[i] * x[i + 1]


def own_and_neighbour(x, dx, y, dy):
    i = gpuad.thread_index()
    if i < x.size - 1:
        gpuad.autodiff(gpuad.Reverse, squared_sine, gpuad.Duplicated(x, dx), i)
        gpuad.autodiff(gpuad.Reverse, neighbours, gpuad.Duplicated(y, dy), i)


def test_aliased_shadows_keep_their_atomics_on_gpu():
    from numba import cuda

    n = 1 << 20
    x = np.linspace(0.1, 2.0, n)
    y = np.linspace(-1.0, 1.0, n)
    k = gpuad.kernel(own_and_neighbour, target="cuda")
    shadow = cuda.to_device(np.zeros(n))
    k.launch(n, x, shadow, y, shadow)  # dx and dy are one array: not exclusive at run time
    expected = np.zeros(n)
    expected[:-1] += squared_sine_gradient(x[:-1])
    expected[:-1] += y[1:]
    expected[1:] += y[:-1]
    np.testing.assert_allclose(shadow.copy_to_host(), expected, rtol=1e-13, atol=1e-15)
    assert any(not c.drops_atomics for c in k._cuda.values())


def test_checkpointed_loop_on_gpu():
    from test_ad_checkpoint import check_long_loop_kernel

    check_long_loop_kernel("cuda", n_threads=2048)


@pytest.mark.parametrize("name", ["square_at_grid", "square_at_thread_index", "square_at_geometry"])
def test_differentiated_functions_read_the_thread_index_on_gpu(name):
    import test_kernel

    n = 100_000
    x, dx = np.linspace(0.5, 2.0, n), np.zeros(n)
    gpuad.kernel(test_kernel.square_kernel(getattr(test_kernel, name)), target="cuda").launch(n, x, dx)
    np.testing.assert_array_equal(dx, 2.0 * x)


@pytest.mark.parametrize("name", ["cross_kernel", "rotated_cross_kernel"])
def test_the_id_at_two_positions_keeps_atomics_on_gpu(name):
    """`d += m[i, k] * m[k, i]`: threads a and b both update element (a, b) of the shadow;
    without atomics updates are lost (dm would not be 2 m^T)."""
    import test_ad_site_facts

    k = test_ad_site_facts.check_cross_kernel(getattr(test_ad_site_facts, name), "cuda", 1024)
    assert not any(c.drops_atomics for c in k._cuda.values())
