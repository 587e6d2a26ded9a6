"""Facts a derivative carries beside its text: whether it can report a failure through `status`
(`can_fail`) and which loop lines its overflow reports name (`overflow_lines`). Launchers read
these facts; nothing searches the generated source for strings."""
from __future__ import annotations

import math

import numpy as np
from golden import programs as p
from numba.core import types

from gpuad.ad import differentiate
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, autodiff
from gpuad.compiler.jobs import JobFacts
from gpuad.targets import status as st

F64, I64 = types.float64, types.int64
LOOP_LINE = {fn: fn.__code__.co_firstlineno + 2 for fn in (p.taped_loop, p.checkpointed_loop)}


def static_loop(x):
    s = x
    for _ in range(3):
        s = math.sin(s)
    return s


def grad_of_taped_loop(x, n, v):
    (dx, _), = autodiff(Reverse, p.taped_loop, Active(x), Const(n))
    return dx * v


def test_straight_line_and_static_loops_cannot_fail():
    for fn, activities, argtypes in ((p.straight_line, (Active, Active), (F64, F64)),
                                     (static_loop, (Active,), (F64,))):
        d = differentiate(fn, Reverse, activities, argtypes)
        assert not d.can_fail and d.overflow_lines == frozenset()
    assert not differentiate(p.straight_line, Forward, (Duplicated, Const), (F64, F64)).can_fail


def test_a_loop_with_a_runtime_trip_count_can_fail_and_names_its_line():
    d = differentiate(p.taped_loop, Reverse, (Active, Const), (F64, I64))
    assert d.can_fail and d.overflow_lines == {LOOP_LINE[p.taped_loop]}


def test_a_checkpointed_loop_can_fail_and_names_its_line():
    d = differentiate(p.checkpointed_loop, Reverse, (Active, Const), (F64, I64))
    assert d.can_fail and d.overflow_lines == {LOOP_LINE[p.checkpointed_loop]}


def test_forward_over_reverse_keeps_the_inner_adjoints_failure():
    d = differentiate(grad_of_taped_loop, Forward, (Duplicated, Const, Const), (F64, I64, F64))
    assert d.can_fail
    assert d.overflow_lines == frozenset()  # the inner function's line, not this job's


def test_the_status_names_the_job_whose_loop_overflowed():
    status = np.zeros(st.SIZE, dtype=np.int64)
    status[st.FLAG], status[st.LINE], status[st.NEEDED] = st.TAPE_OVERFLOW, 14, 20
    jobs = [JobFacts(False, frozenset(), frozenset(), "other.py", "other"),
            JobFacts(True, frozenset({14}), frozenset(), "mine.py", "mine")]
    error = st.status_error(status, "k", jobs, 4)
    assert (error.location.filename, error.location.line, error.location.function) == ("mine.py", 14, "mine")


# A taped loop in a callee of another file: its report carries the callee's line, which named
# the caller's file and function (a line there that holds no loop, or none at all).
CALLEE_SOURCE = "import math\n\n\ndef inner(x, n):\n    s = x\n    for i in range(n):\n" \
                "        s = math.sin(s) * x\n    return s\n"
CALLER_SOURCE = "def outer(x, n):\n    y = x * 2.0\n    return inner(y, n) + y\n"


def caller_of_a_looping_callee():
    import corpus

    callee = corpus.exec_source(CALLEE_SOURCE, "<facts callee module>", {})["inner"]
    return corpus.exec_source(CALLER_SOURCE, "<facts caller module>", {"inner": callee})["outer"]


def test_overflow_in_a_callee_names_the_callees_file_and_line():
    import pytest

    from gpuad.errors import TapeOverflow

    outer = caller_of_a_looping_callee()
    d = differentiate(outer, Reverse, (Active, Const), (F64, I64))
    assert d.overflow_owners == ((6, "<facts callee module>", "inner"),)
    with pytest.raises(TapeOverflow) as info:
        autodiff(Reverse, outer, Active(0.5), 500)
    where = info.value.location
    assert (where.filename, where.line, where.function) == ("<facts callee module>", 6, "inner")


def test_overflow_in_a_callee_inside_a_kernel_names_the_callee():
    import pytest

    import gpuad
    from gpuad.errors import TapeOverflow

    outer = caller_of_a_looping_callee()

    def k(xs, out, n):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, _), = autodiff(Reverse, outer, Active(xs[i]), n)
            out[i] = dx

    with pytest.raises(TapeOverflow) as info:
        gpuad.kernel(k, target="cpu", tape_capacity=8).launch(2, np.ones(2), np.zeros(2), 50)
    where = info.value.location
    assert (where.filename, where.line, where.function) == ("<facts callee module>", 6, "inner")
