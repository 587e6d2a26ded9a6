"""A newcomer's likeliest kernel mistakes get gpuad errors in their terms: the kernel's line,
numba's key sentence without its noise, and what to do (issue 13)."""
import warnings

import corpus
import numpy as np
import pytest

import gpuad
from gpuad.errors import AutodiffCallError, GpuadWarning, LoweringError, UnsupportedConstruct

_serial = iter(range(10**6))


def kernel_from(body: str, helpers: str = "def f(x):\n    return x * x\n\n"):
    """A cpu-target kernel `k(xs, ns, out)` whose guarded body is `body` (lines at 8 spaces)."""
    lines = "".join(f"        {line}\n" for line in body.splitlines())
    source = (f"{helpers}def k(xs, ns, out):\n    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n{lines}")
    scope = corpus.exec_source(source, f"<mistake {next(_serial)}>", {
        "gpuad": gpuad, "autodiff": gpuad.autodiff, "Reverse": gpuad.Reverse, "Active": gpuad.Active,
        "Const": gpuad.Const, "Duplicated": gpuad.Duplicated})
    first_body_line = source.splitlines().index(lines.splitlines()[0]) + 1
    return gpuad.kernel(scope["k"], target="cpu"), first_body_line


def launch(kernel):
    kernel.launch(2, np.ones(2), np.arange(2), np.zeros(2))


def test_an_integer_marked_active_and_stored_names_the_store_and_the_fix():
    kernel, line = kernel_from("(d,), = autodiff(Reverse, f, Active(ns[i]))\nout[i] = d")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(LoweringError) as info:
        warnings.simplefilter("always")
        launch(kernel)
    assert info.value.location.line == line + 1  # the store, not the kernel's def
    assert "setitem(array(float64, 1d, C), int64, none)" in info.value.message
    assert "Failed in" not in info.value.message and "candidate" not in info.value.message
    assert "None" in info.value.hint and "float(" in info.value.hint
    warned = [w for w in caught if issubclass(w.category, GpuadWarning)]
    assert any(f":{line} " in str(w.message) and "is an integer" in str(w.message) for w in warned)
    # shown at the autodiff line of the user's kernel, not at the gpuad frame that noticed it
    assert any(w.filename == info.value.location.filename and w.lineno == line for w in warned)


def test_a_misspelt_function_is_not_defined():
    kernel, line = kernel_from("(d,), = autodiff(Reverse, ff, Active(xs[i]))\nout[i] = d")
    with pytest.raises(AutodiffCallError, match="`ff` is not defined") as info:
        launch(kernel)
    assert info.value.location.line == line and "spelling" in info.value.hint


def test_a_misspelt_helper_called_by_the_kernel_is_not_defined():
    kernel, line = kernel_from("out[i] = hlper(xs[i])")
    with pytest.raises(LoweringError) as info:
        launch(kernel)
    assert info.value.location.line == line
    assert "`hlper` is not defined" in info.value.hint and "shared memory" not in info.value.hint


def test_print_inside_a_differentiated_function_says_where_to_print():
    helpers = "def f(x):\n    print(\"x =\", x)\n    return x * x\n\n"
    kernel, _ = kernel_from("(d,), = autodiff(Reverse, f, Active(xs[i]))\nout[i] = d", helpers)
    with pytest.raises(UnsupportedConstruct, match="print in the kernel, outside the autodiff call") as info:
        launch(kernel)
    assert info.value.location.line == 2  # the print, in f


def test_print_in_the_kernel_itself_runs():
    kernel, _ = kernel_from("print(\"x =\", xs[i])\n(d,), = autodiff(Reverse, f, Active(xs[i]))\nout[i] = d")
    out = np.zeros(2)
    kernel.launch(2, np.array([1.0, 3.0]), np.arange(2), out)
    np.testing.assert_array_equal(out, [2.0, 6.0])


def test_nothing_to_differentiate_warns_at_the_autodiff_line():
    helpers = "def g(a, x):\n    return a[0] * x\n\n"
    kernel, line = kernel_from("(da, dx), = autodiff(Reverse, g, Const(xs), Const(xs[i]))\nout[i] = 1.0",
                               helpers)
    with pytest.warns(GpuadWarning, match=f":{line} .*every argument of g is Const"):
        launch(kernel)


def test_the_cpu_target_hint_about_shared_memory_only_where_it_applies():
    from gpuad.compiler.numba_errors import hint_for

    assert "shared memory" in hint_for("Unknown attribute 'shared' of module cuda", "cpu")
    assert "shared memory" not in hint_for("Cannot unify float64 and none", "cpu")
