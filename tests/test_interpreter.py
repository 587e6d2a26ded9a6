"""Stage 1: calls resolve through method tables by identity, recursively."""
import math
import math as m
from math import sin

import numpy as np
import pytest
from numba import cuda

from gpuad import Active, Const, Duplicated, Reverse, api
from gpuad.errors import AutodiffCallError, InterpretError
from gpuad.interpreter import Interpreter
from gpuad.method_table import MethodTable


def loud_sin(x):
    return 100.0 + x


def make_interpreter(table):
    # Pure-Python binding: resolved functions are called as they are.
    return Interpreter(table, bind_function=lambda r: r.pyfunc, bind_site=lambda site: site)


def status():
    return np.zeros(8, dtype=np.int64)


def uses_module_alias(x):
    return m.sin(x)


def uses_from_import(x):
    return sin(x)


def helper(x):
    return math.sin(x) * 2.0


def calls_helper(x):
    return helper(x) + 1.0


def make_closure():
    s = math.sin

    def inner(x):
        return s(x)

    return inner


@pytest.mark.parametrize("fn", [uses_module_alias, uses_from_import, make_closure()])
def test_overlay_found_by_identity_not_spelling(fn):
    table = MethodTable("test")
    table.add(math.sin, loud_sin)
    interp = make_interpreter(table)
    resolved = interp.resolve(fn)
    assert resolved.pyfunc(0.5, status()) == 100.5
    assert len(interp.overlays) == 1
    record = interp.overlays[0]
    assert record.original == "math.sin" and record.replacement.endswith("loud_sin")
    assert record.call_site.endswith(f":{fn.__code__.co_firstlineno + 1}")


def test_overlay_applies_inside_called_plain_functions():
    table = MethodTable("test")
    table.add(math.sin, loud_sin)
    interp = make_interpreter(table)
    resolved = interp.resolve(calls_helper)
    assert resolved.pyfunc(0.5, status()) == (100.5 * 2.0) + 1.0
    assert [o.function for o in interp.overlays] == ["helper"]


def test_local_variable_shadowing_a_global_is_not_resolved():
    table = MethodTable("test")
    table.add(math.sin, loud_sin)

    def shadow(x):
        sin = 3.0  # noqa: F841 - a local named like the overlaid global
        return x * 2.0

    interp = make_interpreter(table)
    assert interp.resolve(shadow).pyfunc(1.0, status()) == 2.0
    assert interp.overlays == []


def f2(x, a):
    return x * a[0]


def kernel_with_autodiff(xs, das, out):
    i = 0
    (dx, _), = api.autodiff(Reverse, f2, Active(xs[i]), Duplicated(xs, das))
    out[i] = dx


def test_autodiff_becomes_a_deferred_site():
    interp = make_interpreter(MethodTable("test"))
    interp.resolve(kernel_with_autodiff)
    (site,) = interp.sites
    assert site.function is f2 and site.mode is Reverse
    assert site.activities == (Active, Duplicated)
    assert site.location.line == kernel_with_autodiff.__code__.co_firstlineno + 2
    assert [(o.original, o.replacement) for o in interp.overlays] == [
        ("gpuad.api.autodiff", "gpuad.api.autodiff_deferred")
    ]


def unknown_wrapper(x):
    return api.autodiff(Reverse, f2, list(x), Const(x))


def wrong_arity(x):
    return api.autodiff(Reverse, f2, Active(x))


def not_a_function(x):
    return api.autodiff(Reverse, 3.0, Active(x), Const(x))


def bad_mode(x):
    return api.autodiff("reverse", f2, Active(x), Const(x))


def bad_wrapper_arity(x):
    return api.autodiff(Reverse, f2, Active(x, x), Const(x))


@pytest.mark.parametrize("fn, words", [
    (unknown_wrapper, "unknown activity wrapper `list`"),
    (wrong_arity, "takes 2 argument(s) but autodiff passes 1"),
    (not_a_function, "is not a plain Python function"),
    (bad_mode, "must be a mode"),
    (bad_wrapper_arity, "Active takes 1 argument(s), got 2"),
])
def test_bad_autodiff_calls_name_the_line_and_the_fix(fn, words):
    with pytest.raises(AutodiffCallError) as info:
        make_interpreter(MethodTable("test")).resolve(fn)
    assert words in str(info.value)
    assert info.value.location.line == fn.__code__.co_firstlineno + 1
    assert info.value.location.filename == __file__


def recursive(x):
    return recursive(x - 1.0)


def test_recursion_is_refused():
    with pytest.raises(InterpretError, match="calls itself"):
        make_interpreter(MethodTable("test")).resolve(recursive)


def at(x, i):
    return x[i] * x[i]


def own_site(x, dx):
    i = cuda.grid(1)
    if i < x.size:
        api.autodiff(Reverse, at, Duplicated(x, dx), Const(i))


def own_site_thread_index(x, dx):
    i = api.thread_index()
    dx[i] = 0.0
    api.autodiff(Reverse, at, Duplicated(x, dx), i)


def moved_id(x, dx):
    i = cuda.grid(1)
    i += 1
    api.autodiff(Reverse, at, Duplicated(x, dx), i)


def two_sites_one_shadow(x, dx):
    i = cuda.grid(1)
    api.autodiff(Reverse, at, Duplicated(x, dx), i)
    api.autodiff(Reverse, at, Duplicated(x, dx), i)


def shadow_passed_on(x, dx):
    i = cuda.grid(1)
    api.autodiff(Reverse, at, Duplicated(x, dx), i)
    helper_with_site(x, dx, i)


def helper_with_site(x, dx, i):
    api.autodiff(Reverse, at, Duplicated(x, dx), i)


def two_d_id(x, dx):
    i = cuda.grid(2)[0]
    api.autodiff(Reverse, at, Duplicated(x, dx), i)


@pytest.mark.parametrize("kernel, thread_ids, exclusive", [
    (own_site, {1}, {0}),
    (own_site_thread_index, {1}, {0}),
    (moved_id, set(), {0}),
    (two_sites_one_shadow, {1}, set()),
    (two_d_id, set(), {0}),
])
def test_sites_carry_what_ownership_needs(kernel, thread_ids, exclusive):
    interp = make_interpreter(MethodTable("test"))
    interp.resolve(kernel)
    for site in interp.sites:
        assert (site.thread_ids, site.exclusive) == (thread_ids, exclusive)


def test_a_shadow_passed_to_a_helper_is_nowhere_exclusive():
    interp = make_interpreter(MethodTable("test"))
    interp.resolve(shadow_passed_on)
    assert [(s.thread_ids, s.exclusive) for s in interp.sites] == [({1}, set()), (set(), set())]


def test_ownership_can_be_switched_off():
    interp = make_interpreter(MethodTable("test"))
    interp.thread_ownership = False
    interp.resolve(own_site)
    (site,) = interp.sites
    assert (site.thread_ids, site.exclusive) == (set(), set())


# --- the likeliest first mistake: unpacking what autodiff returns -------------------------------

UNPACKING = [  # (mode, target as written, the hint's shape, or None where the target is right)
    ("Reverse", "dx, dy", "(dx, dy), ="),
    ("Reverse", "(dx, dy), primal", "(dx, dy), ="),
    ("Reverse", "(dx,), = ", "(d0, d1), ="),
    ("ReverseWithPrimal", "(dx, dy),", "(dx, dy), primal ="),
    ("Forward", "df, primal", "df, ="),
    ("ForwardWithPrimal", "df,", "df, primal ="),
    ("Reverse", "(dx, dy),", None),
    ("ReverseWithPrimal", "(dx, dy), p", None),
    ("Forward", "df,", None),
    ("ForwardWithPrimal", "df, p", None),
    ("Reverse", "result", None),
]


@pytest.mark.parametrize("mode,target,hint", UNPACKING)
def test_autodiff_unpacking_mistakes_name_the_line_and_the_fix(mode, target, hint):
    import corpus
    import numpy as np

    import gpuad
    from gpuad.errors import AutodiffCallError

    target = target.rstrip(" =")
    args = "Duplicated(xs[i], 1.0), Duplicated(ys[i], 0.0)" if mode.startswith("Forward") else \
        "Active(xs[i]), Active(ys[i])"
    source = (f"def g(x, y):\n    return x * y\n\n"
              f"def k(xs, ys, out):\n    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n"
              f"        {target} = autodiff({mode}, g, {args})\n        out[i] = 1.0\n")
    scope = corpus.exec_source(source, f"<unpacking {mode} {target}>", {
        "gpuad": gpuad, "autodiff": gpuad.autodiff, "Active": gpuad.Active, "Duplicated": gpuad.Duplicated,
        mode: getattr(gpuad, mode)})
    kernel = gpuad.kernel(target="cpu")(scope["k"])
    xs = np.ones(2)
    if hint is None:
        kernel.launch(2, xs, xs.copy(), xs.copy())
        return
    with pytest.raises(AutodiffCallError, match=r"returns \(") as info:
        kernel.launch(2, xs, xs.copy(), xs.copy())
    assert info.value.location.line == 7
    assert hint in info.value.hint


@pytest.mark.parametrize("wrapped,message", [
    ("Active(xs)", r"Active\(\.\.\.\) wraps an array \(argument 0, `x`\)"),
])
def test_activity_mistakes_in_kernels_point_at_the_autodiff_line(wrapped, message):
    import corpus
    import numpy as np

    import gpuad
    from gpuad.errors import AutodiffCallError

    source = ("def g(x):\n    return x * 2.0\n\n"
              "def k(xs, ns, out):\n    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n"
              f"        (d,), = autodiff(Reverse, g, {wrapped})\n        out[i] = d\n")
    scope = corpus.exec_source(source, f"<activity mistake {wrapped}>", {
        "gpuad": gpuad, "autodiff": gpuad.autodiff, "Active": gpuad.Active, "Reverse": gpuad.Reverse})
    kernel = gpuad.kernel(target="cpu")(scope["k"])
    with pytest.raises(AutodiffCallError, match=message) as info:
        kernel.launch(2, np.ones(2), np.ones(2, np.int64), np.zeros(2))
    assert info.value.location.line == 7


def test_active_integer_warns_and_gets_none():
    """Integers are inactive (derivative None), as documented; `Active` on one is likely a mistake."""
    import gpuad
    from gpuad.errors import GpuadWarning

    def g(x, n):
        return x * n

    with pytest.warns(GpuadWarning, match="`n`.* is an integer .*Const"):
        assert gpuad.autodiff(gpuad.Reverse, g, gpuad.Active(2.0), gpuad.Active(3)) == ((3.0, None),)
