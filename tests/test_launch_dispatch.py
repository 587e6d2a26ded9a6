"""The repeated-launch path (issue 11, goal 5): a launch of a cached kernel reuses its plan, yet
never launches stale code, and every check that depends on argument values still runs."""
import numpy as np
import pytest
from corpus import OVERFLOW_KERNEL, exec_source, long_loop

import gpuad
from gpuad import Active, Duplicated, Reverse, autodiff
from gpuad.compiler import numba_adapter
from gpuad.errors import AutodiffCallError, LaunchError, TapeOverflow
from gpuad.targets import dispatch

SCALE = 2.0


def helper_square(x):
    return x * x


def helper_cube(x):
    return x * x * x


HELPER = helper_square


def through_helper(x):
    return SCALE * HELPER(x)


def helper_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d,), = autodiff(Reverse, through_helper, Active(xs[i]))
        dxs[i] = d


def first_squared(a):
    return a[0] * a[0]


def shadow_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i == 0:
        autodiff(Reverse, first_squared, Duplicated(xs, dxs))


def gradient(kernel, xs):
    dxs = np.zeros_like(xs)
    kernel.launch(xs.shape[0], xs, dxs)
    return dxs


# -- the plan is reused ---------------------------------------------------------------------

def test_a_repeated_launch_neither_types_arguments_nor_builds_the_key(monkeypatch):
    kernel = gpuad.kernel(helper_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 8)
    gradient(kernel, xs)
    import sys

    kernel_module = sys.modules["gpuad.kernel"]  # `gpuad.kernel` is the decorator
    calls = []
    monkeypatch.setattr(numba_adapter, "typeof", lambda v: calls.append("typeof"))
    monkeypatch.setattr(kernel_module, "derivative_key", lambda fn: calls.append("key"))
    np.testing.assert_allclose(gradient(kernel, xs), 4.0 * xs)
    assert calls == []


# -- ... but never stale ------------------------------------------------------------------------

def test_a_global_changed_between_launches_recompiles(monkeypatch):
    kernel = gpuad.kernel(helper_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 8)
    np.testing.assert_allclose(gradient(kernel, xs), 4.0 * xs)
    monkeypatch.setitem(globals(), "SCALE", 3.0)
    np.testing.assert_allclose(gradient(kernel, xs), 6.0 * xs)


def test_a_redefined_helper_between_launches_recompiles(monkeypatch):
    kernel = gpuad.kernel(helper_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 8)
    np.testing.assert_allclose(gradient(kernel, xs), 4.0 * xs)
    monkeypatch.setitem(globals(), "HELPER", helper_cube)  # the name now holds another function
    np.testing.assert_allclose(gradient(kernel, xs), 6.0 * xs * xs)


def test_a_helper_given_new_code_between_launches_recompiles(monkeypatch):
    kernel = gpuad.kernel(helper_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 8)
    np.testing.assert_allclose(gradient(kernel, xs), 4.0 * xs)
    monkeypatch.setattr(helper_square, "__code__", helper_cube.__code__)  # same object, new body
    np.testing.assert_allclose(gradient(kernel, xs), 6.0 * xs * xs)


def test_a_new_tape_capacity_between_launches_takes_effect():
    namespace = exec_source(OVERFLOW_KERNEL, "<dispatch overflow kernel>",
                            {"gpuad": gpuad, "autodiff": autodiff, "Reverse": Reverse,
                             "Active": Active, "long_loop": long_loop})
    kernel = gpuad.kernel(namespace["overflow_kernel"], target="cpu", tape_capacity=8)
    xs, ns, out = np.linspace(0.1, 0.9, 4), np.full(4, 20, dtype=np.int64), np.zeros(4)
    with pytest.raises(TapeOverflow):
        kernel.launch(4, xs, ns, out)
    kernel.tape_capacity = 32
    kernel.launch(4, xs, ns, out)  # the build for capacity 8 would overflow again
    assert np.all(out != 0)


def test_key_watch_sees_rules_tables_and_values(monkeypatch):
    from gpuad.ad import rules
    from gpuad.method_table import CPU

    watch = dispatch.KeyWatch(helper_kernel, (CPU,))
    assert watch.holds()
    monkeypatch.setitem(globals(), "SCALE", 2.5)  # read by through_helper, which the kernel reaches
    assert not watch.holds()
    watch = dispatch.KeyWatch(helper_kernel, (CPU,))
    monkeypatch.setattr(rules, "_version", rules.rules_version() + 1)
    assert not watch.holds()
    watch = dispatch.KeyWatch(helper_kernel, (CPU,))
    monkeypatch.setattr(CPU, "version", CPU.version + 1)
    assert not watch.holds()


TABLE = np.array([1.0, 2.0])
PAIR = (np.array([3.0]), 2.0)


def through_table(x):
    return TABLE[1] * x * x + PAIR[0][0] * x


def table_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d,), = autodiff(Reverse, through_table, Active(xs[i]))
        dxs[i] = d


def table_gradient(xs):
    return 2 * TABLE[1] * xs + PAIR[0][0]


def with_default(x, weights=np.array([2.0])):  # noqa: B008 - the default array is the point
    return weights[0] * x * x


def default_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        dxs[i] = with_default(xs[i])


def test_a_default_array_changed_in_place_between_launches_is_seen():
    weights = with_default.__defaults__[0]
    kernel = gpuad.kernel(default_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 4)
    np.testing.assert_allclose(gradient(kernel, xs), 2.0 * xs * xs)
    try:
        weights[0] = 3.0  # numba froze the default of the omitted argument
        np.testing.assert_allclose(gradient(kernel, xs), 3.0 * xs * xs)
    finally:
        weights[0] = 2.0


def through_methods(x):
    return TABLE.sum() * x * x


def methods_kernel(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d,), = autodiff(Reverse, through_methods, Active(xs[i]))
        dxs[i] = d + TABLE.T[0]


def test_a_global_array_changed_in_place_between_launches_is_seen(monkeypatch):
    monkeypatch.setitem(globals(), "TABLE", TABLE.copy())
    monkeypatch.setitem(globals(), "PAIR", (PAIR[0].copy(), 2.0))
    kernel = gpuad.kernel(table_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 4)
    np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))
    TABLE[1] = 5.0  # numba froze the old bytes into the compiled kernel
    np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))
    PAIR[0][0] = -1.0  # an array inside a global tuple
    np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))
    np.testing.assert_allclose(gradient(gpuad.kernel(table_kernel, target="cpu"), xs), table_gradient(xs))


@pytest.mark.gpu
@pytest.mark.parametrize("from_disk", [False, True])
def test_a_global_array_changed_in_place_between_cuda_launches_is_seen(monkeypatch, tmp_path, from_disk):
    """numba-cuda puts a global array into constant memory when it compiles: a new kernel each time
    its bytes change, in memory and on disk."""
    monkeypatch.setenv("GPUAD_CACHE", "1" if from_disk else "0")
    monkeypatch.setenv("GPUAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(globals(), "TABLE", TABLE.copy())
    monkeypatch.setitem(globals(), "PAIR", (PAIR[0].copy(), 2.0))
    xs = np.linspace(0.5, 1.5, 4)
    for _ in range(2 if from_disk else 1):  # the second time, fresh kernels load from the disk
        TABLE[1], PAIR[0][0] = 2.0, 3.0
        kernel = gpuad.kernel(table_kernel, target="cuda")
        np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))
        TABLE[1] = 5.0
        np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))
        PAIR[0][0] = -1.0
        np.testing.assert_allclose(gradient(kernel, xs), table_gradient(xs))


def test_key_watch_compares_global_arrays_by_content(monkeypatch):
    from gpuad.method_table import CPU

    monkeypatch.setitem(globals(), "TABLE", TABLE.copy())
    watch = dispatch.KeyWatch(methods_kernel, (CPU,))
    assert watch.holds()  # TABLE.sum and TABLE.T are new objects at each read: compared by token
    TABLE[0] = 1.0  # the same bytes
    assert watch.holds()
    TABLE[0] = 1.5
    assert not watch.holds()
    watch = dispatch.KeyWatch(table_kernel, (CPU,))
    TABLE.shape = (2, 1)  # in place, the same bytes: another type
    assert not watch.holds()


def test_a_repeated_launch_reading_array_methods_and_views_keeps_its_plan(monkeypatch):
    import sys

    monkeypatch.setitem(globals(), "TABLE", TABLE.copy())
    kernel = gpuad.kernel(methods_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 4)
    gradient(kernel, xs)
    calls = []
    with monkeypatch.context() as patched:
        patched.setattr(sys.modules["gpuad.kernel"], "derivative_key", lambda fn: calls.append("key"))
        np.testing.assert_allclose(gradient(kernel, xs), 2 * TABLE.sum() * xs + TABLE[0])
    assert calls == []
    TABLE[0] = 1.5  # still seen
    np.testing.assert_allclose(gradient(kernel, xs), 2 * TABLE.sum() * xs + TABLE[0])


VALUES = [np.ones(3), np.ones(3, dtype=np.float32), np.ones((3, 2)), np.ones((3, 2)).T, np.ones(6)[::2],
          np.ones(1), np.ones((1, 1)), np.ones(3, dtype=">f8"), np.zeros(0), 1, -1, 2**40, -2**63, 2**63 - 1,
          True, 1.5, 1j, np.float32(1), np.float64(1), np.int32(1), np.bool_(True)]


def typed(value):
    try:
        return numba_adapter.typeof(value)
    except Exception as exc:  # noqa: BLE001 - a refusal is an outcome too (it must be the same)
        return type(exc).__name__


def test_equal_signatures_mean_equal_argument_types():
    readonly = np.ones(3)
    readonly.setflags(write=False)
    values = [*VALUES, readonly]
    for a in values:
        for b in values:
            sa, sb = dispatch.signature((a,)), dispatch.signature((b,))
            if sa is not None and sa == sb:
                assert typed(a) == typed(b), (a, b)
    assert dispatch.signature((readonly,)) != dispatch.signature((np.ones(3),))
    assert dispatch.signature((True,)) != dispatch.signature((1,))


@pytest.mark.parametrize("value", [2**63, -2**63 - 1, [1.0], (1, 2.0), np.ma.ones(3)])
def test_values_without_an_exact_signature_take_the_slow_path(value):
    assert dispatch.signature((np.ones(3), value)) is None


def test_an_int_that_needs_another_type_is_not_mistaken_for_int64():
    assert dispatch.signature((2**63 - 1,)) is not None
    assert numba_adapter.typeof(2**63) != numba_adapter.typeof(2**63 - 1)  # why it must not be


# -- checks that depend on values run at every launch -------------------------------------------

def test_a_shadow_of_another_shape_is_refused_on_a_repeated_launch():
    kernel = gpuad.kernel(shadow_kernel, target="cpu")
    xs = np.linspace(0.5, 1.5, 8)
    dxs = np.zeros(8)
    kernel.launch(1, xs, dxs)
    assert dxs[0] == 2.0 * xs[0]
    with pytest.raises(AutodiffCallError, match="shadow in Duplicated has shape"):
        kernel.launch(1, xs, np.zeros(9))  # same types, same plan: the shapes still differ


def test_overlapping_views_are_refused_on_a_repeated_launch():
    def copy_kernel(xs, out):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            out[i] = 2.0 * xs[i]

    kernel = gpuad.kernel(copy_kernel, target="cpu")
    kernel.launch(4, np.ones(4), np.zeros(4))
    buffer = np.ones(8)
    with pytest.raises(LaunchError, match="overlap in memory"):
        kernel.launch(4, buffer[:4], buffer[2:6])


def test_cached_launch_configurations_still_refuse_bools():
    kernel = gpuad.kernel(helper_kernel, target="cpu")
    xs = np.ones(4)
    kernel[1, 32](xs, np.zeros(4))
    with pytest.raises(LaunchError, match="True"):
        kernel[True, 32]
    with pytest.raises(LaunchError, match="True"):
        kernel.launch(4, xs, np.zeros(4), block=True)


def test_check_mode_is_validated():
    with pytest.raises(LaunchError, match="check is one of blocking, deferred"):
        gpuad.kernel(helper_kernel, check="later")


def test_a_users_njit_helper_sees_global_arrays_changed_in_place():
    """A kernel calling the user's own @numba.njit helper (not differentiated): gpuad compiles the
    helper's Python for the kernel, so numba's copy of a global array frozen at the helper's
    first compile is not what runs."""
    import numba

    namespace = {"np": np, "gpuad": gpuad, "numba": numba}
    source = ("W = np.array([1.0, 2.0])\n\n"
              "@numba.njit\ndef scaled(x):\n    return W[1] * x\n\n"
              "def kern(xs, out):\n    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n"
              "        out[i] = scaled(xs[i])\n")
    from corpus import exec_source

    namespace = exec_source(source, "<njit helper>", namespace)
    assert namespace["scaled"](1.0) == 2.0  # numba compiled it, with W[1] = 2.0 frozen
    kernel = gpuad.kernel(namespace["kern"], target="cpu")
    xs, out = np.ones(3), np.zeros(3)
    kernel.launch(3, xs, out)
    assert list(out) == [2.0, 2.0, 2.0]
    namespace["W"][1] = 5.0
    kernel.launch(3, xs, out)
    assert list(out) == [5.0, 5.0, 5.0]
