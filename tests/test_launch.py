"""Launches are checked before anything runs, arrays are copied and written back safely,
and the cpu target is as strict as CUDA and memory-safe (issue 10, items 3, 4 and 8)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import cuda, float64

import gpuad
from gpuad import Const, Duplicated, Forward, Reverse, autodiff
from gpuad.errors import AutodiffCallError, GpuadError, LaunchError, LocalMemoryExceeded
from gpuad.targets.launch import may_write


def double(xs, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = 2.0 * xs[i]


def unguarded(xs, out):
    i = gpuad.thread_index()
    out[i] = 2.0 * xs[i]


# -- item 3: launch configurations -----------------------------------------

BAD_CONFIGS = [
    (2, "2"),
    ((1, 2048), "2048"),
    ((2.5, 2), "2.5"),
    ((1, 0), "0"),
    ((1, (32, 32, 2)), "2048 threads"),
    ((1, (1, 1, 65)), "65"),
    (((1, 70000), 32), "70000"),
    ((2**31, 32), str(2**31)),
    (((1, 1, 1, 1), 32), r"\(1, 1, 1, 1\)"),
    ((1, 32, 0, 0), "must be \\[blocks, threads\\]"),
    ((True, 32), "True"),
]


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize(("config", "named"), BAD_CONFIGS)
def test_a_bad_launch_configuration_is_refused_on_both_targets(target, config, named):
    k = gpuad.kernel(double, target=target)
    xs, out = np.ones(4), np.zeros(4)
    with pytest.raises(LaunchError, match=named) as info:
        k[config](xs, out)
    assert "kernel double" in str(info.value)
    assert not out.any()


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize(("n", "block", "named"), [
    (2**64, 256, str(2**64)), (2**63, 256, str(2**63)), (-5, 256, "-5"), (4.0, 256, "4.0"),
    (4, 0, "0"), (4, 2048, "2048"), (4, 2.5, "2.5"),
])
def test_a_bad_thread_count_or_block_is_refused_on_both_targets(target, n, block, named):
    xs, out = np.ones(4), np.zeros(4)
    with pytest.raises(LaunchError, match=named) as info:
        gpuad.kernel(double, target=target).launch(n, xs, out, block=block)
    assert "kernel double" in str(info.value)


def test_launch_without_the_thread_count_says_how_to_call_it():
    xs, out = np.ones(4), np.zeros(4)
    words = r"needs the number of threads n first.*array of shape \(4,\)"
    with pytest.raises(LaunchError, match=words) as info:
        gpuad.kernel(double, target="cpu").launch(xs, out)
    assert "kernel.launch(n, *arguments)" in info.value.hint


def test_more_blocks_than_cuda_allows_are_refused():
    # Only the cuda target here: were the check lost, the cpu target would run 2**62 threads.
    with pytest.raises(LaunchError, match=f"needs {2**62} blocks of 1 threads"):
        gpuad.kernel(double, target="cuda").launch(2**62, np.ones(4), np.zeros(4), block=1)


def test_launching_zero_threads_runs_nothing():
    xs, out = np.ones(4), np.zeros(4)
    gpuad.kernel(unguarded, target="cpu").launch(0, xs, out)
    assert not out.any()
    with pytest.raises(LaunchError, match="takes 2 arguments"):
        gpuad.kernel(unguarded, target="cpu").launch(0, xs)


def test_numpy_ints_and_tuples_are_launch_dimensions():
    xs, out = np.arange(10.0), np.zeros(10)
    k = gpuad.kernel(double, target="cpu")
    k[np.int64(4), (np.int32(3), 1, 1)](xs, out)
    np.testing.assert_array_equal(out, 2 * xs)
    out[:] = 0
    k.launch(np.uint8(10), xs, out, block=np.int16(4))
    np.testing.assert_array_equal(out, 2 * xs)


# -- item 4: arrays ----------------------------------------------------------

def test_a_read_only_input_is_not_written_back():
    xs, out = np.arange(6.0), np.zeros(6)
    xs.setflags(write=False)
    gpuad.kernel(double, target="cpu").launch(6, xs, out)
    np.testing.assert_array_equal(out, 2 * np.arange(6.0))


def test_writing_a_read_only_array_is_refused_as_cuda_refuses_it():
    xs, out = np.arange(6.0), np.zeros(6)
    out.setflags(write=False)
    with pytest.raises(GpuadError, match="readonly"):
        gpuad.kernel(double, target="cpu").launch(6, xs, out)


def scale_into(out, xs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = 3.0 * xs[i]


def test_one_array_passed_twice_shares_one_copy():
    a = np.arange(5.0)
    gpuad.kernel(scale_into, target="cpu").launch(5, a, a)
    np.testing.assert_array_equal(a, 3 * np.arange(5.0))
    b = np.arange(5.0)
    gpuad.kernel(scale_into, target="cpu").launch(5, b, b.view())  # another view, same memory
    np.testing.assert_array_equal(b, 3 * np.arange(5.0))


def test_overlapping_views_that_are_written_are_refused():
    a = np.arange(6.0)
    with pytest.raises(LaunchError, match="arguments 0 and 1 of kernel scale_into overlap"):
        gpuad.kernel(scale_into, target="cpu").launch(5, a[1:], a[:-1])
    np.testing.assert_array_equal(a, np.arange(6.0))
    out = np.zeros(3)
    gpuad.kernel(reads_two, target="cpu").launch(3, a[1:4], a[:3], out)  # only read: fine
    np.testing.assert_array_equal(out, [1.0, 3.0, 5.0])


def reads_two(xs, ys, out):
    i = gpuad.thread_index()
    if i < out.shape[0]:
        out[i] = xs[i] + ys[i]


def writes_row(grid, out):
    i = gpuad.thread_index()
    if i < out.shape[0]:
        row = grid[i]
        row[0] = 1.0
        out[i] = grid[i, 1] + len(grid) + grid.shape[0]


def test_only_parameters_provably_only_read_are_not_written_back():
    xs, out = np.ones(3), np.zeros(3)
    assert may_write(double, (xs, out)) == [False, True]
    grid = np.zeros((3, 2))
    assert may_write(writes_row, (grid, out)) == [True, True]  # `grid[i]` is a row: a view
    gpuad.kernel(writes_row, target="cpu").launch(3, grid, out)
    np.testing.assert_array_equal(grid[:, 0], 1.0)


def dot(a, b):
    return a[0] * b[0] + a[1] * b[1]


@pytest.mark.parametrize("shadow", [np.zeros(1), np.zeros(2, dtype=np.float32), 0.0])
def test_host_autodiff_refuses_a_shadow_unlike_its_primal(shadow):
    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    with pytest.raises(AutodiffCallError, match="autodiff of dot, argument 0: the shadow") as info:
        autodiff(Reverse, dot, Duplicated(a, shadow), Const(b))
    assert info.value.location.function == "dot"


def grad_dot(a, da, b):
    i = gpuad.thread_index()
    if i == 0:
        autodiff(Reverse, dot, Duplicated(a, da), Const(b))


def sine(x):
    return math.sin(x)


def tangent_sin(xs, dxs, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (out[i],) = autodiff(Forward, sine, Duplicated(xs[i], dxs[i]))


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_kernel_shadow_unlike_its_primal_is_refused_before_running(target):
    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    for shadow in (np.zeros(1), np.zeros(2, dtype=np.float32)):
        with pytest.raises(AutodiffCallError, match="kernel grad_dot, argument 1: the shadow") as info:
            gpuad.kernel(grad_dot, target=target).launch(1, a, shadow, b)
        assert info.value.location.line == grad_dot.__code__.co_firstlineno + 3
        assert not shadow.any()
    xs, out = np.ones(4), np.zeros(4)
    with pytest.raises(AutodiffCallError, match="kernel tangent_sin, argument 1"):
        gpuad.kernel(tangent_sin, target=target).launch(4, xs, np.ones(3), out)


def test_a_matching_kernel_shadow_runs():
    a, da, b = np.array([1.0, 2.0]), np.zeros(2), np.array([3.0, 4.0])
    gpuad.kernel(grad_dot, target="cpu").launch(1, a, da, b)
    np.testing.assert_array_equal(da, b)


# -- item 8: the cpu target is as strict as CUDA and memory-safe --------------

OUT_OF_BOUNDS_SCRIPT = """
import json, sys
import numpy as np, gpuad
sys.path.insert(0, sys.argv[1])
from test_launch import grad_shifted, unguarded

def attempt(kernel, n, *arrays):
    try:
        gpuad.kernel(kernel, target="cpu").launch(n, *arrays)
    except gpuad.errors.OutOfBounds as exc:
        where = exc.location
        return dict(message=str(exc), file=where.filename, line=where.line,
                    index_error=isinstance(exc, IndexError), untouched=not any(a.any() for a in arrays[1:]))
    return None

print(json.dumps(dict(
    many=attempt(unguarded, 1 << 22, np.ones(8), np.zeros(8)),
    few=attempt(unguarded, 12, np.arange(10.0), np.zeros(10)),
    differentiated=attempt(grad_shifted, 4, np.arange(4.0), np.zeros(4)),
)))
"""


@pytest.fixture(scope="module")
def out_of_bounds():
    """Out-of-bounds launches, in a child process: unchecked, they corrupt memory (segfault or hang)."""
    done = subprocess.run([sys.executable, "-c", OUT_OF_BOUNDS_SCRIPT, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def shifted(a, i):
    return a[i + 1] * a[i + 1]


def grad_shifted(a, da):
    i = gpuad.thread_index()
    if i < a.shape[0]:
        autodiff(Reverse, shifted, Duplicated(a, da), Const(i))


def test_a_kernel_without_bounds_check_cannot_crash_the_process(out_of_bounds):
    assert "kernel unguarded, thread 8: index 8 is out of bounds" in out_of_bounds["many"]["message"]
    assert out_of_bounds["many"]["untouched"]


def test_an_out_of_bounds_index_names_kernel_line_and_index(out_of_bounds):
    report = out_of_bounds["few"]
    expected = "kernel unguarded, thread 10: index 10 is out of bounds for axis 0 with size 10"
    assert expected in report["message"]
    assert (report["file"], report["line"]) == (__file__, unguarded.__code__.co_firstlineno + 2)
    assert report["index_error"] and report["untouched"]  # nothing written back


def test_an_out_of_bounds_index_in_a_differentiated_function_is_caught(out_of_bounds):
    report = out_of_bounds["differentiated"]
    assert "kernel grad_shifted, thread 3: index 4 is out of bounds" in report["message"]
    assert report["line"] == grad_shifted.__code__.co_firstlineno + 3
    assert report["untouched"]


def sums_a_list(xs, out):
    i = gpuad.thread_index()
    if i < out.shape[0]:
        out[i] = xs[i]


def returns_a_value(xs, out):
    i = gpuad.thread_index()
    if i < out.shape[0]:
        out[i] = xs[i]
    return i


@pytest.mark.parametrize(("kernel", "first", "message"), [
    (sums_a_list, [1.0, 2.0], "argument 0 of kernel sums_a_list has type reflected list.*NRT required"),
    (sums_a_list, {1.0, 2.0}, "argument 0 of kernel sums_a_list has type reflected set.*NRT required"),
    (returns_a_value, np.ones(2), "kernel returns_a_value returns a value"),
])
def test_what_the_cuda_pipeline_refuses_the_cpu_target_refuses_alike(kernel, first, message):
    out = np.zeros(2)
    with pytest.raises(LaunchError, match=message) as on_cpu:
        gpuad.kernel(kernel, target="cpu").launch(2, first, out)
    assert not out.any()
    with pytest.raises(LaunchError, match=message) as compiling:
        gpuad.kernel(kernel).compile(first, out)  # the CUDA pipeline, refused before lowering
    assert str(on_cpu.value) == str(compiling.value)


def test_returning_none_is_allowed():
    def stops_early(xs, out):
        i = gpuad.thread_index()
        if i >= out.shape[0]:
            return
        out[i] = xs[i] + 1.0

    out = np.zeros(3)
    gpuad.kernel(stops_early, target="cpu").launch(5, np.ones(3), out)
    np.testing.assert_array_equal(out, 2.0)


def test_gradients_still_flow_through_a_read_only_input():
    xs, ys, dxs = np.linspace(0, 1, 8), np.full(8, 2.0), np.zeros(8)
    xs.setflags(write=False)
    from gpuad.examples import grad_f

    gpuad.kernel(grad_f.pyfunc, target="cpu").launch(8, xs, ys, dxs)
    np.testing.assert_allclose(dxs, np.cos(xs) * ys, rtol=1e-12)


# -- a launch CUDA refuses for memory: local memory is reserved for every resident thread -----

def with_local_array(xs, out):
    i = gpuad.thread_index()
    scratch = cuda.local.array(2048, float64)
    if i < xs.shape[0]:
        for k in range(2048):
            scratch[k] = xs[i] * k
        out[i] = scratch[(i * 7) % 2048]


@pytest.mark.parametrize("f, translated", [(with_local_array, True), (double, False)])
def test_out_of_memory_at_launch_names_the_local_frame(monkeypatch, f, translated):
    from gpuad.targets import cuda as cuda_target

    refusal = RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: The API call failed")

    def launch(*args, **kwargs):
        raise refusal

    monkeypatch.setattr(gpuad.Kernel, "_device_arch", lambda self: "sm_90")
    monkeypatch.setattr(cuda_target, "load_ptx", lambda *args, **kw: object())
    monkeypatch.setattr(cuda_target, "launch", launch)
    monkeypatch.setattr(cuda_target, "resident_threads", lambda: 270336)
    k = gpuad.kernel(f, target="cuda")
    args = (np.ones(4), np.zeros(4))
    with pytest.raises(Exception) as info:
        k._launch((1, 1, 1), (4, 1, 1), args)
    if translated:  # the frame (16 KiB of scratch) times the resident threads, and what to do
        assert isinstance(info.value, LocalMemoryExceeded)
        assert "ran out of memory launching kernel with_local_array" in str(info.value)
        assert "x 270336 resident threads" in str(info.value) and "tape_capacity" in str(info.value)
        assert info.value.__cause__ is refusal
    else:  # no local frame: the arrays did not fit, CUDA's own error says so
        assert info.value is refusal
