"""The spine end to end: record artefacts, jobs, linking, cpu-target results."""
import math

import numpy as np
import pytest
from numba import cuda

import gpuad
import gpuad.errors
from gpuad import Active, Const, Duplicated, Forward, Reverse, ReverseWithPrimal, autodiff
from gpuad.errors import LaunchError
from gpuad.examples import f, grad_f

MARKER = '@"gpuad.deferred_codegen"'


def central_difference(fn, x, *rest, h=1e-6):
    return (fn(x + h, *rest) - fn(x - h, *rest)) / (2 * h)


@pytest.fixture(scope="module")
def points():
    n = 64
    return np.linspace(-2.0, 2.0, n), np.linspace(0.5, 1.5, n), np.zeros(n)


@pytest.fixture(scope="module")
def record(points):
    return grad_f.compile(*points, target="cpu")


def test_record_shows_the_marker_before_link_and_not_after(record):
    assert record.ir_before_link.count(f"call i8* {MARKER}(i64 1)") == 1
    assert MARKER not in record.ir_after_link
    (job,) = record.jobs
    assert 'bitcast i32 ' in record.ir_after_link and f'@"{job.symbol}" to i8*' in record.ir_after_link


def test_linking_defines_exactly_the_job_function(record):
    assert record.linked_functions == [record.jobs[0].symbol]


def test_ptx_has_an_entry_and_the_record_the_stages(record):
    assert ".entry" in record.ptx and ".target sm_90" in record.ptx
    # The README's stage names, in its order; each stage of this kernel did some work.
    assert list(record.timings) == ["interpret", "differentiate", "lower", "link", "emit"]
    assert all(seconds > 0 for seconds in record.timings.values()), record.timings
    job = record.jobs[0]
    assert (job.function, job.mode, job.activities) == ("f", "Reverse", ("Active", "Active"))
    assert job.argument_types == ("float64", "float64")
    assert "def " in record.adjoint_sources[job.id]
    assert [(o.original, o.replacement) for o in record.overlays] == [
        ("gpuad.api.thread_index", "gpuad.targets.cuda.cuda_thread_index"),
        ("gpuad.api.autodiff", "gpuad.api.autodiff_deferred"),
    ]
    assert '"kernel_name": "grad_f"' in record.to_json()


def test_kernel_gradient_on_cpu_matches_finite_differences(points):
    xs, ys, dxs = (p.copy() for p in points)
    gpuad.kernel(target="cpu")(grad_f.pyfunc).launch(len(xs), xs, ys, dxs)
    expected = [central_difference(f, x, y) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(dxs, expected, rtol=1e-7, atol=1e-9)


def twice(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (a, _), = autodiff(Reverse, f, Active(xs[i]), Const(ys[i]))
        (b, _), = autodiff(Reverse, f, Active(xs[i]), Const(ys[i]))
        out[i] = a + b


def test_a_job_used_twice_is_compiled_and_linked_once(points):
    rec = gpuad.kernel(twice).compile(*points)
    (job,) = rec.jobs
    assert len(job.call_sites) == 2
    assert rec.ir_before_link.count(f"call i8* {MARKER}(i64 1)") == 2
    assert rec.linked_functions == [job.symbol]


def inner(y):
    return y * y * y


def outer(x, y):
    # The inner derivative depends only on the Const y: the adjoint of outer
    # keeps this autodiff call, so job 1's module carries a marker of its own.
    (dy,), = autodiff(Reverse, inner, Active(y))
    return x * dy


def nested(xs, ys, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _), = autodiff(Reverse, outer, Active(xs[i]), Const(ys[i]))
        out[i] = dx


def test_a_nested_job_links_and_runs(points):
    xs, ys, out = (p.copy() for p in points)
    k = gpuad.kernel(nested, target="cpu")
    rec = k.compile(xs, ys, out)
    assert [(j.function, j.parent) for j in rec.jobs] == [("outer", None), ("inner", 1)]
    assert MARKER not in rec.ir_after_link
    assert sorted(rec.linked_functions) == sorted(j.symbol for j in rec.jobs)
    k.launch(len(xs), xs, ys, out)
    np.testing.assert_allclose(out, 3 * ys**2, rtol=1e-12)


def forward_kernel(xs, ys, out, primal):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        df, p = autodiff(gpuad.ForwardWithPrimal, f, Duplicated(xs[i], 1.0), Const(ys[i]))
        out[i] = df
        primal[i] = p


def test_forward_mode_in_a_kernel(points):
    xs, ys, out = (p.copy() for p in points)
    primal = np.zeros_like(xs)
    gpuad.kernel(forward_kernel, target="cpu").launch(len(xs), xs, ys, out, primal)
    np.testing.assert_allclose(out, np.cos(xs) * ys, rtol=1e-12)
    np.testing.assert_allclose(primal, np.sin(xs) * ys, rtol=1e-12)


def test_float32_kernel_on_cpu():
    xs = np.linspace(-1, 1, 33, dtype=np.float32)
    ys = np.full(33, 2.0, dtype=np.float32)
    dxs = np.zeros(33, dtype=np.float32)
    k = gpuad.kernel(grad_f.pyfunc, target="cpu")
    assert k.compile(xs, ys, dxs).jobs[0].argument_types == ("float32", "float32")
    k[2, 32](xs, ys, dxs)
    np.testing.assert_allclose(dxs, np.cos(xs) * ys, rtol=1e-5)


def my_sin(x):
    return math.sin(x)


def my_fast_sin(x):
    return x - x * x * x / 6.0


def overlaid(xs, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = my_sin(xs[i])


def test_user_overlay_applies_on_its_target_only():
    gpuad.CPU.add(my_sin, my_fast_sin)
    try:
        xs, out = np.array([0.5]), np.zeros(1)
        gpuad.kernel(overlaid, target="cpu").launch(1, xs, out)
        assert out[0] == pytest.approx(0.5 - 0.125 / 6.0)
        rec = gpuad.kernel(overlaid).compile(xs, out)  # the record is the CUDA pipeline's
        assert "my_fast_sin" not in {o.replacement.rsplit(".", 1)[-1] for o in rec.overlays}
    finally:
        gpuad.CPU.remove(my_sin)


def test_adding_an_overlay_recompiles_kernels_that_were_compiled_before():
    k = gpuad.kernel(overlaid, target="cpu")
    xs, out = np.array([0.5]), np.zeros(1)
    k.launch(1, xs, out)
    assert out[0] == pytest.approx(math.sin(0.5))
    gpuad.CPU.add(my_sin, my_fast_sin)
    try:
        k.launch(1, xs, out)
        assert out[0] == pytest.approx(0.5 - 0.125 / 6.0)
    finally:
        gpuad.CPU.remove(my_sin)
    k.launch(1, xs, out)
    assert out[0] == pytest.approx(math.sin(0.5))


def cuda_style_indices(xs, out):
    i = cuda.threadIdx.x + cuda.blockIdx.x * cuda.blockDim.x
    if i < xs.shape[0]:
        out[i] = i + 100 * cuda.gridDim.x + xs[i] / xs[0]


def test_cuda_thread_indices_are_emulated_on_cpu():
    xs, out = np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.zeros(5)
    gpuad.kernel(cuda_style_indices, target="cpu")[3, 2](xs, out)
    # Division by zero follows the GPU: inf/nan, not ZeroDivisionError.
    assert np.isnan(out[0]) and np.all(np.isinf(out[1:]))
    xs[0] = 1.0
    gpuad.kernel(cuda_style_indices, target="cpu")[3, 2](xs, out)
    np.testing.assert_array_equal(out, np.arange(5) + 300 + xs)


def test_host_autodiff_matches_the_derivative():
    (dx, dy), = autodiff(Reverse, f, Active(1.0), Active(2.0))
    assert dx == pytest.approx(math.cos(1.0) * 2.0, rel=1e-12)
    assert dy == pytest.approx(math.sin(1.0), rel=1e-12)
    (dx, dy), primal = autodiff(ReverseWithPrimal, f, Active(1.0), Const(2.0))
    assert dy is None and primal == pytest.approx(math.sin(1.0) * 2.0)
    (df,) = autodiff(Forward, f, Duplicated(1.0, 1.0), Const(2.0))
    assert df == pytest.approx(math.cos(1.0) * 2.0, rel=1e-12)


def test_launch_errors_name_the_kernel_and_what_to_do(points):
    with pytest.raises(LaunchError, match="takes 3 arguments, got 2"):
        grad_f.compile(points[0], points[1])
    with pytest.raises(LaunchError, match="argument 0 of kernel grad_f has type object") as info:
        grad_f.compile(object(), points[1], points[2])
    assert "hint" in str(info.value)
    with pytest.raises(LaunchError, match=r"grad_f\[blocks, threads\]"):
        grad_f(*points)


def test_default_target_follows_the_environment(monkeypatch):
    from gpuad.targets import default_target

    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    assert default_target() == "cpu"
    monkeypatch.setenv("GPUAD_TARGET", "tpu")
    with pytest.raises(LaunchError, match="GPUAD_TARGET='tpu' is not a gpuad target") as info:
        default_target()
    assert "set GPUAD_TARGET to cuda or cpu" in info.value.hint


def test_the_cuda_target_without_a_gpu_is_a_launch_error(monkeypatch):
    """No GPU or driver: a LaunchError saying to use the cpu target, not numba's CudaSupportError."""
    import numpy as np

    import gpuad
    from gpuad.compiler import numba_adapter

    if numba_adapter.gpu_available():
        pytest.skip("this machine has a GPU")
    kernel = gpuad.kernel(orbit_kernel, target="cuda")
    with pytest.raises(LaunchError, match="needs a CUDA GPU and driver") as info:
        kernel.launch(2, np.ones(2), np.zeros(2))
    assert "target='cpu'" in info.value.hint


def orbit_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d, _w, _s), = autodiff(Reverse, orbit, Active(xs[i]), Active(0.5), 3)
        dxs[i] = d


def orbit(x, w, steps):
    for _ in range(steps):
        x = math.sin(x) * w
    return x


def grad_orbit(xs, ws, dxs, steps):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _, _), = autodiff(Reverse, orbit, Active(xs[i]), Const(ws[i]), Const(steps))
        dxs[i] = dx


def orbit_gradient(x, w, steps):
    dx = 1.0
    for _ in range(steps):
        dx *= math.cos(x) * w
        x = math.sin(x) * w
    return dx


def test_tape_primitives_reach_numba_cuda_as_its_stubs(points):
    xs, ys, dxs = points
    rec = gpuad.kernel(grad_orbit, tape_capacity=16).compile(xs, ys, dxs, 10)
    assert "report_tape_overflow" in rec.adjoint_sources[1]
    assert "alloca [16 x double]" in rec.ir_after_link  # cuda.local.array, per thread


def test_dynamic_loop_gradient_and_tape_overflow_on_cpu(points):
    xs, ys, dxs = (p.copy() for p in points)
    k = gpuad.kernel(grad_orbit, target="cpu", tape_capacity=16)
    k.launch(len(xs), xs, ys, dxs, 10)
    np.testing.assert_allclose(dxs, [orbit_gradient(x, y, 10) for x, y in zip(xs, ys)], rtol=1e-12)
    before = dxs.copy()
    with pytest.raises(gpuad.errors.TapeOverflow, match="needed 20 tape entries .* holds 16") as info:
        k.launch(len(xs), xs, ys, dxs, 20)
    assert info.value.location.line == orbit.__code__.co_firstlineno + 1
    assert np.array_equal(dxs, before)


def test_a_second_compile_is_served_from_the_cache(points):
    k = gpuad.kernel(grad_f.pyfunc)
    first = k.compile(*points)
    assert k.compile(*points).ptx is first.ptx


def per_thread_orbit(xs, ws, dxs, steps):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _, _), = autodiff(Reverse, orbit, Active(xs[i]), Const(ws[i]), Const(steps[i]))
        dxs[i] = dx


def test_overflow_hint_covers_the_thread_that_needs_most():
    xs, ws, dxs = np.full(3, 0.5), np.full(3, 0.9), np.zeros(3)
    steps = np.array([20, 30, 25])
    with pytest.raises(gpuad.errors.TapeOverflow) as info:
        gpuad.kernel(per_thread_orbit, target="cpu", tape_capacity=16).launch(3, xs, ws, dxs, steps)
    assert "tape_capacity=30" in str(info.value)
    assert info.value.location.function == "orbit"
    gpuad.kernel(per_thread_orbit, target="cpu", tape_capacity=30).launch(3, xs, ws, dxs, steps)
    np.testing.assert_allclose(dxs, [orbit_gradient(0.5, 0.9, s) for s in steps], rtol=1e-12)


def constant_branch(x, y):
    c = 0.25
    if c > 0.0:
        x = math.sin(x)
    else:
        c = math.sin(x)
        x = math.cos(x)
    return x * y - c


def test_a_branch_on_a_constant_is_differentiated():
    # numba prunes branches whose test it can fold; the engine must keep both
    # sweeps of the derivative consistent (found by the random-program test).
    (dx, dy), = autodiff(Reverse, constant_branch, Active(0.3), Active(2.0))
    assert dx == pytest.approx(math.cos(0.3) * 2.0, rel=1e-14)
    assert dy == pytest.approx(math.sin(0.3), rel=1e-14)


# Two programs the random-program test found (verbatim): numba pruned the constant branch
# while typing the normalised function and left a variable undefined.
def constant_branch_early_return_in_loop(x, y, a, n):
    v0 = x
    v1 = y
    v2 = math.sin(x * y)
    v3 = 0.25
    if v3 > 0.0:
        v0 = math.sin(v0)
    else:
        for i1 in range(0):
            if float(i1) * 0.3 > 0.0:
                return v0 * v0 + a[0]
            v0 = math.sin(v0)
        v3 = math.sin(v0)
    return v0 * 0.7 + v1 * v2 - v3 + a[1] * 0.5


def constant_branch_early_return(x, y, a, n):
    v0 = x
    v1 = y
    v2 = math.sin(x * y)
    v3 = 0.25
    if v3 > 0.0:
        v0 = math.sin(v0)
    else:
        v0 = math.sin(v0)
        v3 = math.sin((math.sin(v0) + math.sin(v0)) * 0.5)
        if v0 > 0.0:
            return v0 * v0 + a[0]
    return v0 * 0.7 + v1 * v2 - v3 + a[1] * 0.5


@pytest.mark.parametrize("f", [constant_branch_early_return_in_loop, constant_branch_early_return])
def test_early_returns_in_a_pruned_branch_are_differentiated(f):
    x, y, a = 0.3, 0.5, np.array([0.1, 0.2, 0.3, 0.4])
    expected = (math.cos(x) * 0.7 + y * y * math.cos(x * y), math.sin(x * y) + x * y * math.cos(x * y))
    da = np.zeros(4)
    (dx, dy, _, _), = autodiff(Reverse, f, Active(x), Active(y), Duplicated(a, da), 2)
    assert (dx, dy) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_array_equal(da, [0.0, 0.5, 0.0, 0.0])
    (tx,) = autodiff(Forward, f, Duplicated(x, 1.0), Const(y), Duplicated(a, np.zeros(4)), 2)
    assert tx == pytest.approx(expected[0], rel=1e-14)


def untypable(x):
    return x * x


def calls_untypable(x):
    return untypable(x) * 2.0


def test_a_derivative_numba_cannot_compile_is_a_gpuad_refusal():
    r = gpuad.rule(untypable)

    @r.reverse
    def untypable_rev(x, d_out):
        return (object(),)  # numba cannot type this: the call must fail as a gpuad error

    try:
        with pytest.raises(gpuad.errors.LoweringError, match="numba could not compile the derivative") \
                as info:
            autodiff(Reverse, calls_untypable, Active(0.3))
    finally:
        gpuad.ad.rules.clear_rule(untypable)
    assert info.value.location.function == "calls_untypable"
    assert "rule of yours" in info.value.hint


def squared_sine(x, i):
    return math.sin(x[i]) * x[i]


def own_gradient(x, dx):
    i = cuda.grid(1)
    if i < x.size:
        autodiff(Reverse, squared_sine, Duplicated(x, dx), i)


def squared_sine_gradient(x):
    return np.cos(x) * x + np.sin(x)


def test_thread_own_shadows_are_updated_without_atomics():
    x, dx = np.linspace(0.1, 2.0, 300), np.zeros(300)
    kernel = gpuad.kernel(own_gradient)
    record = kernel.compile(x, dx)
    (job,) = record.jobs
    assert job.own_shadows == ("x",)
    assert "atomic_add" not in record.adjoint_sources[job.id]
    assert "atom.global.add" not in record.ptx
    # The variant a 2-D or aliased launch gets keeps the atomic.
    shared = kernel._compile_cuda(kernel.argument_types((x, dx)), "sm_90", False, thread_ownership=False)
    assert shared.record.jobs[0].own_shadows == ()
    assert "atom.global.add.f64" in shared.record.ptx
    gpuad.kernel(own_gradient, target="cpu").launch(300, x, dx)
    np.testing.assert_allclose(dx, squared_sine_gradient(x), rtol=1e-14)


def test_launches_that_break_ownership_are_told_apart():
    from gpuad.targets.cuda import ownership_holds

    a, b = np.zeros(10), np.zeros(10)
    assert ownership_holds(4, 256, (a, b, 3))
    assert ownership_holds((4, 1), (256, 1, 1), (a, b))
    assert ownership_holds(4, 256, (a[:5], a[5:]))  # disjoint views of one buffer
    assert not ownership_holds((4, 2), 256, (a, b))  # cuda.grid(1) repeats across rows
    assert not ownership_holds(4, (16, 16), (a, b))
    assert not ownership_holds(4, 256, (a, a))
    assert not ownership_holds(4, 256, (a, a[3:7]))
    assert not ownership_holds(4, 256, (a[::-1], a[4:6]))


def square_at_grid(x):
    i = cuda.grid(1)
    return x[i] * x[i]


def square_at_thread_index(x):
    i = gpuad.thread_index()
    return x[i] * x[i]


def square_at_geometry(x):
    i = cuda.threadIdx.x + cuda.blockIdx.x * cuda.blockDim.x
    return x[i] * x[i]


def square_kernel(f):
    def grad_square(x, dx):
        i = cuda.grid(1)
        if i < x.size:
            autodiff(Reverse, f, Duplicated(x, dx))
    return grad_square


@pytest.mark.parametrize("f", [square_at_grid, square_at_thread_index, square_at_geometry])
def test_differentiated_functions_may_read_the_thread_index(f):
    x, dx = np.linspace(0.5, 2.0, 300), np.zeros(300)
    kernel = gpuad.kernel(square_kernel(f), target="cpu")
    kernel.launch(300, x, dx, block=64)
    np.testing.assert_array_equal(dx, 2.0 * x)
    assert kernel.compile(x, dx).ptx  # and it lowers for the GPU


def atomic_inside(x, y):
    cuda.atomic.add(y, 0, x[0])
    return x[0]


def test_cuda_intrinsics_a_derivative_cannot_have_are_refused_at_their_line():
    with pytest.raises(gpuad.errors.UnsupportedConstruct, match="atomic updates inside") as info:
        autodiff(Reverse, atomic_inside, Duplicated(np.ones(2), np.zeros(2)), np.zeros(1))
    assert info.value.location.line == atomic_inside.__code__.co_firstlineno + 1


def test_the_gpuad_logger_reports_stages_and_cache_hits_at_debug(caplog):
    """`logging.getLogger("gpuad")`: what gpuad does, at DEBUG (nothing above it)."""
    import logging

    def logged_kernel(xs, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (d, _w, _s), = autodiff(Reverse, orbit, Active(xs[i]), Active(0.25), 2)
            dxs[i] = d

    kernel = gpuad.kernel(logged_kernel, target="cpu")
    with caplog.at_level(logging.DEBUG, logger="gpuad"):
        kernel.launch(2, np.ones(2), np.zeros(2))
        first = [r.getMessage() for r in caplog.records]
        caplog.clear()
        kernel.launch(2, np.ones(2), np.zeros(2))
        again = [r.getMessage() for r in caplog.records]
    assert any("cpu build cache miss" in m for m in first), first
    assert any("differentiated orbit (Reverse)" in m for m in first), first
    assert any("compiled by numba" in m for m in first), first
    assert any("new launch plan" in m for m in first), first
    # The repeated launch takes its plan: no build, no cache lookup (tests/test_launch_dispatch.py)
    assert not any("differentiated" in m or "launch plan" in m or "cache miss" in m for m in again), again
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
