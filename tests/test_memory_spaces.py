"""GPU memory spaces and per-thread local memory (issue 10, items 5 and 6).

Local shadows: a shadow in the thread's `cuda.local.array` is updated without
atomics (NVVM turns an atomic on local memory into `trap;`, which kills the
CUDA context). Shared shadows keep their atomics, as shared-memory atomics.
Local memory: a kernel whose frame (tape, local arrays) is over CUDA's
per-thread limit is refused before it launches, on both targets.
The PTX checks need no GPU; the `gpu` tests launch the same kernels.
"""
import math
import re

import numpy as np
import pytest
from numba import cuda, float64

import gpuad
from gpuad import Const, Duplicated, Reverse, autodiff
from gpuad.ad import differentiate
from gpuad.compiler.local_memory import MAX_LOCAL_BYTES_PER_THREAD, check_frame, local_frame_bytes
from gpuad.errors import EmissionError, LaunchError, LocalMemoryExceeded
from gpuad.interpreter import Interpreter
from gpuad.method_table import CUDA

N = 8


def squares(a, y, i):
    s = 0.0
    for k in range(4):
        s += a[k] * a[k]
    y[i] = s


def squares_shared_output(a, y, i):
    s = 0.0
    for k in range(4):
        s += a[k] * a[k]
    y[0] += s  # every thread: the adjoint of an increment only reads dy[0], so threads cannot race


def square_of(v, k):
    return v[k] * v[k]


def squares_through_helper(a, y, i):
    s = 0.0
    for k in range(4):
        s += square_of(a, k)
    y[i] = s


def squares_through_alias(a, y, i):
    w = a
    s = 0.0
    for k in range(4):
        s += w[k] * w[k]
    y[i] = s


def local_kernel(f):
    """dx[i] = d/dx sum_k f(a)[k] where a[k] = x[i] + k, with a and its shadow thread-local."""
    def kernel(x, dx, y, dy):
        i = cuda.grid(1)
        if i < x.shape[0]:
            a = cuda.local.array(4, float64)
            da = cuda.local.array(4, float64)
            for k in range(4):
                a[k] = x[i] + k
                da[k] = 0.0
            autodiff(Reverse, f, Duplicated(a, da), Duplicated(y, dy), Const(i))
            s = 0.0
            for k in range(4):
                s += da[k]
            dx[i] = s
    return kernel


def shared_kernel(x, dx, y, dy):
    """Every thread of the block differentiates through the block's shared a: da sums them all."""
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    a = cuda.shared.array(4, float64)
    da = cuda.shared.array(4, float64)
    if t < 4:
        a[t] = 1.0 + t
        da[t] = 0.0
    cuda.syncthreads()
    if i < x.shape[0]:
        autodiff(Reverse, squares, Duplicated(a, da), Duplicated(y, dy), Const(i))
    cuda.syncthreads()
    if t < 4:
        dx[cuda.blockIdx.x * 4 + t] = da[t]


def arrays(n=N):
    return np.arange(n, dtype=np.float64), np.zeros(n), np.zeros(n), np.ones(n)


def expected_local_gradient(x):
    # d/da_k of sum_k a_k^2 is 2 a_k = 2 (x + k); dx sums them.
    return sum(2.0 * (x + k) for k in range(4))


def atomics(ptx: str) -> set:
    return set(re.findall(r"\b(?:atom|red)\.[\w.]+", ptx))


# -- item 5: local and shared shadows -------------------------------------------


def test_a_local_shadow_is_private_at_its_site():
    interp = Interpreter(CUDA, lambda r: r.pyfunc, lambda s: (lambda *a: None))
    interp.resolve(local_kernel(squares))
    (site,) = interp.sites
    assert site.private == {0}  # a's shadow; y's is a parameter (exclusive, not private)
    assert site.exclusive == {1}


def test_a_rebound_local_shadow_is_not_private():
    def kernel(x, dx, y, dy):
        i = cuda.grid(1)
        da = cuda.local.array(4, float64)
        if i > 3:
            da = dx  # da may be global memory here
        autodiff(Reverse, squares, Duplicated(x, da), Duplicated(y, dy), Const(i))

    interp = Interpreter(CUDA, lambda r: r.pyfunc, lambda s: (lambda *a: None))
    interp.resolve(kernel)
    assert interp.sites[0].private == frozenset()


def test_a_private_array_is_updated_without_atomics_whatever_the_index():
    from numba.core import types

    vec = types.float64[::1]
    argtypes = (vec, vec, types.int64)
    plain = differentiate(squares_shared_output, Reverse, (Duplicated, Duplicated, Const), argtypes)
    private = differentiate(squares_shared_output, Reverse, (Duplicated, Duplicated, Const), argtypes,
                            private={0})
    assert "atomic_add(d_a" in plain.source
    assert "atomic_add(d_a" not in private.source and "d_a[k] +=" in private.source
    assert private.own_arrays == {"a"}  # y is not: it is a global array every thread updates


@pytest.mark.parametrize("f", [squares, squares_shared_output, squares_through_alias])
def test_local_shadow_ptx_has_no_trap_and_no_local_atomic(f):
    record = gpuad.kernel(local_kernel(f)).compile(*arrays())
    assert "trap;" not in record.ptx
    assert not any(a.startswith(("atom.local", "red.local")) for a in atomics(record.ptx))
    generic = {a for a in atomics(record.ptx) if not a.startswith(("atom.global", "atom.shared"))}
    assert not generic  # a generic atom could address the local shadow
    if f is squares_shared_output:  # every thread's `y[0] += s`: its adjoint only reads dy[0]
        assert not atomics(record.ptx)


def test_local_shadow_passed_on_to_a_helper_is_refused_not_trapped():
    with pytest.raises(EmissionError, match="local memory"):
        gpuad.kernel(local_kernel(squares_through_helper)).compile(*arrays())


def test_shared_shadow_uses_shared_atomics_and_never_traps():
    record = gpuad.kernel(shared_kernel).compile(*arrays())
    assert "trap;" not in record.ptx
    assert any(a.startswith(("atom.shared", "atom.add")) for a in atomics(record.ptx))


@pytest.mark.parametrize("f", [squares, squares_through_alias, squares_shared_output])
def test_local_shadow_gradient_on_cpu(f):
    x, dx, y, dy = arrays()
    gpuad.kernel(local_kernel(f), target="cpu").launch(N, x, dx, y, dy)
    np.testing.assert_allclose(dx, expected_local_gradient(x), rtol=1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("f", [squares, squares_through_alias, squares_shared_output])
def test_local_shadow_gradient_on_gpu(f):
    x, dx, y, dy = arrays(300)
    gpuad.kernel(local_kernel(f), target="cuda").launch(300, x, dx, y, dy)
    np.testing.assert_allclose(dx, expected_local_gradient(x), rtol=1e-14)


@pytest.mark.gpu
def test_shared_shadow_gradient_on_gpu():
    blocks, threads = 3, 64
    x, dx, y, dy = arrays(blocks * threads)
    gpuad.kernel(shared_kernel, target="cuda")[blocks, threads](x, dx, y, dy)
    # Each of the block's threads adds 2 a_t to da[t]: block b's dx[4b + t] = threads * 2 (1 + t).
    for b in range(blocks):
        np.testing.assert_allclose(dx[4 * b:4 * b + 4], threads * 2.0 * (1.0 + np.arange(4)), rtol=1e-14)


# -- increments of one global element by every thread: the adjoint only reads its shadow --------

SHARED_INCREMENTS = {
    "one element": "y[0] += x * x",
    "three elements, both signs": "y[i % 3] -= math.sin(x)\n    y[0] += x",
    "in a loop": "for k in range(3):\n        y[k] += x * k * x",
    "in branches": "if x > 20.0:\n        y[1] += x * x\n    else:\n        y[2] -= 3.0 * x",
    "a helper's value, written out": "y[0] = y[0] + half_square(x)\n    y[1] -= half_square(2.0 * x)",
}


def shared_increment_kernel(body: str):
    source = ("def half_square(x):\n    return 0.5 * x * x\n\n\n"
              f"def f(x, y, i):\n    {body}\n\n\n"
              "def kernel(xs, dxs, y, dy):\n"
              "    i = cuda.grid(1)\n"
              "    if i < xs.shape[0]:\n"
              "        d = autodiff(Reverse, f, Active(xs[i]), Duplicated(y, dy), Const(i))\n"
              "        dxs[i] = d[0][0]\n")
    from corpus import exec_source

    from gpuad import Active

    scope = {"math": math, "cuda": cuda, "autodiff": autodiff, "Reverse": Reverse, "Active": Active,
             "Duplicated": Duplicated, "Const": Const}
    return exec_source(source, f"<shared increment {abs(hash(body))}>", scope)


@pytest.mark.parametrize("target", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", SHARED_INCREMENTS)
def test_shared_increments_by_every_thread(name, target):
    scope = shared_increment_kernel(SHARED_INCREMENTS[name])
    n = 1000
    xs, dxs, y, dy = np.linspace(0.0, 40.0, n), np.zeros(n), np.zeros(3), np.array([1.0, -2.0, 0.5])
    gpuad.kernel(scope["kernel"], target=target).launch(n, xs, dxs, y, dy)
    np.testing.assert_array_equal(dy, [1.0, -2.0, 0.5])  # no thread's adjoint changes it
    h = 1e-6
    for i in range(0, n, 37):  # d/dx of <dy, what thread i adds to y>
        plus, minus = np.zeros(3), np.zeros(3)
        scope["f"](xs[i] + h, plus, i)
        scope["f"](xs[i] - h, minus, i)
        assert dxs[i] == pytest.approx(float(np.array([1.0, -2.0, 0.5]) @ (plus - minus)) / (2 * h),
                                       rel=1e-6, abs=1e-6), i


# -- item 6: per-thread local memory ---------------------------------------------


def long_sum(x, n):
    s = 0.0
    v = x
    for _ in range(n):
        v = v * 1.0001 + 0.5
        s += v * v
    return s


def tape_kernel(capacity, target=None):
    @gpuad.kernel(tape_capacity=capacity, target=target)
    def kernel(x, dx, n):
        i = cuda.grid(1)
        if i < x.shape[0]:
            dx[i] = autodiff(Reverse, long_sum, gpuad.Active(x[i]), Const(n))[0][0]
    return kernel


PTX = """
.visible .func  (.param .b64 func_retval0) helper(
\t.param .b64 helper_param_0
)
;
.visible .entry kernel(
\t.param .u64 kernel_param_0
)
{
\t.local .align 8 .b8 \t__local_depot0[1000];
\tcall.uni (retval0),
\thelper,
\t(
\tparam0
\t);
\tcall.uni
\tleaf,
\t(
\tparam0
\t);
}
.visible .func  (.param .b64 func_retval0) helper(
\t.param .b64 helper_param_0
)
{
\t.local .align 8 .b8 \t__local_depot1[200];
\tcall.uni
\tleaf,
\t(
\tparam0
\t);
}
.visible .func leaf(
\t.param .b64 leaf_param_0
)
{
\t.local .align 4 .b32 \t__local_depot2[30];
}
"""


def test_local_frame_is_the_entry_plus_its_deepest_call_chain():
    # kernel 1000 + helper 200 + leaf 120 (30 x 4 bytes); the prototype of helper counts once.
    assert local_frame_bytes(PTX) == 1320
    assert local_frame_bytes(".visible .entry k()\n{\n ret;\n}\n") == 0


def test_the_record_measures_the_tape():
    small = tape_kernel(64).compile(*arrays()[:2], 10)
    large = tape_kernel(16384).compile(*arrays()[:2], 10)
    assert small.local_memory_bytes < 8 * 1024
    assert large.local_memory_bytes >= 16384 * 8
    assert large.to_dict()["local_memory_bytes"] == large.local_memory_bytes


def test_check_frame_names_the_need_the_limit_and_what_to_do():
    check_frame("k", MAX_LOCAL_BYTES_PER_THREAD, 64)  # at the limit: fine
    with pytest.raises(LocalMemoryExceeded) as info:
        check_frame("k", 2**20, 131072)
    text = str(info.value)
    assert "1048576 bytes" in text and f"{MAX_LOCAL_BYTES_PER_THREAD} bytes" in text
    assert "# gpuad: checkpoint" in text and "tape_capacity" in text
    assert isinstance(info.value, LaunchError)


def test_a_tape_over_the_limit_is_refused_before_a_cpu_launch():
    x, dx = arrays()[:2]
    with pytest.raises(LocalMemoryExceeded, match="local memory per thread"):
        tape_kernel(131072, target="cpu").launch(N, x, dx, 10)
    assert not dx.any()  # nothing ran
    tape_kernel(1024, target="cpu").launch(N, x, dx, 10)  # measured, and it fits
    assert dx.all()


def test_a_local_array_over_the_limit_is_refused_before_a_cpu_launch():
    @gpuad.kernel(target="cpu")
    def big_local(x):
        i = cuda.grid(1)
        if i < x.shape[0]:
            scratch = cuda.local.array(100000, float64)
            for k in range(100000):
                scratch[k] = x[i] + k
            x[i] = scratch[i % 100000] + scratch[(i + 7) % 100000]

    with pytest.raises(LocalMemoryExceeded, match="800000 bytes"):
        big_local.launch(N, np.ones(N))


@pytest.mark.gpu
def test_a_tape_over_the_limit_is_refused_before_a_cuda_launch():
    x, dx = arrays()[:2]
    with pytest.raises(LocalMemoryExceeded):
        tape_kernel(131072, target="cuda").launch(N, x, dx, 10)
    tape_kernel(1024, target="cuda").launch(N, x, dx, 10)  # the CUDA context still works
    assert dx.all()
